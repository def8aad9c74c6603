"""LightningModule for contrastive pretraining: model + loss + optimiser schedule.

The model (``medmm.models``) only embeds; this module owns the loss, the logging and
the optimisation, as Lightning's module / model split and open_clip's ``task/`` do.
"""

from __future__ import annotations

import lightning as L
import torch

from medmm.config.pretrain import PretrainConfig
from medmm.losses.contrastive import label_aware_targets, multi_modal_clip_loss
from medmm.models.registry import create_model
from medmm.tasks.schedule import cosine_with_warmup


class ContrastivePretrainTask(L.LightningModule):
    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.model = create_model(cfg.model.name, cfg.model, image_size=cfg.data.image_size)
        self.modalities = tuple(sorted({m for pair in cfg.loss.pairs for m in pair}))

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        emb = self.model(batch, self.modalities)
        weight = self.cfg.loss.label_aware_weight
        targets = label_aware_targets(batch["labels"], weight) if weight > 0 else None
        loss, parts = multi_modal_clip_loss(emb, self.cfg.loss.pairs, self.model.logit_scale, batch["present"],
                                            targets=targets)
        n = len(batch["index"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, on_step=stage == "train", on_epoch=True)
        for name, value in parts.items():
            self.log(f"{stage}/loss_{name}", value, batch_size=n, on_step=False, on_epoch=True)
        if stage == "train":
            self.log("train/temperature", 1.0 / self.model.logit_scale().exp(), batch_size=n, on_step=True,
                     on_epoch=False)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def configure_optimizers(self):
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
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(opt_cfg.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, warmup, opt_cfg.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
