"""Genomics and labs tables: CSV / TSV / Parquet, genes x samples or samples x genes,
with optional gene groups (e.g. the six functional groups of MCAT / CMTA).

``read_table`` always returns samples as rows. The orientation of the file is declared
(``orientation="samples_x_features"`` / ``"features_x_samples"``) or detected from the
header of the first column (``gene``, ``Hugo_Symbol``, ``probe`` ... mean genes are rows;
``sample``, ``case_id``, ``patient_id`` ... mean samples are rows) and, failing that, from
which axis the gene-group genes name. An undecidable table is an error, never a guess.

Gene-group file formats (``read_gene_groups``):
- CSV / TSV in long form with columns ``group`` and ``gene`` (one row per membership);
- YAML or JSON mapping ``group name -> [gene, ...]``.
The same mapping may be passed as a dict. A gene may belong to several groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError

Orientation = Literal["auto", "samples_x_features", "features_x_samples"]

# First-column headers that say what the rows are (compared case-insensitively).
FEATURE_ROW_HEADERS = {"gene", "genes", "gene_id", "gene_symbol", "hugo_symbol", "symbol", "probe", "probe_id",
                       "entrez_gene_id", "feature", "ensembl_gene_id"}
SAMPLE_ROW_HEADERS = {"sample", "samples", "sample_id", "case_id", "case_submitter_id", "patient", "patient_id",
                      "barcode", "submitter_id", "bcr_patient_barcode", "subject_id"}

# The functional groups used by MCAT / CMTA (Chen et al. 2021; Zhou & Chen, ICCV 2023).
CMTA_GROUP_NAMES = ("tumor_suppressor", "oncogene", "protein_kinase", "cell_differentiation",
                    "transcription_factor", "cytokine_growth_factor")


@dataclass(frozen=True)
class Table:
    """A table with samples as rows. ``groups`` maps each gene group to the columns of
    ``values`` it holds (genes absent from the table are listed in ``missing_genes``)."""

    values: pd.DataFrame
    path: str | None
    orientation: Literal["samples_x_features", "features_x_samples"]
    groups: dict[str, list[str]] = field(default_factory=dict)
    missing_genes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def samples(self) -> list[str]:
        return [str(s) for s in self.values.index]

    @property
    def features(self) -> list[str]:
        return [str(c) for c in self.values.columns]

    def group_matrix(self, group: str) -> np.ndarray:
        """[samples, genes of ``group``] float32 array."""
        return self.values[self.groups[group]].to_numpy(dtype=np.float32)


def _read_frame(path: Path) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] == ".parquet":
            frame = pd.read_parquet(path)
            if isinstance(frame.index, pd.RangeIndex):  # the id column was stored as a column
                frame = frame.set_index(frame.columns[0])
            return frame
        sep = "\t" if any(s in (".tsv", ".txt") for s in suffixes) else ","
        # pandas renames a repeated header (TP53 -> TP53.1): check the raw header first
        header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str).iloc[0, 1:].dropna()
        if header.duplicated().any():
            raise InconsistentDataError(path, f"duplicated feature name {header[header.duplicated()].iloc[0]!r} "
                                              "in the header")
        return pd.read_csv(path, sep=sep, index_col=0)
    except MedmmInputError:
        raise
    except (pd.errors.EmptyDataError, IndexError):
        raise CorruptFileError(path, "the table is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise CorruptFileError(path, "file not found") from None
        raise CorruptFileError(path, f"not a readable {'Parquet' if suffixes[-1:] == ['.parquet'] else 'CSV/TSV'} "
                                     f"table ({type(exc).__name__}: {str(exc)[:200]})") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for broken files
        raise CorruptFileError(path, f"not a readable table ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_gene_groups(source: str | Path | Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Gene groups from a long-form CSV/TSV (columns ``group``, ``gene``), a YAML / JSON
    mapping file, or a dict. Order of groups and genes is kept; duplicates are dropped."""
    if isinstance(source, Mapping):
        raw, path = dict(source), None
    else:
        path = Path(source)
        if not path.is_file():
            raise CorruptFileError(path, "gene-group file not found")
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml", ".json"):
            import yaml

            try:
                text = path.read_text(encoding="utf-8")
                raw = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
            except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
                raise CorruptFileError(path, f"gene-group file does not parse: {str(exc)[:200]}") from None
            if not isinstance(raw, dict):
                raise InconsistentDataError(path, "gene-group file must map group names to lists of genes")
        else:
            try:
                frame = pd.read_csv(path, sep="\t" if suffix in (".tsv", ".txt") else ",")
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise CorruptFileError(path, f"gene-group table does not parse: {str(exc)[:200]}") from None
            cols = {c.lower(): c for c in frame.columns}
            if not {"group", "gene"} <= set(cols):
                raise InconsistentDataError(path, f"gene-group table needs columns 'group' and 'gene', has "
                                                  f"{list(frame.columns)[:10]}")
            raw = {}
            for grp, gene in zip(frame[cols["group"]], frame[cols["gene"]]):
                raw.setdefault(str(grp), []).append(gene)
    groups: dict[str, list[str]] = {}
    for name, genes in raw.items():
        if not isinstance(genes, (list, tuple)) or not genes:
            raise InconsistentDataError(path, f"gene group {name!r} must be a non-empty list of genes")
        groups[str(name)] = list(dict.fromkeys(str(g) for g in genes))
    if not groups:
        raise InconsistentDataError(path, "no gene groups defined")
    return groups


