"""Config of ``python -m medmm.pipelines.segment`` (configs/segment/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.config.core import StrictModel
from medmm.models.segmentation import SegModelConfig
from medmm.tracking.config import RunTrackingConfig
from medmm.tracking.figures import EXAMPLES_FIGURE_HELP

Variant = Literal["text", "none", "none_matched"]


class SegDataConfig(StrictModel):
    root: Path = Field(Path("data/demo_volumes"), description="volume cohort folder (manifest.parquet; class names "
                                                              "in labels.json or a Decathlon-style dataset.json)")
    modalities: list[Literal["ct", "mr"]] | None = Field(
        None, description="modalities trained and evaluated (None = those of the cohort's manifest: ct and / or mr; "
                          "[ct] or [mr] = a model of one modality)")
    roi: list[int] = Field([32, 32, 32], description="training patch = sliding-window size (voxels)")
    samples_per_volume: int = Field(2, description="random patches drawn per volume per visit")
    pos_fraction: float = Field(0.67, description="share of patches centred on a foreground voxel")
    batch_size: int = Field(2, description="volumes per batch (x samples_per_volume patches)")
    ct_window: list[float] = Field([-175.0, 250.0], description="CT HU window mapped to [0, 1] (MulModSeg)")
    mr_percentiles: list[float] = Field([0.5, 99.5], description="MR intensity percentiles mapped to [0, 1]")
    augment: bool = Field(True, description="random intensity scale / shift")
    limit_cases: int | None = Field(None, description="use only the first N cases per modality and split")


class SegOptimConfig(StrictModel):
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_fraction: float = Field(0.05, description="linear warm-up, fraction of all steps; then cosine")


class SegTrainerConfig(StrictModel):
    max_steps: int = Field(400, description="training budget in batches of one modality: alternating takes one "
                                            "optimiser step per batch, mixed one per CT + MR pair of batches")
    batching: Literal["alternating", "mixed"] = Field(
        "alternating", description="alternating = MulModSeg: one CT batch, then one MR batch, each its own step; mixed "
                                   "= one batch of each modality joined into one step (the same patches, "
                                   "max_steps / n_modalities steps)")
    log_every_n_steps: int = 10
    val_every_n_steps: int = Field(0, description="log validation Dice every N steps (0 = never)")
    gradient_clip_val: float | None = 1.0
    threads: int | None = Field(None, description="torch CPU threads (None = all cores)")
    sw_batch_size: int = Field(4, description="sliding-window patches per forward pass")
    sw_overlap: float = Field(0.25, description="sliding-window overlap")


class SegTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-segment"
    register_model: bool = Field(True, description="register one trained variant in the model registry (alias "
                                                   "newest; no champion: a fixed step budget selects nothing on "
                                                   "validation data)")
    registered_variant: Variant | None = Field(
        None, description="the variant registered (default: the first of `variants`)")
    registered_name: str = "medmm-segment"


class InferConfig(StrictModel):
    run_id: str | None = Field(None, description="MLflow run whose model weights are used")
    variant: Variant = Field("text", description="which trained variant predicts")
    inputs: list[str] = Field([], description="NIfTI files or DICOM series folders")
    modality: Literal["ct", "mr"] = Field("ct", description="modality of the inputs")
    output_dir: Path = Field(Path("runs/segment/masks"), description="where the masks are written")


class SegmentConfig(StrictModel):
    seed: int = 0
    output_dir: Path = Field(Path("runs/segment"), description="local artifacts")
    variants: list[Variant] = Field(
        ["text", "none"], description="text = MulModSeg text-conditioned heads; none = the same backbone, plain head; "
                                      "none_matched = the plain head widened by a global image-feature branch and a "
                                      "hidden layer to the trainable parameter count of text (within 1%; each "
                                      "variant's count is logged as <variant>.n_trainable_params)")
    model: SegModelConfig = SegModelConfig()
    data: SegDataConfig = SegDataConfig()
    optim: SegOptimConfig = SegOptimConfig()
    trainer: SegTrainerConfig = SegTrainerConfig()
    tracking: SegTrackingConfig = SegTrackingConfig()
    infer: InferConfig = InferConfig()
    save_test_masks: bool = Field(True, description="log the test-case masks (NIfTI, source affine) to MLflow")
    examples_figure: bool | None = Field(None, description=EXAMPLES_FIGURE_HELP)

    @model_validator(mode="after")
    def _registered_variant_is_trained(self) -> "SegmentConfig":
        chosen = self.tracking.registered_variant
        if chosen is not None and chosen not in self.variants:
            raise ValueError(f"tracking.registered_variant={chosen!r} is not in variants {self.variants}")
        return self

    def variant_to_register(self) -> str | None:
        if not self.tracking.register_model or not self.variants:
            return None
        return self.tracking.registered_variant or self.variants[0]
