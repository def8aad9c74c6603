"""Survival cohorts as arrays: scikit-survival's bundled cohorts (tabular) and pathology
cohorts (slides -> tile-feature bags, genomics by gene group, clinical outcome) in the
TCGA-like layout of ``python -m medmm.pipelines.make_demo_pathology``.

Preprocessing that learns from data (imputation, scaling) is fitted on training rows
only (``Standardizer``), so nothing of the test split leaks into the model.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medmm.cohort.manifest import Manifest
from medmm.io.errors import InconsistentDataError, MedmmInputError
from medmm.io.table import read_table
from medmm.io.wsi import ColorTextureEncoder, feature_bag, read_wsi


@dataclass
class SurvivalData:
    time: np.ndarray  # [n] float
    event: np.ndarray  # [n] bool
    x: np.ndarray  # [n, p] float tabular features (pathology: genomics + mean tile features)
    feature_names: list[str]
    split: np.ndarray | None = None  # [n] "train" / "val" / "test" when the cohort defines it
    bags: list[np.ndarray] | None = None  # per patient [tiles, f]
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # group -> [n, genes]
    skipped: list[dict] = field(default_factory=list)
    content_hash: str = ""
    manifest: object | None = None  # medmm.cohort.manifest.Manifest of a pathology cohort (None: bundled table)

    def __len__(self) -> int:
        return len(self.time)


def _hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def load_bundled(name: str) -> SurvivalData:
    """One of scikit-survival's cohorts, categorical columns one-hot encoded."""
    from sksurv import datasets
    from sksurv.column import encode_categorical

    frame, y = getattr(datasets, f"load_{name}")()
    event_field, time_field = y.dtype.names
    frame = encode_categorical(frame)
    x = frame.to_numpy(dtype=float)
    time = y[time_field].astype(float)
    event = y[event_field].astype(bool)
    return SurvivalData(time, event, x, list(frame.columns), content_hash=_hash_arrays(x, time, event))


class Standardizer:
    """Median imputation + z-scoring fitted on training rows only."""

    def fit(self, x: np.ndarray) -> "Standardizer":
        self.median = np.nanmedian(x, axis=0)
        filled = np.where(np.isnan(x), self.median, x)
        self.mean = filled.mean(axis=0)
        self.std = filled.std(axis=0)
        self.std[self.std < 1e-8] = 1.0
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.where(np.isnan(x), self.median, x) - self.mean) / self.std).astype(np.float32)


def _outcome(clinical: pd.DataFrame, path: str) -> tuple[np.ndarray, np.ndarray]:
    """TCGA clinical convention: time = days_to_death if dead else days_to_last_follow_up."""
    needed = {"vital_status", "days_to_death", "days_to_last_follow_up"}
    if not needed <= set(clinical.columns):
        raise InconsistentDataError(path, f"clinical table lacks {sorted(needed - set(clinical.columns))}")
    dead = clinical["vital_status"].astype(str).str.lower().eq("dead").to_numpy()
    t = np.where(dead, pd.to_numeric(clinical["days_to_death"], errors="coerce"),
                 pd.to_numeric(clinical["days_to_last_follow_up"], errors="coerce")).astype(float)
    return t, dead


def _cached_bag(slide_path: Path, sha: str, cache: Path, magnification: float, tile_size: int,
                max_tiles: int | None, seed: int) -> np.ndarray:

    key = cache / f"{sha[:24]}_{magnification:g}x_{tile_size}_{max_tiles}_{seed}.npy"
    if key.exists():
        return np.load(key, allow_pickle=False)
    with read_wsi(slide_path) as slide:
        bag = feature_bag(slide, magnification=magnification, tile_size=tile_size, max_tiles=max_tiles, seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(key, bag.features, allow_pickle=False)
    return bag.features


def load_pathology_cohort(root: str | Path, cache_dir: str | Path, magnification: float = 20, tile_size: int = 128,
                          max_tiles: int | None = None, seed: int = 0, max_rows: int | None = None) -> SurvivalData:
    """Slides + genomics + clinical of a cohort folder with a manifest (modalities ``wsi``,
    ``genomics``, ``clinical``, ``gene_groups``). A slide that cannot be read is skipped and
    counted (its patient dropped), never the end of the run."""

    manifest = Manifest.load(root)
    table = manifest.table

    def shared(modality: str) -> Path:
        paths = table.loc[table["modality"] == modality, "path"].unique()
        if len(paths) != 1:
            raise InconsistentDataError(Path(root) / "manifest.parquet",
                                        f"expected one {modality} table, found {len(paths)}")
        return manifest.resolve(paths[0])

    genomics = read_table(shared("genomics"), gene_groups=shared("gene_groups"))
    clinical_path = shared("clinical")
    clinical = read_table(clinical_path, numeric=False).values
    slides = table[table["modality"] == "wsi"].sort_values("patient_id")
    if max_rows is not None:
        slides = slides.sample(n=min(max_rows, len(slides)), random_state=seed).sort_values("patient_id")
    bags, keep, skipped = [], [], []
    for row in slides.itertuples():
        try:
            bag = _cached_bag(manifest.resolve(row.path), row.sha256, Path(cache_dir), magnification, tile_size,
                              max_tiles, seed)
            if row.patient_id not in genomics.values.index or row.patient_id not in clinical.index:
                raise InconsistentDataError(row.path, "patient has no genomics or clinical row")
        except MedmmInputError as exc:
            skipped.append({"study_id": row.study_id, "path": row.path, "problem": exc.problem})
            print(f"WARNING: skipped {row.path}: {exc.problem}", file=sys.stderr)
            continue
        bags.append(bag)
        keep.append(row)
    if not keep:
        raise InconsistentDataError(root, "no readable slide in the cohort")
    ids = [r.patient_id for r in keep]
    time, event = _outcome(clinical.loc[ids], str(clinical_path))
    if np.isnan(time).any() or (time <= 0).any():
        raise InconsistentDataError(clinical_path, "missing or non-positive survival times")
    groups = {g: genomics.values.loc[ids, genes].to_numpy(float) for g, genes in genomics.groups.items()}
    gene_cols = [c for genes in genomics.groups.values() for c in genes]
    mean_tiles = np.stack([b.mean(0) for b in bags])
    x = np.concatenate([genomics.values.loc[ids, gene_cols].to_numpy(float), mean_tiles], axis=1)

    names = gene_cols + [f"tile_mean.{n}" for n in ColorTextureEncoder.names]
    split = np.array([r.split for r in keep])
    return SurvivalData(time, event, x, names, split, bags, groups, skipped,
                        content_hash=manifest.content_hash(), manifest=manifest)
