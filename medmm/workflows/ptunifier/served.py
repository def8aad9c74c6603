"""MLflow pyfunc flavour of a PTUnifier export (``PretrainedEmbedder``): a DataFrame with one
column, ``xray`` (DICOM bytes or paths) or ``report`` (text) -> L2-normalised ITC embeddings. Its
artifacts folder holds ``model.safetensors`` + ``config.yaml``, so
``checkpoint=models:/medmm-ptunifier@champion`` works as the finetune pipeline's input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch

from medmm.data.inputs import one_input_column, served_input_batch
from medmm.models.ptunifier import itc_image_embeddings, itc_text_embeddings
from medmm.tracking.saved_model import log_saved_model
from medmm.workflows.pretrained import (
    CONFIG,
    PIP_REQUIREMENTS,
    WEIGHTS,
    load_pretrained_files,
    save_pretrained_folder,
)


class PretrainedEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        a = context.artifacts
        loaded = load_pretrained_files(Path(a["weights"]), Path(a["config"]), "ptunifier")
        self.model, self.cfg, self.tokenizer = loaded.model, loaded.config, loaded.tokenizer

    def predict(self, context, model_input, params=None):
        column = one_input_column(model_input, ("xray", "report"))
        with torch.no_grad():
            batch = served_input_batch(column, model_input[column].tolist(), self.cfg, self.tokenizer)
            if column == "xray":
                return itc_image_embeddings(self.model, batch["xray"]).numpy()
            return itc_text_embeddings(self.model, batch["report_ids"], batch["report_mask"]).numpy()


def log_pretrained_embedder(run_id: str, model, config) -> str:
    """Log a PTUnifier pretraining model as the pyfunc ``model`` of ``run_id``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained_folder(model, config, Path(tmp))
        return log_saved_model(run_id, PretrainedEmbedder, {"weights": str(folder / WEIGHTS),
                                                            "config": str(folder / CONFIG)}, PIP_REQUIREMENTS)
