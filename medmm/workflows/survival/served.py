"""MLflow pyfunc flavour of the survival models (``SurvivalModel``): the tabular heads (Cox,
DeepSurv, discrete-time) take a DataFrame with the cohort's feature columns and return
``risk`` (higher = earlier event), preprocessed with the training rows' statistics.
Pathology models (CMTA and its variants) are registered with their weights and statistics
but are not served from raw slides."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from medmm.config.core import build_config
from medmm.models.heads.survival import discrete_risk
from medmm.tracking.pipeline_run import save_weights
from medmm.tracking.run_context import saved_config_yaml
from medmm.tracking.saved_model import log_saved_model
from medmm.workflows.survival.config import SurvivalConfig
from medmm.workflows.survival.fit import build_torch_model

SURVIVAL_REQUIREMENTS = ["medmm", "torch", "scikit-survival", "safetensors", "pandas"]


class SurvivalModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        a = context.artifacts
        self.meta = json.loads(Path(a["meta"]).read_text())
        self.stats = {k: v.numpy() for k, v in load_file(a["preprocess"]).items()}
        cfg = build_config(SurvivalConfig, a["config"])
        self.model = build_torch_model(self.meta["name"], cfg, **self.meta["dims"])
        self.model.load_state_dict(load_file(a["weights"]))
        self.model.eval()

    def predict(self, context, model_input, params=None):
        if self.meta["dims"]["tile_dim"] is not None:
            raise ValueError(f"{self.meta['name']} is a pathology model: it is not served from raw slides "
                             "(its weights and preprocessing statistics are in the model's artifacts)")
        names = self.meta["feature_names"]
        missing = [n for n in names if n not in model_input.columns]
        if missing:
            raise ValueError(f"missing feature columns: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        x = model_input[names].to_numpy(dtype=float)
        s = self.stats
        x = ((np.where(np.isnan(x), s["x.median"], x) - s["x.mean"]) / s["x.std"]).astype(np.float32)
        with torch.no_grad():
            out = self.model(torch.from_numpy(x))
            risk = discrete_risk(out) if self.model.kind == "discrete" else out
        return pd.DataFrame({"risk": risk.numpy().reshape(-1)}, index=model_input.index)


def log_survival_model(run_id: str, name: str, model, cfg, preprocess: dict, meta: dict) -> str:
    """Log a fitted torch survival model with the training rows' preprocessing statistics
    (``preprocess``: name -> array) and ``meta`` (``feature_names``, ``dims``: the input sizes
    :func:`medmm.workflows.survival.fit.build_torch_model` takes)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_weights(model, tmp / f"{name}.safetensors")
        save_weights({k: torch.as_tensor(np.asarray(v)) for k, v in preprocess.items()},
                     tmp / "preprocess.safetensors")
        (tmp / "survival_config.yaml").write_text(saved_config_yaml(cfg))
        (tmp / "survival_meta.json").write_text(json.dumps({"name": name, **meta}, indent=2))
        return log_saved_model(run_id, SurvivalModel, {
            "weights": str(tmp / f"{name}.safetensors"), "preprocess": str(tmp / "preprocess.safetensors"),
            "config": str(tmp / "survival_config.yaml"), "meta": str(tmp / "survival_meta.json")},
            SURVIVAL_REQUIREMENTS)
