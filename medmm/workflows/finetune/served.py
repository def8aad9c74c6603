"""MLflow pyfunc flavour of a fine-tuned downstream model (``FinetunedModel``):
classification -> per-finding probabilities (``xray`` or ``report`` column); VQA -> answer
probabilities (``xray`` + ``question`` columns); retrieval -> the embedding of the one
column given. Loads back in a fresh process through ``mlflow.pyfunc.load_model``; weights
travel as safetensors (never pickle), configs as YAML."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from safetensors.torch import load_file

from medmm.config.core import build_config
from medmm.data.inputs import one_input_column, served_input_batch
from medmm.data.tokenizer import load_tokenizer
from medmm.tracking.pipeline_run import save_weights
from medmm.tracking.run_context import saved_config_yaml
from medmm.tracking.saved_model import log_saved_model
from medmm.workflows.finetune.config import FinetuneConfig
from medmm.workflows.finetune.module import FinetuneTask
from medmm.workflows.pretrained import (
    PIP_REQUIREMENTS,
    Backbone,
    build_model,
    read_pretrain_config,
)


class FinetunedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        a = context.artifacts
        meta = json.loads(Path(a["meta"]).read_text())
        self.cfg = build_config(FinetuneConfig, a["finetune_config"])
        family, self.pre = read_pretrain_config(Path(a["pretrain_config"]))
        backbone = Backbone(family, build_model(family, self.pre), meta["itc_temperature"])
        self.task = FinetuneTask(self.cfg, backbone, meta["n_outputs"], meta["prompts_trainable"])
        self.task.load_state_dict(load_file(a["weights"]))
        self.task.eval()
        self.outputs = meta["outputs"]
        self.tokenizer = load_tokenizer(self.pre.model.text.model_path)

    def predict(self, context, model_input, params=None):
        task = self.cfg.task
        with torch.no_grad():
            if task == "retrieval":
                column = one_input_column(model_input, ("xray", "report"))
                batch = served_input_batch(column, model_input[column].tolist(), self.pre, self.tokenizer)
                return self.task.backbone.embed(column, batch).numpy()
            column = "report" if task == "text_classification" else "xray"
            if column not in model_input.columns:
                raise ValueError(f"a {task} model needs a {column!r} column")
            batch = served_input_batch(column, model_input[column].tolist(), self.pre, self.tokenizer)
            if task == "vqa":
                if "question" not in model_input.columns:
                    raise ValueError("a vqa model needs a 'question' column beside 'xray'")
                enc = self.tokenizer(model_input["question"].tolist(), padding=True, truncation=True,
                                     max_length=self.cfg.data.question_max_tokens, return_tensors="pt")
                batch.update(question_ids=enc["input_ids"], question_mask=enc["attention_mask"])
            probs = torch.sigmoid(self.task(batch).float()).numpy()
        return pd.DataFrame(probs, columns=self.outputs, index=model_input.index)


def log_finetuned_model(run_id: str, task, cfg, pretrain_config, outputs: list[str], prompts_trainable: bool) -> str:
    """Log a fine-tuned ``FinetuneTask`` (backbone + head) as the pyfunc ``model`` of ``run_id``.
    The files are not named model.safetensors + config.yaml on purpose: the finetune
    pipeline must not take a fine-tuned model for a pretraining checkpoint."""
    meta = {"n_outputs": len(outputs) if task.head is not None else 0, "outputs": outputs,
            "prompts_trainable": prompts_trainable, "family": task.backbone.family,
            "itc_temperature": float(task.backbone.itc_temperature)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_weights(task, tmp / "finetuned.safetensors")
        (tmp / "finetune_config.yaml").write_text(saved_config_yaml(cfg))
        (tmp / "pretrain_config.yaml").write_text(saved_config_yaml(pretrain_config))
        (tmp / "finetune_meta.json").write_text(json.dumps(meta, indent=2))
        return log_saved_model(run_id, FinetunedModel, {
            "weights": str(tmp / "finetuned.safetensors"), "finetune_config": str(tmp / "finetune_config.yaml"),
            "pretrain_config": str(tmp / "pretrain_config.yaml"), "meta": str(tmp / "finetune_meta.json")},
            PIP_REQUIREMENTS)
