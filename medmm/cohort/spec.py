"""Cohort specs (``cohorts/*.yaml``): which modalities a cohort has and needs, and how it
is split. A spec describes data; it never holds data or identifiers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

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


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression {value!r}: {exc}") from None
    return value


class FileRule(StrictModel):
    """Which files under the root are one modality, and where their identifiers come from.

    The first rule whose ``pattern`` matches a file (and, for ``format: dicom``, whose
    content is DICOM) claims it."""

    modality: str | dict[str, str] = Field(
        description="modality name, or {path regex: modality} tried in order (e.g. AMOS CT vs MR by case id)")
    format: Literal["dicom", "wfdb", "nifti", "image", "text", "slide", "features"]
    pattern: str = Field("**", description="glob over the path relative to the root ('**' spans folders)")
    ids: str | None = Field(None, description="regex over the relative path with named groups patient / study / "
                                              "series; overrides header values")

    @field_validator("ids")
    @classmethod
    def _ids_regex(cls, value):
        return _check_regex(value)

    @field_validator("modality")
    @classmethod
    def _modality_regexes(cls, value):
        if isinstance(value, dict):
            for key in value:
                _check_regex(key)
        return value


class TableSpec(StrictModel):
    """A metadata table (CSV / TSV / Parquet). Either it lists files (``path_column``) and
    gives them patient / study / time, or each of its rows (or columns) is an item of
    ``modality`` of its own (labs, genomics, clinical survival, machine measurements)."""

    path: str = Field(description="table path relative to the root")
    path_column: str | None = Field(None, description="column holding a file path (extension optional)")
    path_prefix: str = Field("", description="leading text of path_column to drop (e.g. 'CheXpert-v1.0-small/')")
    modality: str | None = Field(None, description="each row / column is an item of this modality")
    key_column: str | None = Field(None, description="row key of an item table (default: patient_column)")
    orientation: Literal["rows", "columns"] = Field("rows", description="items are rows, or columns (genes x samples)")
    patient_column: str | None = None
    study_column: str | None = None
    time_column: str | None = None
    patient_pattern: str | None = Field(None, description="regex with group 'patient' applied to the patient value "
                                                          "or item key (e.g. the TCGA case barcode)")

    @field_validator("patient_pattern")
    @classmethod
    def _patient_regex(cls, value):
        return _check_regex(value)

    @model_validator(mode="after")
    def _one_role(self) -> "TableSpec":
        if (self.path_column is None) == (self.modality is None):
            raise ValueError(f"table {self.path}: give exactly one of path_column (lists files) or modality (items)")
        if self.modality and self.orientation == "rows" and not (self.key_column or self.patient_column):
            raise ValueError(f"table {self.path}: an item table needs key_column or patient_column")
        return self


class LinkRule(StrictModel):
    """Attach an item of one modality to a study of another of the same patient, e.g. the
    ECG nearest in time within 24 h of each chest X-ray (Symile-MIMIC's pairing rule,
    Saporta et al., NeurIPS 2024). ``within_hours: null`` links regardless of time
    (per-patient tables such as TCGA genomics and survival)."""

    anchor: str
    attach: str
    within_hours: float | None = 24.0


class CohortSpec(StrictModel):
    name: str
    root: Path
    source: dict[str, str] = {}
    modalities: list[str]
    required_modalities: list[str] = []
    split: SplitSpec = SplitSpec()
    missing: dict[str, float] = Field(
        {}, description="demo generator only: probability that a study lacks each modality, e.g. {ecg: 0.3}")
    files: list[FileRule] = Field([], description="file rules for `python -m medmm.pipelines.ingest`")
    tables: list[TableSpec] = []
    links: list[LinkRule] = []

    @model_validator(mode="after")
    def _known_modalities(self) -> "CohortSpec":
        named = set(self.modalities)
        used = set(self.required_modalities)
        for rule in self.files:
            used |= set(rule.modality.values()) if isinstance(rule.modality, dict) else {rule.modality}
        used |= {t.modality for t in self.tables if t.modality}
        used |= {m for link in self.links for m in (link.anchor, link.attach)}
        unknown = used - named
        if unknown:
            raise ValueError(f"modalities {sorted(unknown)} are used but not listed in 'modalities'")
        return self


def load_cohort_spec(path: str | Path) -> CohortSpec:
    return build_config(CohortSpec, path)
