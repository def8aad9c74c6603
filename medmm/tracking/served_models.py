"""MLflow pyfunc flavours of the models the PTUnifier, finetune, segment and survival
pipelines register (the contrastive and report models have theirs in
:mod:`medmm.tracking.pyfunc_model` / :mod:`medmm.tracking.report_pyfunc`).

Each loads back in a fresh process through ``mlflow.pyfunc.load_model``. Weights travel
as safetensors (never pickle), configs as YAML, small metadata as JSON; the model is
rebuilt from the config and the weights are loaded into it.

* ``PretrainedEmbedder`` (PTUnifier export): a DataFrame with one column, ``xray`` (DICOM
  paths) or ``report`` (text) -> L2-normalised ITC embeddings. Its artifacts folder holds
  ``model.safetensors`` + ``config.yaml``, so ``checkpoint=models:/medmm-ptunifier@champion``
  works as the finetune pipeline's input.
* ``FinetunedModel``: classification -> per-finding probabilities (``xray`` or ``report``
  column); VQA -> answer probabilities (``xray`` + ``question`` columns); retrieval -> the
  embedding of the one column given.
* ``SegmenterModel``: an ``image`` column (NIfTI file or DICOM series folder) and an
  optional ``modality`` column (ct / mr, default ct) -> one uint8 label mask per row, in
  the input's voxel grid (its affine is the input's).
* ``SurvivalModel``: the tabular heads (Cox, DeepSurv, discrete-time): a DataFrame with
  the cohort's feature columns -> ``risk`` (higher = earlier event), preprocessed with
  the training rows' statistics. Pathology models (CMTA and its variants) are registered
  with their weights and statistics but are not served from raw slides.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from medmm.tracking.pyfunc_model import PIP_REQUIREMENTS as EMBEDDER_REQUIREMENTS

SEGMENT_REQUIREMENTS = ["medmm", "torch", "monai", "nibabel", "pydicom", "safetensors"]
SURVIVAL_REQUIREMENTS = ["medmm", "torch", "scikit-survival", "safetensors", "pandas"]


def save_weights(module_or_state, path: Path) -> Path:
    """A module's state dict (or a dict of tensors) as safetensors."""
    from safetensors.torch import save_file

    state = module_or_state if isinstance(module_or_state, dict) else module_or_state.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    return path


def _embedding_frame(model_input, columns: tuple[str, ...]) -> str:
    if model_input.shape[1] != 1 or str(model_input.columns[0]) not in columns:
        raise ValueError(f"give one column per call: {' or '.join(columns)}")
    return str(model_input.columns[0])


# -- PTUnifier export --------------------------------------------------------------------

class PretrainedEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from medmm.models.encoders.text import load_tokenizer
        from medmm.tasks.finetune import Backbone, load_pretrained

        family, model, self.cfg = load_pretrained(Path(context.artifacts["weights"]).parent)
        self.backbone = Backbone(family, model).eval()
        self.tokenizer = load_tokenizer(self.cfg.model.text.model_path)

    def predict(self, context, model_input, params=None):
        import torch

        from medmm.tracking.pyfunc_model import input_batch

        column = _embedding_frame(model_input, ("xray", "report"))
        with torch.no_grad():
            batch = input_batch(column, model_input[column].tolist(), self.cfg, self.tokenizer)
            return self.backbone.embed(column, batch).numpy()


def log_pretrained_embedder(run_id: str, model, config) -> str:
    """Log a pretraining model (PTUnifier) as the pyfunc ``model`` of ``run_id``."""
    from medmm.models.pretrained import save_pretrained_folder
    from medmm.tracking.pipeline_run import log_pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained_folder(model, config, Path(tmp))
        return log_pyfunc(run_id, PretrainedEmbedder(), {"weights": str(folder / "model.safetensors"),
                                                         "config": str(folder / "config.yaml")},
                          EMBEDDER_REQUIREMENTS)


# -- fine-tuned downstream models --------------------------------------------------------

class FinetunedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        from medmm.config.core import build_config
        from medmm.config.finetune import FinetuneConfig
        from medmm.models.encoders.text import load_tokenizer
        from medmm.models.registry import create_model
        from medmm.tasks.finetune import Backbone, FinetuneTask, read_pretrain_config

        a = context.artifacts
        meta = json.loads(Path(a["meta"]).read_text())
        self.cfg = build_config(FinetuneConfig, a["finetune_config"])
        family, self.pre = read_pretrain_config(Path(a["pretrain_config"]))
        backbone = Backbone(family, create_model(family, self.pre.model, image_size=self.pre.data.image_size),
                            meta["itc_temperature"])
        self.task = FinetuneTask(self.cfg, backbone, meta["n_outputs"], meta["prompts_trainable"])
        self.task.load_state_dict(load_file(a["weights"]))
        self.task.eval()
        self.outputs = meta["outputs"]
        self.tokenizer = load_tokenizer(self.pre.model.text.model_path)

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from medmm.tracking.pyfunc_model import input_batch

        task = self.cfg.task
        with torch.no_grad():
            if task == "retrieval":
                column = _embedding_frame(model_input, ("xray", "report"))
                batch = input_batch(column, model_input[column].tolist(), self.pre, self.tokenizer)
                return self.task.backbone.embed(column, batch).numpy()
            column = "report" if task == "text_classification" else "xray"
            if column not in model_input.columns:
                raise ValueError(f"a {task} model needs a {column!r} column")
            batch = input_batch(column, model_input[column].tolist(), self.pre, self.tokenizer)
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
    The files are not named config.yaml / model.safetensors + config.yaml on purpose: the
    finetune pipeline must not take a fine-tuned model for a pretraining checkpoint."""
    from medmm.config.core import to_yaml
    from medmm.tracking.pipeline_run import log_pyfunc

    meta = {"n_outputs": len(outputs) if task.head is not None else 0, "outputs": outputs,
            "prompts_trainable": prompts_trainable, "family": task.backbone.family,
            "itc_temperature": float(task.backbone.itc_temperature)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_weights(task, tmp / "finetuned.safetensors")
        (tmp / "finetune_config.yaml").write_text(to_yaml(cfg))
        (tmp / "pretrain_config.yaml").write_text(to_yaml(pretrain_config))
        (tmp / "finetune_meta.json").write_text(json.dumps(meta, indent=2))
        return log_pyfunc(run_id, FinetunedModel(), {
            "weights": str(tmp / "finetuned.safetensors"), "finetune_config": str(tmp / "finetune_config.yaml"),
            "pretrain_config": str(tmp / "pretrain_config.yaml"), "meta": str(tmp / "finetune_meta.json")},
            EMBEDDER_REQUIREMENTS)


# -- segmentation ------------------------------------------------------------------------

class SegmenterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from medmm.pipelines.segment import segmenter_from_files

        a = context.artifacts
        self.variant = json.loads(Path(a["meta"]).read_text())["variant"]
        self.model, self.cfg, self.classes = segmenter_from_files(Path(a["config"]), Path(a["labels"]),
                                                                  Path(a["weights"]), self.variant)

    def predict(self, context, model_input, params=None):
        from medmm.data.segmentation import model_input as to_model_input
        from medmm.data.segmentation import read_input_volume
        from medmm.tasks.segment import predict_volume

        if "image" not in model_input.columns:
            raise ValueError("the input needs an 'image' column: NIfTI files or DICOM series folders")
        modalities = model_input["modality"] if "modality" in model_input.columns else ["ct"] * len(model_input)
        masks = []
        for path, modality in zip(model_input["image"], modalities):
            volume = read_input_volume(Path(path))
            t = self.cfg.trainer
            masks.append(predict_volume(self.model, to_model_input(volume, modality, self.cfg.data), modality,
                                        self.cfg.data.roi, t.sw_batch_size, t.sw_overlap))
        return masks


def log_segmenter(run_id: str, model, cfg, labels: dict, variant: str) -> str:
    from medmm.config.core import to_yaml
    from medmm.tracking.pipeline_run import log_pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_weights(model, tmp / f"{variant}.safetensors")
        (tmp / "segment_config.yaml").write_text(to_yaml(cfg))
        (tmp / "labels.json").write_text(json.dumps(labels, indent=2))
        (tmp / "segment_meta.json").write_text(json.dumps({"variant": variant}))
        return log_pyfunc(run_id, SegmenterModel(), {
            "weights": str(tmp / f"{variant}.safetensors"), "config": str(tmp / "segment_config.yaml"),
            "labels": str(tmp / "labels.json"), "meta": str(tmp / "segment_meta.json")}, SEGMENT_REQUIREMENTS)


# -- survival ----------------------------------------------------------------------------

class SurvivalModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        from medmm.config.core import build_config
        from medmm.config.survival import SurvivalConfig
        from medmm.tasks.survival import build_torch_model

        a = context.artifacts
        self.meta = json.loads(Path(a["meta"]).read_text())
        self.stats = {k: v.numpy() for k, v in load_file(a["preprocess"]).items()}
        cfg = build_config(SurvivalConfig, a["config"])
        self.model = build_torch_model(self.meta["name"], cfg, **self.meta["dims"])
        self.model.load_state_dict(load_file(a["weights"]))
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from medmm.models.heads.survival import discrete_risk

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
    :func:`medmm.tasks.survival.build_torch_model` takes)."""
    import torch

    from medmm.config.core import to_yaml
    from medmm.tracking.pipeline_run import log_pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_weights(model, tmp / f"{name}.safetensors")
        save_weights({k: torch.as_tensor(np.asarray(v)) for k, v in preprocess.items()},
                     tmp / "preprocess.safetensors")
        (tmp / "survival_config.yaml").write_text(to_yaml(cfg))
        (tmp / "survival_meta.json").write_text(json.dumps({"name": name, **meta}, indent=2))
        return log_pyfunc(run_id, SurvivalModel(), {
            "weights": str(tmp / f"{name}.safetensors"), "preprocess": str(tmp / "preprocess.safetensors"),
            "config": str(tmp / "survival_config.yaml"), "meta": str(tmp / "survival_meta.json")},
            SURVIVAL_REQUIREMENTS)
