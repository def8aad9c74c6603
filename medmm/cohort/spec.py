"""Cohort specs (``cohorts/*.yaml``): which modalities a cohort has and needs, and how it
is split. A spec describes data; it never holds data or identifiers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydicom.datadict import tag_for_keyword

from medmm.cohort.captions import CAPTION_STYLES
from medmm.config.core import StrictModel, build_config

# Named groups an ``ids`` regex may capture, and what each is: the ids a manifest row gets
# (patient / study / series) and the keys rows are linked by (accession / study_uid /
# instance; see LinkRule and TableSpec.on).
ID_GROUPS = ("patient", "study", "series", "accession", "study_uid", "instance")
LINK_KEYS = ("study", "accession", "study_uid")


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


def _values(value: str | list[str]) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value])]


class FileRule(StrictModel):
    """Which files under the root are one modality, and where their identifiers come from.

    The first rule whose ``pattern`` matches a file, whose content is of its ``format``
    where that is checked (DICOM, JPEG / PNG) and whose ``select`` accepts the file's DICOM
    header claims it; several rules over the same files with different ``select`` route
    them to different modalities. Identifiers: the ``ids`` groups first, then a table that
    lists the file, then the DICOM header (PatientID, StudyInstanceUID, SeriesInstanceUID,
    AccessionNumber)."""

    modality: str | dict[str, str] = Field(
        description="modality name, or {path regex: modality} tried in order (e.g. AMOS CT vs MR by case id)")
    format: Literal["dicom", "wfdb", "nifti", "image", "text", "slide", "features"] = Field(
        description="dicom (by content), wfdb (.hea + .dat), nifti, image (JPEG / PNG, by content), text, "
                    "slide, features")
    pattern: str = Field("**", description="glob over the path relative to the root ('**' spans folders)")
    ids: str | None = Field(None, description="regex over the relative path with named groups among patient / "
                                              "study / series / accession / study_uid / instance; overrides "
                                              "header values (instance defaults to the file name without "
                                              "extension)")
    select: dict[str, str | list[str]] = Field(
        {}, description="dicom rules: {DICOM keyword: accepted value(s)}, e.g. {Modality: [CR, DX]}; a file "
                        "whose header has another value (case-insensitive; a SOP class may be named) is left "
                        "to the next rule, and counted as not selected if none takes it")

    @field_validator("ids")
    @classmethod
    def _ids_regex(cls, value):
        _check_regex(value)
        if value is not None:
            unknown = set(re.compile(value).groupindex) - set(ID_GROUPS)
            if unknown:
                raise ValueError(f"ids {value!r}: unknown group(s) {sorted(unknown)}; known: {', '.join(ID_GROUPS)}")
        return value

    @field_validator("select")
    @classmethod
    def _select_keywords(cls, value):
        for keyword, accepted in value.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"select: {keyword!r} is not a DICOM keyword (e.g. Modality, ViewPosition, "
                                 "SOPClassUID, BodyPartExamined)")
            if not _values(accepted):
                raise ValueError(f"select: {keyword} accepts no value")
        return value

    @model_validator(mode="after")
    def _select_reads_dicom(self) -> "FileRule":
        if self.select and self.format != "dicom":
            raise ValueError(f"rule {self.pattern!r}: select reads DICOM header tags, so it needs format: dicom "
                             "(select JPEG / PNG files through a metadata table's select)")
        return self

    def accepted(self) -> dict[str, list[str]]:
        """``select`` with every value as a list."""
        return {k: _values(v) for k, v in self.select.items()}

    @field_validator("modality")
    @classmethod
    def _modality_regexes(cls, value):
        if isinstance(value, dict):
            for key in value:
                _check_regex(key)
        return value


class TableSpec(StrictModel):
    """A metadata table (CSV / TSV, gzipped or not, or Parquet). Either it lists files and
    gives them patient / study / time (a mapping table: MIMIC-CXR's ``cxr-record-list``,
    PTB-XL's ``ptbxl_database``, CheXpert's ``train.csv``), or each of its rows (or
    columns) is an item of ``modality`` of its own (labs, genomics, clinical survival,
    machine measurements).

    A mapping table finds its files by the key ``on`` names: ``path`` (``path_column``,
    a path relative to the table's folder, extension optional), ``instance`` (the file
    name without extension, e.g. MIMIC-CXR's ``dicom_id``), ``accession`` or
    ``study_uid`` (``<key>_column``). ``on`` defaults to the first of those whose column is
    given. Its ``select`` drops the listed files whose row has another value (files it does
    not list are left as they are)."""

    path: str = Field(description="table path relative to the root")
    modality: str | None = Field(None, description="each row / column is an item of this modality")
    on: Literal["path", "instance", "accession", "study_uid"] | None = Field(
        None, description="mapping table: the file key its rows match (default: the first of path / instance / "
                          "accession / study_uid whose column is given)")
    path_column: str | None = Field(None, description="column holding a file path (extension optional)")
    path_prefix: str = Field("", description="leading text of path_column to drop (e.g. 'CheXpert-v1.0-small/')")
    instance_column: str | None = Field(None, description="column holding a file's instance key (its name without "
                                                          "extension unless the ids regex captures one)")
    accession_column: str | None = Field(None, description="column holding the accession number")
    study_uid_column: str | None = Field(None, description="column holding the StudyInstanceUID")
    key_column: str | None = Field(None, description="row key of an item table (default: patient_column)")
    orientation: Literal["rows", "columns"] = Field("rows", description="items are rows, or columns (genes x samples)")
    patient_column: str | None = None
    study_column: str | None = None
    time_column: str | list[str] | None = Field(
        None, description="column with the time, or columns joined (e.g. [StudyDate, StudyTime], DICOM style)")
    patient_pattern: str | None = Field(None, description="regex with group 'patient' applied to the patient value "
                                                          "or item key (e.g. the TCGA case barcode)")
    study_pattern: str | None = Field(None, description="regex with group 'study' applied to the study value (e.g. "
                                                        "'(?P<study>patient\\d+/study\\d+)' on CheXpert's Path)")
    select: dict[str, str | list[str]] = Field(
        {}, description="{column: accepted value(s)}, e.g. {ViewPosition: [PA, AP]}: a mapping table's files of "
                        "other rows are counted as not selected; an item table's other rows are skipped")
    text_columns: list[str] = Field(
        [], description="report table (modality: report): each row's report text is these columns' non-blank "
                        "cells, one per line (MIMIC-IV-ECG's report_0 ... report_17, PTB-XL's report)")
    label_columns: list[str] = Field(
        [], description="report table (modality: report): finding columns (1 positive, 0 negative, -1 uncertain, "
                        "blank not mentioned) written as report sentences, e.g. CheXpert's observations")
    caption_style: Literal[tuple(CAPTION_STYLES)] = Field(
        "chest_xray", description="the sentence templates of label_columns: chest_xray (CheXpert-style findings), "
                                  "ct / mr (organs in an axial slice), pathology (one tissue class per tile)")

    @field_validator("patient_pattern", "study_pattern")
    @classmethod
    def _valid_regexes(cls, value):
        return _check_regex(value)

    @model_validator(mode="after")
    def _one_role(self) -> "TableSpec":
        if self.modality is None:
            if self.join_key is None:
                raise ValueError(f"table {self.path}: give modality (its rows are items) or the column that names "
                                 "each row's file (path_column, instance_column, accession_column or "
                                 "study_uid_column)")
            if self._key_columns()[self.join_key] is None:
                raise ValueError(f"table {self.path}: on: {self.on} needs {self.on}_column")
        else:
            if self.on is not None or self.path_column or self.instance_column:
                raise ValueError(f"table {self.path}: an item table (modality) lists no files: drop on, "
                                 "path_column and instance_column")
            if self.orientation == "rows" and not (self.key_column or self.patient_column):
                raise ValueError(f"table {self.path}: an item table needs key_column or patient_column")
        if (self.text_columns or self.label_columns) and (self.modality != "report" or self.orientation != "rows"):
            raise ValueError(f"table {self.path}: text_columns and label_columns make report items: give "
                             "modality: report (rows)")
        for column, accepted in self.select.items():
            if not _values(accepted):
                raise ValueError(f"table {self.path}: select: {column} accepts no value")
        return self

    def _key_columns(self) -> dict[str, str | None]:
        return {"path": self.path_column, "instance": self.instance_column, "accession": self.accession_column,
                "study_uid": self.study_uid_column}

    @property
    def join_key(self) -> str | None:
        """The file key a mapping table's rows match (None for an item table)."""
        if self.modality is not None:
            return None
        return self.on or next((k for k, column in self._key_columns().items() if column), None)

    @property
    def join_column(self) -> str | None:
        """The column of :attr:`join_key`."""
        return None if self.join_key is None else self._key_columns()[self.join_key]

    def time_columns(self) -> list[str]:
        return [] if self.time_column is None else _values(self.time_column)

    def accepted(self) -> dict[str, list[str]]:
        return {k: _values(v) for k, v in self.select.items()}


class LinkRule(StrictModel):
    """Attach items of one modality (``attach``) to the studies of another (``anchor``).

    ``by: time`` (the default): each anchor study gets the attach item of the same patient
    nearest in time, within ``within_hours`` (``null``: regardless of time, for per-patient
    tables such as TCGA genomics and survival); a copy joins the anchor's study and names
    its own in ``linked_from`` (e.g. the ECG nearest in time within 24 h of each chest
    X-ray, Symile-MIMIC's pairing rule, Saporta et al., NeurIPS 2024).

    ``by: accession | study_uid | study``: an attach item whose key equals an anchor's
    joins that anchor's study and patient (a report file named by its accession number
    joins the X-ray whose DICOM header has that AccessionNumber). An item that has a
    patient joins only an anchor of that patient; an item matching several anchor studies
    joins each. An item that matches none and has no patient of its own is dropped as
    unlinked."""

    anchor: str
    attach: str
    by: Literal["time", "study", "accession", "study_uid"] = Field(
        "time", description="time (same patient, nearest in time) or a shared key: study, accession, study_uid")
    within_hours: float | None = Field(24.0, description="by: time only: the largest gap (null: any)")

    @model_validator(mode="after")
    def _window_for_time(self) -> "LinkRule":
        if self.by != "time" and "within_hours" in self.model_fields_set:
            raise ValueError(f"link {self.anchor} <- {self.attach}: within_hours applies to by: time only")
        if self.anchor == self.attach:
            raise ValueError(f"link {self.anchor} <- {self.attach}: anchor and attach must differ")
        return self


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