def _detect_orientation(frame: pd.DataFrame, path: Path, groups: dict[str, list[str]] | None) -> str:
    header = str(frame.index.name or "").strip().lower()
    if header in FEATURE_ROW_HEADERS:
        return "features_x_samples"
    if header in SAMPLE_ROW_HEADERS:
        return "samples_x_features"
    if groups:
        genes = {g for gs in groups.values() for g in gs}
        in_rows = len(genes & {str(i) for i in frame.index})
        in_cols = len(genes & {str(c) for c in frame.columns})
        if in_rows != in_cols:
            return "features_x_samples" if in_rows > in_cols else "samples_x_features"
    raise InconsistentDataError(
        path, f"cannot tell whether rows are samples or genes (first column header {frame.index.name!r}); "
              "pass orientation='samples_x_features' or 'features_x_samples'")


def read_table(path: str | Path, orientation: Orientation = "auto",
               gene_groups: str | Path | Mapping[str, list[str]] | None = None, numeric: bool = True,
               allow_missing_genes: bool = True) -> Table:
    """Read a genomics / labs table with samples as rows.

    ``numeric=True`` (genomics) requires every value to be a number (NaN allowed, but not
    an all-NaN column); ``numeric=False`` keeps mixed columns (clinical tables).
    With ``gene_groups``, genes of a group that the table lacks are listed in
    ``missing_genes`` (or raise when ``allow_missing_genes`` is False); a group with no
    gene in the table is always an error.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(path, "file not found")
    groups = read_gene_groups(gene_groups) if gene_groups is not None else None
    frame = _read_frame(path)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise CorruptFileError(path, f"the table has no data ({frame.shape[0]} rows x {frame.shape[1]} columns)")
    if orientation == "auto":
        orientation = _detect_orientation(frame, path, groups)
    elif orientation not in ("samples_x_features", "features_x_samples"):
        raise ValueError(f"orientation must be auto, samples_x_features or features_x_samples, got {orientation!r}")
    if orientation == "features_x_samples":
        frame = frame.T
    frame.index = frame.index.map(str)
    frame.columns = frame.columns.map(str)
    for axis, labels in (("sample", frame.index), ("feature", frame.columns)):
        dup = labels[labels.duplicated()]
        if len(dup):
            raise InconsistentDataError(path, f"{len(dup)} duplicated {axis} name(s), e.g. {dup[0]!r}")
    if numeric:
        converted = frame.apply(pd.to_numeric, errors="coerce")
        bad = converted.isna() & frame.notna()
        if bad.to_numpy().any():
            row, col = np.argwhere(bad.to_numpy())[0]
            raise InconsistentDataError(path, f"non-numeric value {frame.iat[row, col]!r} in feature "
                                              f"{frame.columns[col]!r} (sample row {row})")
        all_nan = converted.columns[converted.isna().all()]
        if len(all_nan):
            raise InconsistentDataError(path, f"feature {all_nan[0]!r} has no value in any sample")
        if not np.isfinite(converted.to_numpy(dtype=float, na_value=0.0)).all():
            raise InconsistentDataError(path, "infinite values in the table")
        frame = converted.astype(np.float64)
    present: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    if groups:
        columns = set(frame.columns)
        for name, genes in groups.items():
            present[name] = [g for g in genes if g in columns]
            lacking = [g for g in genes if g not in columns]
            if lacking:
                missing[name] = lacking
            if not present[name]:
                raise InconsistentDataError(path, f"gene group {name!r}: none of its {len(genes)} genes is in the table")
        if missing and not allow_missing_genes:
            name = next(iter(missing))
            raise InconsistentDataError(path, f"gene group {name!r}: {len(missing[name])} gene(s) missing from the "
                                              f"table, e.g. {missing[name][0]!r}")
    return Table(frame, str(path), orientation, present, missing)


__all__ = ["Table", "read_table", "read_gene_groups", "CMTA_GROUP_NAMES", "MedmmInputError"]
