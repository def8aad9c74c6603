"""MLflow pyfunc flavour of a segmenter (``SegmenterModel``): an ``image`` column (NIfTI file
or DICOM series folder) and an optional ``modality`` column (ct / mr, default ct) -> one
uint8 label mask per row, in the input's voxel grid (its affine is the input's)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow

from medmm.tracking.pipeline_run import save_weights

SEGMENT_REQUIREMENTS = ["medmm", "torch", "monai", "nibabel", "pydicom", "safetensors"]


class SegmenterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from medmm.workflows.segment.run import segmenter_from_files

        a = context.artifacts
        self.variant = json.loads(Path(a["meta"]).read_text())["variant"]
        self.model, self.cfg, self.classes = segmenter_from_files(Path(a["config"]), Path(a["labels"]),
                                                                  Path(a["weights"]), self.variant)

    def predict(self, context, model_input, params=None):
        from medmm.data.segmentation import model_input as to_model_input
        from medmm.data.segmentation import read_input_volume
        from medmm.workflows.segment.training import predict_volume

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
