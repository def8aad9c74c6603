"""TODO docstring."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from medmm.config.core import StrictModel

MODALITIES = ("xray", "ecg", "report", "labs")


DEMO_LAB_COLUMNS = ["bnp", "wbc", "crp", "hemoglobin", "creatinine", "sodium"]


class DataConfig(StrictModel):
    root: Path = Field(Path("data/demo"), description="cohort folder holding manifest.parquet")
    image_size: int = Field(128, description="X-ray side length fed to the model")
    ecg_fs: int = Field(100, description="ECG rate fed to the model (Hz)")
    batch_size: int = 64
    num_workers: int = Field(0, description="DataLoader workers (the decoded cohort is cached in memory)")
    cache_dir: Path | None = Field(None, description="where to persist the decoded cache (default: <root>/.cache)")
    augment: bool = True
    strict: bool = Field(False, description="raise on the first bad file instead of skipping and counting it")
    limit_studies: int | None = Field(None, description="use only the first N studies (smoke tests)")
    lab_columns: list[str] = Field(DEMO_LAB_COLUMNS, description="columns of <root>/labs.csv fed to the labs encoder")


