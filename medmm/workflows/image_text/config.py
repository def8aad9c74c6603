"""Config of ``python -m medmm.pipelines.image_text`` (see configs/image_text/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.cohort.captions import CAPTION_STYLES
from medmm.config.core import StrictModel
from medmm.models.encoders.text import TextEncoderConfig
from medmm.models.encoders.xray import XrayEncoderConfig
from medmm.tracking.config import RunTrackingConfig


class LabelledSetConfig(StrictModel):
    """One classification dataset: a CSV of image paths and class labels."""

    modality: str = Field(description="name of the imaging modality (xray, ct, mr, pathology, ...), used in "
                                      "metric names and the zero-shot table")
    labels: Path = Field(description="CSV (or TSV) with one row per image: its path, relative to the CSV's "
                                     "folder, and one column per class (1 present, 0 absent, -1 uncertain, blank "
                                     "unknown)")
    caption_style: Literal[tuple(CAPTION_STYLES)] = Field(
        description="sentence templates of the captions and zero-shot prompts (chest_xray, ct, mr, pathology)")
    path_column: str = "path"
    patient_column: str | None = Field(
        "patient", description="images of one patient stay in one split (None: each image its own patient)")
    class_columns: list[str] | None = Field(None, description="class columns (None: every other column)")
    max_images: int | None = Field(None, ge=1, description="at most N images, drawn with the split seed")


class ImageTextModelConfig(StrictModel):
    embed_dim: int = Field(128, description="shared embedding size")
    proj_hidden: int = Field(256, description="projection head hidden size")
    init_temperature: float = 0.07
    image: XrayEncoderConfig = Field(XrayEncoderConfig(widths=[16, 32, 64, 128]),
                                     description="the one image tower of every modality (grayscale input)")
    text: TextEncoderConfig = TextEncoderConfig()


class ImageTextTrainConfig(StrictModel):
    epochs: int = Field(20, ge=1, description="passes of the mixed model over every modality's training images")
    batch_size: int = Field(64, ge=2)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = Field(50, ge=0)
    patience: int = Field(6, ge=1, description="early stopping: validation checks (one per mixed-model epoch) "
                                               "without a better zero-shot macro AUROC")
    threads: int | None = Field(None, description="torch CPU threads")


class ImageTextTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-image-text"


class ImageTextConfig(StrictModel):
    seeds: list[int] = Field([0], description="each seed trains the mixed model and every per-modality model")
    output_dir: Path = Field(Path("runs/image_text"), description="local artifacts")
    sources: list[LabelledSetConfig] = Field(description="the labelled image sets, one per imaging modality")
    image_size: int = Field(64, gt=0, description="image side fed to the image tower")
    split_fractions: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="train / val / test, by patient")
    split_seed: int = 0
    per_modality_baselines: bool = Field(True, description="also train a model of the same size on each modality "
                                                           "alone, for the zero-shot comparison")
    baseline_budget: Literal["steps", "epochs"] = Field(
        "steps", description="the per-modality models' training: as many optimiser steps as the mixed model "
                             "(steps; the same compute) or as many passes over their own images (epochs)")
    model: ImageTextModelConfig = ImageTextModelConfig()
    train: ImageTextTrainConfig = ImageTextTrainConfig()
    tracking: ImageTextTrackingConfig = ImageTextTrackingConfig()

    @model_validator(mode="after")
    def _check(self) -> "ImageTextConfig":
        names = [s.modality for s in self.sources]
        if not names or len(set(names)) != len(names):
            raise ValueError("sources must name each modality once")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must list each seed once")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions {self.split_fractions} do not sum to 1")
        return self
