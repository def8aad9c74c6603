"""LightningModule for report generation, and the generation / baseline helpers its
evaluation uses (model vs nearest-neighbour retrieval vs the most frequent report)."""

from __future__ import annotations

from collections import Counter

import lightning as L
import numpy as np
import torch

from medmm.console import progress
from medmm.training.epoch_seeding import EpochSeededData
from medmm.training.schedule import cosine_with_warmup
from medmm.workflows.report.config import ReportConfig


class ReportGenerationTask(EpochSeededData, L.LightningModule):
    def __init__(self, cfg: ReportConfig, model: torch.nn.Module):
        super().__init__()
        self.cfg, self.model = cfg, model
        if cfg.pretrained.freeze:
            for module in (model.xray_encoder, model.ecg_encoder):
                if module is not None:
                    module.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.pretrained.freeze:  # frozen encoders keep their BatchNorm statistics
            for module in (self.model.xray_encoder, self.model.ecg_encoder):
                if module is not None:
                    module.eval()
        return self

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]), on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.model(batch), batch_size=len(batch["index"]), on_step=False, on_epoch=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        encoder, decay, no_decay = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(("xray_encoder.", "ecg_encoder.")):
                encoder.append(p)
            elif p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "lr": o.lr, "weight_decay": o.weight_decay},
                  {"params": no_decay, "lr": o.lr, "weight_decay": 0.0},
                  {"params": encoder, "lr": o.encoder_lr, "weight_decay": o.weight_decay}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_with_warmup(s, total, int(o.warmup_fraction * total), o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def generate_reports(model, loader, tokenizer, *, num_beams: int, max_new_tokens: int,
                     no_repeat_ngram_size: int) -> tuple[list[str], np.ndarray]:
    """Generated report text and cohort indices for every study of ``loader``."""
    model.eval()
    texts, index = [], []
    for batch in progress(loader, "generate reports"):
        ids = model.generate(batch, bos=tokenizer.cls_token_id, eos=tokenizer.sep_token_id,
                             pad=tokenizer.pad_token_id, num_beams=num_beams, max_new_tokens=max_new_tokens,
                             no_repeat_ngram_size=no_repeat_ngram_size)
        texts.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
        index.append(batch["index"].numpy())
    return [t.strip() for t in texts], np.concatenate(index)


def most_frequent_report(train_texts: list[str]) -> str:
    """The training report seen most often (ties: the first in cohort order)."""
    counts = Counter(train_texts)
    return max(train_texts, key=lambda t: (counts[t], -train_texts.index(t)))


@torch.no_grad()
def nearest_report(backbone, query_batches, train_text_emb: np.ndarray, train_texts: list[str]) -> list[str]:
    """For each query X-ray, the training report closest to it in the pretrained model's
    retrieval space (X-ray -> report, cosine): the contrastive model's shared embeddings, or
    PTUnifier's ITC embeddings (``backbone``: a :class:`medmm.workflows.pretrained.Backbone`)."""
    out = []
    for batch in query_batches:
        q = backbone.encode("xray", batch).numpy()
        out.extend(train_texts[j] for j in (q @ train_text_emb.T).argmax(1))
    return out
