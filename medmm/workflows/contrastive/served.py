"""The MLflow pyfunc flavour of a medmm contrastive model: loads back in a fresh process
through ``mlflow.pyfunc.load_model`` and embeds studies.

Weights travel as safetensors (never pickle); the config as YAML. ``predict`` takes a
DataFrame with one column per input kind: ``report`` (text), ``xray`` (DICOM bytes or path) or
``ecg`` (DICOM-waveform bytes, or a WFDB / DICOM-waveform path), and returns the L2-normalised
embeddings. Paths are read only as :func:`medmm.data.inputs.served_file` allows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch

from medmm.data.inputs import INPUT_COLUMNS, one_input_column, served_input_batch
from medmm.tracking.saved_model import log_saved_model
from medmm.workflows.pretrained import (
    CONFIG,
    PIP_REQUIREMENTS,
    WEIGHTS,
    load_pretrained_files,
    save_pretrained_folder,
)


class ContrastiveEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        loaded = load_pretrained_files(Path(context.artifacts["weights"]), Path(context.artifacts["config"]), "more")
        self.cfg, self.model, self.tokenizer = loaded.config, loaded.model, loaded.tokenizer

    def predict(self, context, model_input, params=None):
        column = one_input_column(model_input, INPUT_COLUMNS)
        with torch.no_grad():
            emb = self.model.encode(column, served_input_batch(column, model_input[column].tolist(), self.cfg,
                                                               self.tokenizer))
        return emb.numpy()


def log_and_register(run_id: str, model, config, registered_name: str | None) -> str:
    """Log the model as a pyfunc artifact of ``run_id`` (and register it as ``registered_name``
    unless None); returns its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained_folder(model, config, Path(tmp))
        return log_saved_model(run_id, ContrastiveEmbedder, {"weights": str(folder / WEIGHTS),
                                                             "config": str(folder / CONFIG)},
                               PIP_REQUIREMENTS, registered_name)
