"""The MLflow pyfunc flavour of a medmm contrastive model: loads back in a fresh process
through ``mlflow.pyfunc.load_model`` and embeds studies.

Weights travel as safetensors (never pickle); the config as YAML. ``predict`` takes a
DataFrame with one column per input kind: ``report`` (text), ``xray`` (DICOM path) or
``ecg`` (WFDB / DICOM-waveform path), and returns the L2-normalised embeddings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np

PIP_REQUIREMENTS = ["medmm", "torch", "transformers", "peft", "pydicom", "wfdb", "safetensors"]


def input_batch(column: str, values: list, cfg, tokenizer) -> dict:
    """Files or texts of one input kind -> the model's batch (the served model and the
    retrieval index's queries both go through here)."""
    import torch

    from medmm.data.augment import normalise_xray
    from medmm.data.decoded_cohort import load_ecg_input, load_xray_input

    if column == "report":
        enc = tokenizer(list(values), padding=True, truncation=True, max_length=cfg.model.text.max_tokens,
                        return_tensors="pt")
        return {"report_ids": enc["input_ids"], "report_mask": enc["attention_mask"]}
    if column == "xray":
        # float32 explicitly: the percentile scaling can promote the pixels to float64
        images = np.stack([load_xray_input(p, cfg.data.image_size) for p in values]).astype(np.float32)
        return {"xray": normalise_xray(torch.from_numpy(images))}
    if column == "ecg":
        signals = np.stack([load_ecg_input(p, cfg.data.ecg_fs) for p in values]).astype(np.float32)
        return {"ecg": torch.from_numpy(signals)}
    raise ValueError(f"unknown input column {column!r}: use report, xray or ecg")


class ContrastiveEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pathlib import Path

        from medmm.workflows.pretrained import load_more_files

        loaded = load_more_files(Path(context.artifacts["weights"]), Path(context.artifacts["config"]))
        self.cfg, self.model, self.tokenizer = loaded.config, loaded.model, loaded.tokenizer

    def _batch(self, column: str, values: list) -> dict:
        return input_batch(column, values, self.cfg, self.tokenizer)

    def predict(self, context, model_input, params=None):
        import torch

        if model_input.shape[1] != 1:
            raise ValueError("give one column per call: report, xray or ecg")
        column = str(model_input.columns[0])
        with torch.no_grad():
            emb = self.model.encode(column, self._batch(column, model_input[column].tolist()))
        return emb.numpy()


def log_and_register(run_id: str, model, config, registered_name: str | None) -> str:
    """Log the model as a pyfunc artifact of ``run_id`` (and register it); returns its URI."""
    from safetensors.torch import save_file

    from medmm.config.core import to_yaml

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(to_yaml(config))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=ContrastiveEmbedder(),
                artifacts={"weights": str(weights), "config": str(cfg_path)},
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=registered_name,
            )
    return info.model_uri
