"""MLflow pyfunc flavour of a segmenter (``SegmenterModel``): an ``image`` column (NIfTI file
or DICOM series folder) and an optional ``modality`` column (ct / mr, default ct) -> one
uint8 label mask per row, in the input's voxel grid (its affine is the input's)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from safetensors.torch import load_file

from medmm.config.core import build_config
from medmm.data.inputs import served_file
from medmm.data.segmentation import model_input as to_model_input
from medmm.data.segmentation import read_input_volume
from medmm.models.registry import create_model
from medmm.tracking.pipeline_run import save_weights
from medmm.tracking.run_context import saved_config_yaml
from medmm.tracking.saved_model import log_saved_model
from medmm.workflows.segment.config import SegmentConfig
from medmm.workflows.segment.training import predict_volume

SEGMENT_REQUIREMENTS = ["medmm", "torch", "monai", "nibabel", "pydicom", "safetensors"]


def segmenter_from_files(config_path: Path, labels_path: Path, weights_path: Path, variant: str):
    """-> (model in eval mode, its training config, class names) from a trained variant's files
    (safetensors weights; the frozen text embeddings travel inside them)."""
    cfg = build_config(SegmentConfig, config_path)
    classes = json.loads(Path(labels_path).read_text())["classes"]
    state = load_file(str(weights_path))
    model = create_model(cfg.model.name, cfg.model, class_names=classes, conditioning=variant,
                         text_embeddings=state.get("head.text_embeddings"))
    model.load_state_dict(state)
    return model.eval(), cfg, classes


class SegmenterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        a = context.artifacts
        self.variant = json.loads(Path(a["meta"]).read_text())["variant"]
        self.model, self.cfg, self.classes = segmenter_from_files(Path(a["config"]), Path(a["labels"]),
                                                                  Path(a["weights"]), self.variant)

    def predict(self, context, model_input, params=None):
        if "image" not in model_input.columns:
            raise ValueError("the input needs an 'image' column: NIfTI files or DICOM series folders")
        modalities = model_input["modality"] if "modality" in model_input.columns else ["ct"] * len(model_input)
        masks = []
        for path, modality in zip(model_input["image"], modalities):
            volume = read_input_volume(served_file(path))
            t = self.cfg.trainer
            masks.append(predict_volume(self.model, to_model_input(volume, modality, self.cfg.data), modality,
                                        self.cfg.data.roi, t.sw_batch_size, t.sw_overlap))
        return masks


def log_segmenter(run_id: str, model, cfg, labels: dict, variant: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_weights(model, tmp / f"{variant}.safetensors")
        (tmp / "segment_config.yaml").write_text(saved_config_yaml(cfg))
        (tmp / "labels.json").write_text(json.dumps(labels, indent=2))
        (tmp / "segment_meta.json").write_text(json.dumps({"variant": variant}))
        return log_saved_model(run_id, SegmenterModel, {
            "weights": str(tmp / f"{variant}.safetensors"), "config": str(tmp / "segment_config.yaml"),
            "labels": str(tmp / "labels.json"), "meta": str(tmp / "segment_meta.json")}, SEGMENT_REQUIREMENTS)
