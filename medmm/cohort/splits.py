"""Patient-level splits that stay put as a cohort grows, and the one check every
training pipeline runs before it trains (:func:`verify_before_training`)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import pandas as pd

from medmm.cohort.manifest import SPLITS, LeakageError, Manifest, check_no_leakage, resolve_under

log = logging.getLogger("medmm.cohort")


def _unit_interval(seed: int, patient_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_patient_split(patient_ids: Iterable[str], fractions: tuple[float, float, float],
                         seed: int) -> dict[str, str]:
    """Each patient's split from a hash of (seed, patient id) alone.

    Unlike a permutation of all patients, adding patients (a second, incremental ingest)
    never moves an existing patient to another split, so a model trained on an earlier
    manifest is never evaluated on its own training patients."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} do not sum to 1")
    edges = (fractions[0], fractions[0] + fractions[1])
    out = {}
    for pid in patient_ids:
        u = _unit_interval(seed, str(pid))
        out[pid] = "train" if u < edges[0] else "val" if u < edges[1] else "test"
    return out


def verify_before_training(manifest: Manifest, *, check_paths: bool = True) -> str:
    """Refuse a manifest that would leak: a patient in two splits, a study under two
    patients, an unknown split name, or a path escaping the cohort root. Returns the
    manifest's content hash (log it with the run). Call it in every training pipeline
    before the first batch; messages name counts, never patient identifiers."""
    table = manifest.table
    try:
        check_no_leakage(table)
    except LeakageError:
        n = int((table.groupby("patient_id")["split"].nunique() > 1).sum())
        raise LeakageError(f"{n} patient(s) appear in more than one split: refusing to train") from None
    owners = table.groupby("study_id")["patient_id"].nunique()
    if (owners > 1).any():
        raise LeakageError(f"{int((owners > 1).sum())} stud(ies) belong to more than one patient: refusing to train")
    unknown = set(table["split"].dropna().unique()) - set(SPLITS)
    if unknown or table["split"].isna().any():
        raise LeakageError(f"split column holds values other than {SPLITS}: refusing to train")
    if check_paths:
        for rel in pd.unique(table["path"]):
            resolve_under(manifest.root, rel)
    return manifest.content_hash()
