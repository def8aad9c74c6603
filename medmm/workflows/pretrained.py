"""Load a medmm pretraining model back from where the pretrain pipeline left it: an MLflow
model URI (``models:/medmm-more@champion``, ``runs:/<id>/model``) or a local folder holding
``model.safetensors`` + ``config.yaml`` (the pyfunc model's artifacts).

Downstream pipelines (report generation, the retrieval index) start from this. Each
pretraining model kind registers a loader by its registry name; ``more`` (the contrastive
X-ray / ECG / report model) is built in, PTUnifier adds its own under ``ptunifier``.
The weights' SHA-256 identifies the checkpoint (a retrieval index stores it).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from medmm.config.core import StrictModel
from medmm.io.errors import MedmmInputError


class PretrainedConfig(StrictModel):
    source: str | None = Field(
        None, description="pretraining model: MLflow URI (models:/medmm-more@champion, runs:/<id>/model) or a "
                          "folder with model.safetensors + config.yaml")
    kind: str = Field("more", description="registry name of the pretraining model (more; ptunifier when merged)")
    tracking_uri: str | None = Field(None, description="MLflow store of `source` (default: this run's store)")
    freeze: bool = Field(False, description="keep the pretrained encoders frozen (else fine-tuned at encoder_lr)")



WEIGHTS, CONFIG = "model.safetensors", "config.yaml"
_LOADERS: dict[str, Callable[[Path, Path], "PretrainedModel"]] = {}


@dataclass
class PretrainedModel:
    kind: str  # registry name of the pretraining model
    model: Any  # nn.Module with .encoders (modality -> encoder) and .encode(modality, batch)
    config: Any  # the pretraining run's validated config
    tokenizer: Any
    weights_sha256: str
    source: str


def register_pretrained_loader(kind: str):
    def decorator(fn: Callable[[Path, Path], PretrainedModel]):
        _LOADERS[kind] = fn
        return fn

    return decorator


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _artifact_folder(source: str, dst: Path, tracking_uri: str | None) -> Path:
    local = Path(source)
    if not local.exists():
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst)))
        except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a bad URI
            raise MedmmInputError(source, f"not a local folder and not a loadable MLflow model URI ({exc})") from None
    for folder in (local, local / "artifacts"):
        if (folder / WEIGHTS).exists() and (folder / CONFIG).exists():
            return folder
    raise MedmmInputError(source, f"holds no {WEIGHTS} + {CONFIG} (expected a medmm pretraining model)")


def load_pretrained(source: str, kind: str = "more", tracking_uri: str | None = None) -> PretrainedModel:
    """The pretraining model at ``source`` in eval mode, with its config and weights hash."""
    try:
        loader = _LOADERS[kind]
    except KeyError:
        raise MedmmInputError(source, f"unknown pretraining model kind {kind!r}; known: {', '.join(sorted(_LOADERS))}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _artifact_folder(str(source), Path(tmp), tracking_uri)
        loaded = loader(folder / WEIGHTS, folder / CONFIG)
    loaded.source = str(source)
    return loaded


@register_pretrained_loader("more")
def load_more_files(weights: Path, config: Path) -> PretrainedModel:
    from safetensors.torch import load_file

    from medmm.config.core import build_config
    from medmm.models.encoders.text import load_tokenizer
    from medmm.models.registry import create_model
    from medmm.workflows.contrastive.config import PretrainConfig

    cfg = build_config(PretrainConfig, config)
    model = create_model(cfg.model.name, cfg.model, image_size=cfg.data.image_size)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return PretrainedModel("more", model, cfg, load_tokenizer(cfg.model.text.model_path), file_sha256(weights), "")


def save_pretrained_folder(model, config, folder: Path) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` (what ``load_pretrained`` reads)."""
    from safetensors.torch import save_file

    from medmm.config.core import to_yaml

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(to_yaml(config))
    return folder
