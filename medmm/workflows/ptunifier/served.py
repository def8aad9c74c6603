"""MLflow pyfunc flavour of a PTUnifier export (``PretrainedEmbedder``): a DataFrame with one
column, ``xray`` (DICOM paths) or ``report`` (text) -> L2-normalised ITC embeddings. Its
artifacts folder holds ``model.safetensors`` + ``config.yaml``, so
``checkpoint=models:/medmm-ptunifier@champion`` works as the finetune pipeline's input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from medmm.workflows.contrastive.served import PIP_REQUIREMENTS as EMBEDDER_REQUIREMENTS
from medmm.workflows.finetune.served import embedding_column


class PretrainedEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from medmm.models.encoders.text import load_tokenizer
        from medmm.workflows.finetune.module import Backbone, load_pretrained

        family, model, self.cfg = load_pretrained(Path(context.artifacts["weights"]).parent)
        self.backbone = Backbone(family, model).eval()
        self.tokenizer = load_tokenizer(self.cfg.model.text.model_path)

    def predict(self, context, model_input, params=None):
        import torch

        from medmm.workflows.contrastive.served import input_batch

        column = embedding_column(model_input, ("xray", "report"))
        with torch.no_grad():
            batch = input_batch(column, model_input[column].tolist(), self.cfg, self.tokenizer)
            return self.backbone.embed(column, batch).numpy()


def log_pretrained_embedder(run_id: str, model, config) -> str:
    """Log a pretraining model (PTUnifier) as the pyfunc ``model`` of ``run_id``."""
    from medmm.tracking.pipeline_run import log_pyfunc
    from medmm.workflows.pretrained import save_pretrained_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained_folder(model, config, Path(tmp))
        return log_pyfunc(run_id, PretrainedEmbedder(), {"weights": str(folder / "model.safetensors"),
                                                         "config": str(folder / "config.yaml")},
                          EMBEDDER_REQUIREMENTS)
