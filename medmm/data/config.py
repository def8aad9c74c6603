"""Config of a cohort's data as the training workflows read it (``data:`` of their schemas)."""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import Field, model_validator

from medmm.config.core import StrictModel

MODALITIES = ("xray", "ecg", "report", "labs")
LABS_FILE = "labs.csv"  # <root>/labs.csv: one row per study, keyed by STUDY_KEY, one column per lab value
STUDY_KEY = "study_id"


def labs_table_columns(root: str | Path) -> list[str]:
    """The lab columns of ``<root>/labs.csv`` in file order: every column but the study key
    (none without the file)."""
    path = Path(root) / LABS_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return [column for column in header if column != STUDY_KEY]


def decoded_cache_folder(root: str | Path, cache_dir: str | Path | None) -> Path:
    """Where a cohort's decoded studies are cached: ``cache_dir``, else ``<root>/.cache``."""
    return Path(cache_dir) if cache_dir else Path(root) / ".cache"


class DataConfig(StrictModel):
    root: Path = Field(Path("data/demo"), description="cohort folder holding manifest.parquet")
    image_size: int = Field(128, gt=0, description="X-ray side length fed to the model")
    ecg_fs: int = Field(100, gt=0, description="ECG rate fed to the model (Hz)")
    batch_size: int = Field(64, gt=0, description="studies per batch; a train split smaller than this trains in "
                                                  "batches of the whole split (a warning says so)")
    num_workers: int = Field(0, ge=0, description="DataLoader workers (the decoded cohort is cached in memory)")
    cache_dir: Path | None = Field(None, description="where to persist the decoded cache (default: <root>/.cache)")
    augment: bool = True
    strict: bool = Field(False, description="verify every file's sha256 against the manifest before training, "
                                            "and raise on the first bad file instead of skipping and counting it")
    limit_studies: int | None = Field(None, gt=0, description="use only the first N studies (smoke tests)")
    lab_columns: list[str] | None = Field(
        None, description=f"columns of <root>/{LABS_FILE} fed to the labs encoder (default: every column but "
                          f"{STUDY_KEY}, in file order)")

    @model_validator(mode="after")
    def _default_lab_columns(self) -> DataConfig:
        # resolved once, so that the run's recorded config names the columns its model was built for
        if self.lab_columns is None:
            self.__dict__["lab_columns"] = labs_table_columns(self.root)
        return self
