"""Pretrained models of both pretraining families, as downstream workflows load and use them.

A source is an MLflow model URI (``models:/medmm-more@champion``, ``runs:/<id>/model``) or a
local folder holding ``model.safetensors`` + ``config.yaml`` (what :func:`save_pretrained_folder`
writes; a pretraining run's pyfunc model keeps them under ``artifacts/``). The stored config's
``model.name`` names the family, ``more`` (the contrastive X-ray / ECG / report model) or
``ptunifier``, and so its config schema and model builder. The weights' SHA-256 identifies
the checkpoint (a retrieval index stores it). :class:`Backbone` gives downstream tasks the
features they need from a model of either family.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from medmm.config.core import ConfigError, StrictModel, load_yaml
from medmm.console import progress
from medmm.data.tokenizer import load_tokenizer
from medmm.io.errors import MedmmInputError
from medmm.models.ptunifier import (
    itc_embeddings,
    itc_image_embeddings,
    itc_text_embeddings,
)
from medmm.models.registry import create_model
from medmm.tracking.run_context import saved_config_yaml
from medmm.tracking.saved_model import check_model_folder
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.ptunifier.config import MODALITIES as PTUNIFIER_MODALITIES
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig


@torch.no_grad()
def embed_loader(model, loader, modalities: tuple[str, ...], description: str = "embed studies"
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    model.eval()
    out: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    labels, indices = [], []
    device = next(model.parameters()).device
    for batch in progress(loader, description):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        for m, e in model(batch, modalities).items():
            out[m].append(e.float().cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
        indices.append(batch["index"].cpu().numpy())
    return {m: np.concatenate(v) for m, v in out.items()}, np.concatenate(labels), np.concatenate(indices)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], max_tokens: int) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    batch = {"report_ids": enc["input_ids"].to(device), "report_mask": enc["attention_mask"].to(device)}
    return model.encode("report", batch).float().cpu().numpy()


WEIGHTS, CONFIG = "model.safetensors", "config.yaml"
# family (the stored config's model.name) -> the pretraining run's config schema
FAMILIES: dict[str, type[StrictModel]] = {"more": PretrainConfig, "ptunifier": PTUnifierPretrainConfig}
# what a served model built on a pretrained model needs installed
PIP_REQUIREMENTS = ["medmm", "torch", "transformers", "peft", "pydicom", "wfdb", "safetensors"]
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


class PretrainedConfig(StrictModel):
    source: str | None = Field(
        None, description="pretraining model: MLflow URI (models:/medmm-more@champion, runs:/<id>/model) or a "
                          "folder with model.safetensors + config.yaml")
    kind: str | None = Field(
        "more", description="pretraining family this workflow needs (more | ptunifier), checked against the "
                            "stored config's model.name; null accepts either")
    tracking_uri: str | None = Field(None, description="MLflow store of `source` (default: this run's store)")
    freeze: bool = Field(False, description="keep the pretrained encoders frozen (else fine-tuned at encoder_lr)")


@dataclass
class PretrainedModel:
    kind: str  # family: the stored config's model.name
    model: Any  # nn.Module; the contrastive family has .encoders (modality -> encoder) and .encode(modality, batch)
    config: Any  # the pretraining run's validated config
    tokenizer: Any
    weights_sha256: str
    source: str

    def backbone(self) -> "Backbone":
        """The model as downstream tasks read it (:class:`Backbone`), with PTUnifier's ITC
        temperature of pretraining."""
        return Backbone(self.kind, self.model, getattr(getattr(self.config, "loss", None), "itc_temperature", 0.1))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_source(source: str | Path, dst: Path, tracking_uri: str | None = None) -> Path:
    """The folder holding ``model.safetensors`` + ``config.yaml`` of a local folder or an MLflow
    model / run URI (downloaded under ``dst``); a folder holding a pickle or other code is refused."""
    local = Path(source)
    if not local.exists():
        if not _URI.match(str(source)):
            raise MedmmInputError(source, "no such folder, and not an MLflow URI (models:/..., runs:/...)")
        # mlflow costs about a second to import; configs import this module and do not need it
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(source), dst_path=str(dst)))
        except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a bad URI
            raise MedmmInputError(source, f"not a loadable MLflow model URI ({exc})") from None
    check_model_folder(local)
    for folder in (local, local / "artifacts", local / "model" / "artifacts"):
        if (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file():
            return folder
    raise MedmmInputError(source, f"holds no {WEIGHTS} + {CONFIG} (expected a medmm pretraining model)")


def _check_kind(kind: str | None, where) -> None:
    if kind is not None and kind not in FAMILIES:
        raise ConfigError(f"unknown pretraining family {kind!r} for {where}; known: {', '.join(FAMILIES)}")


def read_pretrain_config(path: Path, kind: str | None = None):
    """(family, validated pretraining config) of a pretraining run's ``config.yaml``; the family
    is the config's ``model.name``. ``kind``, when given, must be that family."""
    _check_kind(kind, path)
    data = load_yaml(path)
    family = (data.get("model") or {}).get("name", "more")
    if family not in FAMILIES:
        raise MedmmInputError(path, f"model.name {family!r} is not a pretraining family ({', '.join(FAMILIES)})")
    if kind is not None and kind != family:
        raise MedmmInputError(path, f"holds a {family!r} pretraining model, but a {kind!r} model was asked for")
    try:
        return family, FAMILIES[family].model_validate(data)
    except Exception as exc:  # noqa: BLE001 - any validation problem names the file
        raise MedmmInputError(path, f"not a valid pretraining config: {exc}") from None


