"""Downstream tasks from one pretrained checkpoint, for either model family.

``Backbone`` gives the features each task needs: PTUnifier through its one fusion
encoder (image-only input with pseudo-text prompts, text-only with pseudo-image
prompts, image + question for VQA, ITC embeddings for retrieval); the contrastive
("more") model through its uni-modal encoders (image / report features, projected
embeddings for retrieval; no VQA: it has no fusion of image and question).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmm.config.core import ConfigError, load_yaml
from medmm.io.errors import MedmmInputError
from medmm.training.schedule import cosine_with_warmup
from medmm.workflows.finetune.config import FinetuneConfig


def resolve_checkpoint(checkpoint: str, tracking_uri: str | None = None) -> Path:
    """A local folder holding config.yaml + model.safetensors (an MLflow pyfunc model folder
    keeps them under artifacts/); runs:/ and models:/ URIs are downloaded first."""
    if checkpoint.startswith(("runs:/", "models:/")):
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        folder = Path(mlflow.artifacts.download_artifacts(checkpoint))
    else:
        folder = Path(checkpoint)
    for candidate in (folder, folder / "artifacts", folder / "model" / "artifacts"):
        if (candidate / "config.yaml").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise MedmmInputError(folder, "not a pretrained model folder: config.yaml and model.safetensors not found")


def read_pretrain_config(path: Path):
    """(family name, validated pretraining config) of a pretraining run's config.yaml."""
    from medmm.workflows.contrastive.config import PretrainConfig
    from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig

    data = load_yaml(path)
    name = (data.get("model") or {}).get("name", "more")
    cls = PTUnifierPretrainConfig if name == "ptunifier" else PretrainConfig
    try:
        return name, cls.model_validate(data)
    except Exception as exc:  # noqa: BLE001 - any validation problem names the file
        raise MedmmInputError(path, f"not a valid pretraining config: {exc}") from None


def load_pretrained(folder: Path):
    """(family name, model with its weights, the pretraining config) from an exported folder."""
    from safetensors.torch import load_file

    from medmm.models.registry import create_model

    name, pre = read_pretrain_config(folder / "config.yaml")
    model = create_model(name, pre.model, image_size=pre.data.image_size)
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except (RuntimeError, OSError) as exc:
        raise MedmmInputError(folder / "model.safetensors", f"weights do not fit the config: {exc}") from None
    return name, model, pre


def head(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    # PTUnifier's downstream head: 2h -> 2h -> LayerNorm -> GELU -> labels.
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.LayerNorm(in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))


class Backbone(nn.Module):
    def __init__(self, family: str, model: nn.Module, itc_temperature: float = 0.1):
        super().__init__()
        self.family, self.model, self.itc_temperature = family, model, itc_temperature

    @property
    def is_ptunifier(self) -> bool:
        return self.family == "ptunifier"

    def feature_dim(self, kind: str) -> int:
        if self.is_ptunifier:
            return self.model.out_dim
        return self.model.encoders["xray" if kind == "image" else "report"].out_dim

    def image_features(self, image):
        if self.is_ptunifier:
            return self.model(image=image).cls  # image-only: the text side is pseudo-text prompts
        return self.model.encoders["xray"](image)

    def text_features(self, ids, mask):
        if self.is_ptunifier:
            return self.model(ids=ids, mask=mask).cls  # text-only: pseudo-image prompts
        return self.model.encoders["report"](ids, mask)

    def pair_features(self, image, ids, mask):
        if not self.is_ptunifier:
            raise ConfigError("VQA needs a fusion model (ptunifier); the contrastive model has none")
        return self.model(image, ids, mask).cls

    def retrieval_embeddings(self, image, ids, mask):
        if self.is_ptunifier:
            from medmm.workflows.ptunifier.module import itc_embeddings

            return itc_embeddings(self.model, image, ids, mask)
        return (self.model.encode("xray", {"xray": image}),
                self.model.encode("report", {"report_ids": ids, "report_mask": mask}))

    def embed(self, column: str, batch: dict) -> torch.Tensor:
        """One side's retrieval embedding (``xray`` or ``report``), as :meth:`retrieval_embeddings`
        gives it for pairs: what a served model returns for one input column."""
        if not self.is_ptunifier:
            return self.model.encode(column, batch)
        from medmm.workflows.ptunifier.module import itc_image_embeddings, itc_text_embeddings

        if column == "xray":
            return itc_image_embeddings(self.model, batch["xray"])
        if column == "report":
            return itc_text_embeddings(self.model, batch["report_ids"], batch["report_mask"])
        raise ValueError(f"a PTUnifier model embeds xray or report, not {column!r}")

    def retrieval_temperature(self) -> torch.Tensor | float:
        if self.is_ptunifier:
            return self.itc_temperature  # fixed, as in pretraining
        return 1.0 / self.model.logit_scale().exp()


class FinetuneTask(L.LightningModule):
    """One downstream task: classification (BCE, multi-label), retrieval (InfoNCE on pairs)
    or VQA (BCE over the answer vocabulary)."""

    def __init__(self, cfg: FinetuneConfig, backbone: Backbone, n_outputs: int, prompts_trainable: bool):
        super().__init__()
        self.cfg, self.backbone = cfg, backbone
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
        return F.binary_cross_entropy_with_logits(self(batch), target)

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
    n = max(2, int(round(fraction * len(indices))))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=min(n, len(indices)), replace=False))
