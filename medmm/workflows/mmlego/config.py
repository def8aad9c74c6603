"""Config of ``python -m medmm.pipelines.mmlego`` (see configs/mmlego/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.config.core import StrictModel
from medmm.models.encoders.ecg import ECGEncoderConfig
from medmm.models.encoders.xray import XrayEncoderConfig
from medmm.models.mmlego import LegoConfig
from medmm.tracking.config import RunTrackingConfig

TaskName = Literal["pathology_genomics", "xray_ecg"]
VARIANTS = ("unimodal", "merge", "fuse", "end_to_end")


class PathologyGenomicsConfig(StrictModel):
    root: Path = Field(Path("data/demo_pathology"), description="pathology cohort folder (manifest.parquet: slides "
                                                                "or feature bags, genomics, clinical)")
    magnification: float = Field(20, description="tile magnification for the slides")
    tile_size: int = Field(64, description="tile side in pixels")
    max_tiles: int | None = Field(None, description="tiles embedded per slide (None = all tissue tiles)")
    bag_size: int = Field(32, ge=1, description="tiles per bag fed to the pathology block (drawn afresh each epoch)")
    n_bins: int = Field(4, ge=1, description="discrete-time bins (quantiles of uncensored training times)")
    gene_groups: Path | None = Field(None, description="gene-group file for a cohort whose manifest lists none")
    snn_dim: int = Field(32, ge=1, description="width of the per-gene-group SNN tokens of the genomics encoder")


class XrayEcgConfig(StrictModel):
    root: Path = Field(Path("data/demo"), description="cohort folder holding manifest.parquet (X-ray, ECG, reports)")
    cache_dir: Path | None = Field(None, description="decoded-cohort cache (default: <root>/.cache)")
    image_size: int = Field(128, gt=0, description="X-ray side length fed to the model")
    ecg_fs: int = Field(100, gt=0, description="ECG rate fed to the model (Hz)")
    max_studies: dict[str, int] | None = Field(
        None, description="at most N studies per split (train / val / test), drawn with the seed (smoke tests, "
                          "CPU budgets); None: every study")
    xray: XrayEncoderConfig = XrayEncoderConfig(widths=[8, 16, 32, 32])
    ecg: ECGEncoderConfig = ECGEncoderConfig(dim=32, depth=1, heads=2)


class LegoTrainConfig(StrictModel):
    epochs: int = Field(30, ge=1, description="epochs of each unimodal block and of the end-to-end model")
    fuse_epochs: int = Field(3, ge=1, description="epochs of LegoFuse's fine-tuning on paired data")
    patience: int = Field(8, ge=1, description="early stopping on the validation loss")
    lr: float = 1e-3
    fuse_lr: float = Field(3e-4, description="learning rate of LegoFuse's fine-tuning")
    weight_decay: float = 1e-4
    batch_size: int = Field(32, ge=1)
    threads: int | None = Field(None, description="torch CPU threads")


class MMLegoTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-mmlego"


class MMLegoConfig(StrictModel):
    seed: int = Field(0, description="model initialisation, batch order, tile draws, the X-ray / ECG study subset")
    output_dir: Path = Field(Path("runs/mmlego"), description="local artifacts (feature-bag cache)")
    tasks: list[TaskName] = Field(["pathology_genomics", "xray_ecg"],
                                  description="tasks run, each with every variant on the same splits")
    pathology_genomics: PathologyGenomicsConfig = PathologyGenomicsConfig()
    xray_ecg: XrayEcgConfig = XrayEcgConfig()
    model: LegoConfig = Field(LegoConfig(), description="the LegoBlocks (n_outputs is set by each task)")
    train: LegoTrainConfig = LegoTrainConfig()
    tracking: MMLegoTrackingConfig = MMLegoTrackingConfig()

    @model_validator(mode="after")
    def _check(self) -> "MMLegoConfig":
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks must name each task once")
        if self.model.channels % self.model.heads:
            raise ValueError(f"model.heads ({self.model.heads}) must divide model.channels ({self.model.channels})")
        unknown = set(self.xray_ecg.max_studies or {}) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"xray_ecg.max_studies: unknown split(s) {sorted(unknown)} (train, val, test)")
        if self.model.merge_weights is not None and len(self.model.merge_weights) != 2:
            raise ValueError("model.merge_weights: one weight per modality (two)")
        return self