def build_model(family: str, config) -> nn.Module:
    """A model of ``family`` shaped by its pretraining ``config`` (random weights)."""
    if family == "more":  # the labs encoder's input width is the cohort's lab columns
        return create_model(family, config.model, image_size=config.data.image_size,
                            n_labs=len(config.data.lab_columns or []))
    return create_model(family, config.model, image_size=config.data.image_size)


def load_pretrained_files(weights: Path, config: Path, kind: str | None = None, source: str = "") -> PretrainedModel:
    """The pretraining model of ``config`` with the safetensors ``weights``, in eval mode."""
    family, cfg = read_pretrain_config(Path(config), kind)
    model = build_model(family, cfg)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as exc:
        raise MedmmInputError(weights, f"weights do not fit the config: {exc}") from None
    model.eval()
    return PretrainedModel(family, model, cfg, load_tokenizer(cfg.model.text.model_path), file_sha256(Path(weights)),
                           source or str(Path(weights).parent))


def load_pretrained(source: str | Path, kind: str | None = None, tracking_uri: str | None = None) -> PretrainedModel:
    """The pretraining model at ``source`` (folder or MLflow URI) in eval mode, with its config,
    tokenizer and weights hash. ``kind``, when given, must be the stored model's family."""
    _check_kind(kind, source)
    with tempfile.TemporaryDirectory() as tmp:
        folder = resolve_source(source, Path(tmp), tracking_uri)
        return load_pretrained_files(folder / WEIGHTS, folder / CONFIG, kind, str(source))


def save_pretrained_folder(model, config, folder: Path) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` (what :func:`load_pretrained` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(saved_config_yaml(config))
    return folder


class Backbone(nn.Module):
    """The features downstream tasks take from a pretrained model. PTUnifier gives them
    through its one fusion encoder (image-only input with pseudo-text prompts, text-only with
    pseudo-image prompts, image + question for VQA, ITC embeddings for retrieval); the
    contrastive ("more") model through its uni-modal encoders (image / report features,
    projected embeddings for retrieval; no VQA: it has no fusion of image and question)."""

    def __init__(self, family: str, model: nn.Module, itc_temperature: float = 0.1):
        super().__init__()
        self.family, self.model, self.itc_temperature = family, model, itc_temperature

    @property
    def is_ptunifier(self) -> bool:
        return self.family == "ptunifier"

    @property
    def modalities(self) -> tuple[str, ...]:
        """The inputs the model encodes (PTUnifier: X-rays and reports)."""
        return PTUNIFIER_MODALITIES if self.is_ptunifier else self.model.modalities

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
            return itc_embeddings(self.model, image, ids, mask)
        return (self.model.encode("xray", {"xray": image}),
                self.model.encode("report", {"report_ids": ids, "report_mask": mask}))

    def forward(self, batch: dict, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Each modality's retrieval embedding of a batch, as the contrastive model's forward
        gives them: what :func:`embed_loader` reads, for either family."""
        if not self.is_ptunifier:
            return self.model(batch, modalities)
        return {m: self.embed(m, batch) for m in modalities}

    def embed(self, column: str, batch: dict) -> torch.Tensor:
        """One side's retrieval embedding (``xray`` or ``report``), as :meth:`retrieval_embeddings`
        gives it for pairs: what a served model returns for one input column."""
        if not self.is_ptunifier:
            return self.model.encode(column, batch)
        if column == "xray":
            return itc_image_embeddings(self.model, batch["xray"])
        if column == "report":
            return itc_text_embeddings(self.model, batch["report_ids"], batch["report_mask"])
        raise ValueError(f"a PTUnifier model embeds xray or report, not {column!r}")

    def encode(self, column: str, batch: dict) -> torch.Tensor:
        """:meth:`embed` under the contrastive model's name, so that a Backbone of either family
        goes where that model's embeddings are read (:func:`embed_texts`)."""
        return self.embed(column, batch)

    def retrieval_temperature(self) -> torch.Tensor | float:
        if self.is_ptunifier:
            return self.itc_temperature  # fixed, as in pretraining
        return 1.0 / self.model.logit_scale().exp()
