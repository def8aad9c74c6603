"""Cohort manifest: one row per (study, modality) file, with a content hash, and the
patient-level split. Stored as Parquet so later runs can log exactly which data they saw.

Columns: patient_id, study_id, modality, path (relative to the cohort root), sha256,
split. Paths are resolved under the root and may not escape it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MANIFEST_NAME = "manifest.parquet"
# the manifest's Parquet key-value metadata that holds the cohort's name (the spec's ``name``):
# run names carry it, never a folder name, which may embed patient or user identifiers
COHORT_NAME_KEY = "medmm.cohort"
COLUMNS = ("patient_id", "study_id", "modality", "path", "sha256", "split")
SPLITS = ("train", "val", "test")


class LeakageError(ValueError):
    """A patient appears in more than one split."""


def file_sha256(path: Path, extra: tuple[Path, ...] = ()) -> str:
    """SHA-256 over a file's bytes (and of companion files, e.g. a WFDB .dat)."""
    digest = hashlib.sha256()
    for p in (path, *extra):
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def hashed_files(path: Path) -> tuple[Path, ...]:
    """The files whose bytes make a manifest entry's sha256: the file itself and, for a
    WFDB header (``.hea``), its signal file (``.dat``) where one exists."""
    path = Path(path)
    signal = path.with_suffix(".dat")
    return (path, signal) if path.suffix == ".hea" and signal.exists() else (path,)


def entry_sha256(path: Path) -> str:
    """The sha256 that ingest records for the manifest entry at ``path``."""
    first, *companions = hashed_files(path)
    return file_sha256(first, tuple(companions))


def patient_level_split(patient_ids: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Assign each patient (not each study) to train / val / test."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} do not sum to 1")
    unique = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    split_of = {}
    for rank, idx in enumerate(order):
        split_of[unique[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return split_of


def check_no_leakage(manifest: pd.DataFrame) -> None:
    """Raise LeakageError if any patient has studies in two splits (run before training)."""
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        # Counts only: a patient identifier does not belong in a log.
        raise LeakageError(f"{len(leaked)} patient(s) appear in more than one split")


def resolve_under(root: str | Path, relative: str) -> Path:
    """Absolute path of a manifest entry; refuses paths that escape the cohort root."""
    root = Path(root).resolve()
    full = (root / relative).resolve()
    if root not in full.parents:
        raise ValueError(f"manifest path {relative!r} escapes the cohort root {root}")
    return full


@dataclass(frozen=True)
class Manifest:
    root: Path
    table: pd.DataFrame

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"no cohort manifest at {path}; build the demo cohort with "
                f"`python -m medmm.pipelines.make_demo --out {root}`"
            )
        table = pd.read_parquet(path)
        missing = set(COLUMNS) - set(table.columns)
        if missing:
            raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}")
        check_no_leakage(table)
        return cls(root, table)

    def save(self) -> Path:
        path = self.root / MANIFEST_NAME
        self.table.to_parquet(path, index=False)
        return path

    def resolve(self, relative: str) -> Path:
        return resolve_under(self.root, relative)

    def content_hash(self) -> str:
        """One hash over every file hash: identifies the exact data a run saw."""
        rows = self.table.sort_values(["study_id", "modality"])[["study_id", "modality", "sha256", "split"]]
        return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()

    def studies(self, split: str | None = None) -> pd.DataFrame:
        """One row per study: patient_id, study_id, split, one path column per modality and,
        for a modality held as text in a table (reports of MIMIC-IV-ECG, PTB-XL, CheXpert's
        label captions), a ``<modality>_text`` column."""
        table = self.table if split is None else self.table[self.table["split"] == split]
        index = ["patient_id", "study_id", "split"]
        wide = table.pivot_table(index=index, columns="modality", values="path", aggfunc="first").reset_index()
        wide.columns.name = None
        if "text" in table.columns and table["text"].notna().any():
            texts = table[table["text"].notna()].pivot_table(index=index, columns="modality", values="text",
                                                             aggfunc="first")
            texts.columns = [f"{m}_text" for m in texts.columns]
            wide = wide.merge(texts.reset_index(), on=index, how="left")
        return wide.sort_values("study_id").reset_index(drop=True)
