"""Cohort specs (``cohorts/*.yaml``): which modalities a cohort has and needs, and how it
is split. A spec describes data; it never holds data or identifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.config.core import StrictModel, build_config


class SplitSpec(StrictModel):
    level: Literal["patient"] = Field("patient", description="the unit that never crosses splits")
    fractions: dict[Literal["train", "val", "test"], float] = {"train": 0.7, "val": 0.1, "test": 0.2}
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitSpec":
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError(f"split fractions {self.fractions} do not sum to 1")
        return self

    def as_tuple(self) -> tuple[float, float, float]:
        return tuple(self.fractions.get(s, 0.0) for s in ("train", "val", "test"))


class CohortSpec(StrictModel):
    name: str
    root: Path
    source: dict[str, str] = {}
    modalities: list[str]
    required_modalities: list[str] = []
    split: SplitSpec = SplitSpec()
    missing: dict[str, float] = Field(
        {}, description="demo generator only: probability that a study lacks each modality, e.g. {ecg: 0.3}")


def load_cohort_spec(path: str | Path) -> CohortSpec:
    return build_config(CohortSpec, path)
