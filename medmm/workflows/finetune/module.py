"""Downstream tasks from one pretrained checkpoint, for either model family: a head on
the features :class:`medmm.workflows.pretrained.Backbone` gives (classification, VQA) or
its embeddings alone (retrieval)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmm.training.schedule import cosine_with_warmup
from medmm.workflows.finetune.config import FinetuneConfig
from medmm.workflows.pretrained import Backbone


def head(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    # PTUnifier's downstream head: 2h -> 2h -> LayerNorm -> GELU -> labels.
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.LayerNorm(in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))


def balanced_pos_weight(targets: np.ndarray) -> torch.Tensor:
    """Per output, negatives / positives among the training targets ([n, outputs], 0 / 1): with
    it as BCE's ``pos_weight`` each output's positives weigh as much as its negatives. An
    output never positive gets 1."""
    positives = targets.sum(0)
    weight = np.where(positives > 0, (len(targets) - positives) / np.maximum(positives, 1), 1.0)
    return torch.as_tensor(weight, dtype=torch.float32)


class FinetuneTask(L.LightningModule):
    """One downstream task: classification (BCE, multi-label), retrieval (InfoNCE on pairs)
    or VQA (BCE over the answer vocabulary)."""

    def __init__(self, cfg: FinetuneConfig, backbone: Backbone, n_outputs: int, prompts_trainable: bool,
                 pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.cfg, self.backbone = cfg, backbone
        self.register_buffer("pos_weight", pos_weight, persistent=False)  # BCE's weight of each output's positives
        kind = "text" if cfg.task == "text_classification" else "image"
        self.head = head(backbone.feature_dim(kind), n_outputs, cfg.head) if cfg.task != "retrieval" else None
        if cfg.backbone == "frozen":
            backbone.requires_grad_(False)
        if backbone.is_ptunifier:
            if cfg.backbone == "finetune":
                backbone.model.set_prompts_trainable(prompts_trainable)
            # Pretraining-only heads get no gradient here; keep them out of the optimiser.
            for name in ("mlm_transform", "itm_head"):
                getattr(backbone.model, name).requires_grad_(False)
            backbone.model.mlm_bias.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.backbone == "frozen":
            self.backbone.eval()  # frozen features: no dropout, fixed statistics
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        b = self.backbone
        if self.cfg.task == "image_classification":
            return self.head(b.image_features(batch["xray"]))
        if self.cfg.task == "text_classification":
            return self.head(b.text_features(batch["report_ids"], batch["report_mask"]))
        if self.cfg.task == "vqa":
            return self.head(b.pair_features(batch["xray"], batch["question_ids"], batch["question_mask"]))
        raise ValueError(f"forward is not defined for {self.cfg.task}")

    def loss(self, batch: dict) -> torch.Tensor:
        if self.cfg.task == "retrieval":
            img, txt = self.backbone.retrieval_embeddings(batch["xray"], batch["report_ids"], batch["report_mask"])
            logits = img @ txt.T / self.backbone.retrieval_temperature()
            target = torch.arange(len(img), device=img.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        target = batch["labels"].float() if "targets" not in batch else batch["targets"]
        return F.binary_cross_entropy_with_logits(self(batch), target, pos_weight=self.pos_weight)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["xray"]), on_step=True, on_epoch=True)
        return loss

    def on_train_epoch_start(self) -> None:
        collate = getattr(self.trainer.train_dataloader, "collate_fn", None)
        if collate is not None and hasattr(collate, "epoch"):
            collate.epoch = self.current_epoch

    def configure_optimizers(self):
        head_params = list(self.head.parameters()) if self.head is not None else []
        head_ids = {id(p) for p in head_params}
        body = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [g for g in ({"params": body, "lr": self.cfg.lr}, {"params": head_params, "lr": self.cfg.head_lr})
                  if g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, int(0.1 * total), 0.0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def label_subset(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` of the training studies (at least 2), in cohort order."""
    if fraction >= 1.0:
        return indices
    n = max(2, round(fraction * len(indices)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=min(n, len(indices)), replace=False))
