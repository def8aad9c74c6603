"""LightningModule for contrastive pretraining: model + loss + optimiser schedule.

The model (``medmm.models``) only embeds; this module owns the loss, the logging and
the optimisation, as Lightning's module / model split and open_clip's ``task/`` do.
"""

from __future__ import annotations

import lightning as L
import torch

from medmm.losses.contrastive import (
    known_label_targets,
    multi_modal_clip_loss,
    same_label_contrastive,
)
from medmm.losses.distributed import gathered_clip_loss, gathered_symile_loss, world
from medmm.losses.symile import symile_loss
from medmm.models.registry import create_model
from medmm.training.epoch_seeding import EpochSeededData
from medmm.training.grad_cache import grad_cache_backward, split_batch
from medmm.training.schedule import cosine_with_warmup
from medmm.workflows.contrastive.config import PretrainConfig


class ContrastivePretrainTask(EpochSeededData, L.LightningModule):
    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.model = create_model(cfg.model.name, cfg.model, image_size=cfg.data.image_size,
                                  n_labs=len(cfg.data.lab_columns))
        self.modalities = cfg.loss.used_modalities()
        # GradCache drives its own two-pass backward, so Lightning hands over the optimiser.
        self.automatic_optimization = cfg.trainer.grad_cache_chunk is None

    def _loss(self, emb: dict, batch: dict, stage: str) -> tuple[torch.Tensor, dict]:
        """The configured loss (plus the within-modality same-label term, if any); under DDP
        with ``loss.gather`` the cross-modal part runs over the gathered global batch, in
        validation too, so that ``val/loss`` (which selects checkpoints and the registered
        champion) scores the batches a single process would."""
        # The loss runs in float32 outside any autocast: a softmax over the batch in bf16
        # blurs the small logit differences it learns from, and the encoders' outputs
        # arrive in mixed dtypes (bf16 from autocast, float32 from GradCache's cache).
        emb = {m: e.float() for m, e in emb.items()}
        with torch.autocast(self.device.type, enabled=False):
            return self._loss_float32(emb, batch, stage)

    def _loss_float32(self, emb: dict, batch: dict, stage: str) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg.loss
        loss, parts = self._cross_modal_loss(emb, batch, stage)
        if cfg.same_label_weight > 0:
            for m in cfg.same_label_modalities:  # local batch: SupCon needs no negatives from other ranks
                term = same_label_contrastive(emb[m], batch["labels"], self.model.logit_scale, batch["present"].get(m))
                parts[f"same_label_{m}"] = term
                loss = loss + cfg.same_label_weight * term
        return loss, parts

    def _cross_modal_loss(self, emb: dict, batch: dict, stage: str) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg.loss
        gather = cfg.gather and world()[1] > 1
        if cfg.name == "symile":
            # The same O(N) shuffles on every process: seeded by the step, not the rank.
            generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + int(self.global_step))
            reps = [emb[m] for m in self.modalities]
            fn = gathered_symile_loss if gather else symile_loss
            return fn(reps, self.model.logit_scale, cfg.negatives, generator), {}
        if gather:
            return gathered_clip_loss(emb, cfg.pairs, self.model.logit_scale, batch["present"], batch["labels"],
                                      cfg.label_aware_weight)
        weight = cfg.label_aware_weight
        targets = known_label_targets(batch["labels"], weight) if weight > 0 else None
        return multi_modal_clip_loss(emb, cfg.pairs, self.model.logit_scale, batch["present"], targets=targets)

    def _grad_cache_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        opt, schedule = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        parts: dict = {}

        def loss_fn(emb: dict) -> torch.Tensor:
            loss, p = self._loss(emb, batch, "train")
            parts.update(p)
            return loss

        chunks = split_batch(batch, self.cfg.trainer.grad_cache_chunk)
        loss = grad_cache_backward(lambda c: self.model(c, self.modalities), chunks, loss_fn,
                                   backward=self.manual_backward)
        if self.cfg.trainer.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.trainer.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        opt.step()
        schedule.step()
        return loss, {k: v.detach() for k, v in parts.items()}

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        if stage == "train" and not self.automatic_optimization:
            loss, parts = self._grad_cache_step(batch)
        else:
            loss, parts = self._loss(self.model(batch, self.modalities), batch, stage)
        n = len(batch["index"])
        # Under DDP each process holds its share of the global batch's loss (medmm.losses.distributed):
        # their mean (sync_dist) is the loss of the global batch.
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, on_step=stage == "train", on_epoch=True,
                 sync_dist=True)
        for name, value in parts.items():
            self.log(f"{stage}/loss_{name}", value, batch_size=n, on_step=False, on_epoch=True, sync_dist=True)
        if stage == "train":
            self.log("train/temperature", 1.0 / self.model.logit_scale().exp(), batch_size=n, on_step=True,
                     on_epoch=False)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def optimizer(self) -> torch.optim.AdamW:
        """AdamW over the trainable parameters: the X-ray / ECG / projection weights at ``lr``
        with weight decay (none on norms, biases and the temperature), the text adapters at
        ``text_lr``."""
        opt_cfg = self.cfg.optim
        text, decay, no_decay = [], [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("encoders.report."):
                text.append(param)
            elif param.ndim <= 1:  # norms, biases and the temperature: no weight decay
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [
            {"params": decay, "lr": opt_cfg.lr, "weight_decay": opt_cfg.weight_decay},
            {"params": no_decay, "lr": opt_cfg.lr, "weight_decay": 0.0},
            {"params": text, "lr": opt_cfg.text_lr, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]])

    def configure_optimizers(self):
        opt_cfg = self.cfg.optim
        optimizer = self.optimizer()
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(opt_cfg.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, warmup, opt_cfg.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
