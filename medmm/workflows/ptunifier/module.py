"""LightningModule for PTUnifier pretraining: ITC + ITM + MLM on X-ray / report pairs.

Per batch the uni-modal encoders run once each (image, report, masked report); the fusion
runs on ITM's 3B rows (positives, a hard-negative text per image, a hard-negative image per
text) and MLM's B, and with ``model.itc_input: fused`` on ITC's 2B prompt-filled rows as well
(image + pseudo-text, pseudo-image + text).
"""

from __future__ import annotations

import lightning as L
import torch

from medmm.data.tokenizer import load_tokenizer
from medmm.losses.ptunifier import (
    itc_loss,
    itm_loss,
    mlm_loss,
    sample_hard_negatives,
    whole_word_mask,
    word_starts,
)
from medmm.models.ptunifier import itc_embeddings, no_padding_mask
from medmm.models.registry import create_model
from medmm.training.epoch_seeding import EpochSeededData
from medmm.training.schedule import cosine_with_warmup
from medmm.workflows.ptunifier.config import (
    PTUnifierLossConfig,
    PTUnifierPretrainConfig,
)


class MLMMasker:
    """Whole-word masking with the tokenizer's word boundaries and special tokens."""

    def __init__(self, tokenizer, probability: float):
        self.starts = word_starts(tokenizer)
        self.special = list(tokenizer.all_special_ids)
        self.mask_id, self.vocab = tokenizer.mask_token_id, len(tokenizer)
        self.probability = probability

    def __call__(self, ids, mask, generator=None):
        return whole_word_mask(ids, mask, self.starts, self.special, self.mask_id, self.vocab, self.probability,
                               generator)


def pretrain_losses(model, batch: dict, loss_cfg: PTUnifierLossConfig, masker: MLMMasker,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    image, ids, mask = batch["xray"], batch["report_ids"], batch["report_mask"]
    n = len(image)
    out: dict[str, torch.Tensor] = {}
    img = model.encode_image(image)
    txt = model.encode_text(ids, mask)
    img_pad, txt_pad = no_padding_mask(img), mask == 0
    img_emb, txt_emb = itc_embeddings(model, image, ids, mask, img, txt)
    sim = img_emb @ txt_emb.T
    out["itc"] = itc_loss(img_emb, txt_emb, loss_cfg.itc_temperature)
    total = loss_cfg.itc_weight * out["itc"]
    if loss_cfg.itm_weight > 0 and n > 1:
        same = (ids[:, None, :] == ids[None, :, :]).all(-1)  # identical reports are no negatives
        neg_txt, neg_img = sample_hard_negatives(sim.detach() / loss_cfg.itc_temperature, same, generator)
        fused = model.fuse(torch.cat([img, img, img[neg_img]]), torch.cat([img_pad, img_pad, img_pad[neg_img]]),
                           torch.cat([txt, txt[neg_txt], txt]), torch.cat([txt_pad, txt_pad[neg_txt], txt_pad]))
        logits = model.itm_head(fused.cls)
        target = torch.cat([torch.ones(n), torch.zeros(2 * n)]).to(image.device)
        out["itm"] = itm_loss(logits, target)
        out["itm_acc"] = (logits.argmax(1) == target).float().mean()
        total = total + loss_cfg.itm_weight * out["itm"]
    if loss_cfg.mlm_weight > 0:
        masked, labels = masker(ids, mask, generator)
        fused = model.fuse(img, img_pad, model.encode_text(masked, mask), txt_pad)
        logits = model.mlm_logits(fused.text[labels != -100])
        out["mlm"] = mlm_loss(logits, labels)
        out["mlm_acc"] = (logits.argmax(1) == labels[labels != -100]).float().mean()
        total = total + loss_cfg.mlm_weight * out["mlm"]
    out["loss"] = total
    return out


def param_groups(model, optim) -> list[dict]:
    """Uni-modal encoders at ``optim.lr`` (the image encoder's at ``lr x image_lr_mult``: it
    starts from random weights, the text encoder from MiniLM's); fusion, heads and prompts at
    ``lr x head_lr_mult`` (paper x5); no weight decay on norms, biases and prompts."""
    image_prefixes = ("patch_embed", "image_cls", "image_pos", "image_blocks", "image_norm")
    text_prefixes = ("text_embeddings", "text_layers")
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = optim.image_lr_mult if name.startswith(image_prefixes) else 1.0 if name.startswith(text_prefixes) \
            else optim.head_lr_mult
        decay = p.ndim > 1 and "prompts" not in name and "image_pos" not in name and "image_cls" not in name
        groups.setdefault((mult, decay), []).append(p)
    return [{"params": ps, "lr": optim.lr * mult, "weight_decay": optim.weight_decay if d else 0.0}
            for (mult, d), ps in groups.items()]


class PTUnifierPretrainTask(EpochSeededData, L.LightningModule):
    def __init__(self, cfg: PTUnifierPretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.model = create_model(cfg.model.name, cfg.model, image_size=cfg.data.image_size)
        if cfg.model.itc_input == "unimodal":
            # every pretraining row is a pair and only the fused ITC fills a side with prompts:
            # without it no loss reaches the pools, which stay as initialised (and unused
            # parameters would stop a multi-process run)
            self.model.set_prompts_trainable(False)
        self.masker = MLMMasker(load_tokenizer(cfg.model.text.model_path), cfg.loss.mlm_probability)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        gen = None
        if stage != "train":  # the same masks and negatives at every validation
            gen = torch.Generator().manual_seed(int(batch["index"][0]))
        parts = pretrain_losses(self.model, batch, self.cfg.loss, self.masker, gen)
        n = len(batch["index"])
        self.log(f"{stage}/loss", parts["loss"], prog_bar=True, batch_size=n, on_step=stage == "train",
                 on_epoch=True)
        for name, value in parts.items():
            if name != "loss":
                self.log(f"{stage}/{name}", value, batch_size=n, on_step=False, on_epoch=True)
        return parts["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        o = self.cfg.optim
        optimizer = torch.optim.AdamW(param_groups(self.model, o))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(o.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, warmup, o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
