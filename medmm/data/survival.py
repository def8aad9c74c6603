"""Survival cohorts as arrays: scikit-survival's bundled cohorts (tabular) and pathology
cohorts (slides or precomputed tile-feature bags, genomics by gene group, clinical outcome)
with a manifest: a TCGA project ingested with ``cohorts/tcga.yaml`` or the demo of
``python -m medmm.pipelines.make_demo_pathology``.

Feature bags: one ``[tiles, features]`` array per slide, as CLAM writes them (``.pt``,
``.h5``) or as ``python -m medmm.pipelines.tile_features`` writes them: a safetensors file
per slide (``features`` [tiles, dim], ``coords`` [tiles, 2] level-0 x, y, string metadata
naming the encoder and the tiling) in ``<folder>/bags/``, named by the slide's SHA-256, with
an index ``<folder>/bags.csv`` (slide SHA-256 -> bag, or why the slide gave none).

Preprocessing that learns from data (imputation, scaling) is fitted on training rows
only (``Standardizer``), so nothing of the test split leaks into the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from medmm.cohort.manifest import Manifest
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
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
    """Survival time and event from a clinical table in either convention: the GDC's
    (time = days_to_death if vital_status is Dead, else days_to_last_follow_up) or the
    MCAT / CMTA tables' (``survival_months``, ``censorship`` 1 = censored)."""
    columns = set(clinical.columns)
    if {"survival_months", "censorship"} <= columns:
        t = pd.to_numeric(clinical["survival_months"], errors="coerce").to_numpy(float)
        censored = pd.to_numeric(clinical["censorship"], errors="coerce").to_numpy(float)
        if np.isnan(censored).any() or not np.isin(censored, (0.0, 1.0)).all():
            raise InconsistentDataError(path, "censorship must be 0 (event) or 1 (censored) for every case")
        return t, censored == 0
    gdc = {"vital_status", "days_to_death", "days_to_last_follow_up"}
    if not gdc <= columns:
        raise InconsistentDataError(path, f"clinical table lacks {sorted(gdc - columns)} (or survival_months and "
                                          "censorship)")
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


FEATURE_BAG_SUFFIXES = (".pt", ".h5", ".safetensors")
BAG_INDEX = "bags.csv"  # a tile_features folder's index: slide sha256 -> bag (or the problem)
BAG_FOLDER = "bags"
EXTRACTION = "extraction.json"  # the encoder and tiling every bag of a tile_features folder shares
BAG_INDEX_COLUMNS = ("study_id", "slide_sha256", "status", "bag", "tiles", "problem")


def fixed_size_bags(bags: list[np.ndarray], rows, size: int, rng: np.random.Generator | None) -> torch.Tensor:
    """[len(rows), size, features]: each row's bag brought to ``size`` tiles, a random draw
    (with replacement only where the bag is smaller) under ``rng`` (training), else an even
    spread over the bag, cycled where it is smaller (evaluation: the same tiles every time)."""
    out = []
    for i in rows:
        n = len(bags[i])
        if rng is None:
            pick = np.resize(np.arange(n), size) if n < size else np.linspace(0, n - 1, size).round().astype(int)
        else:
            pick = rng.choice(n, size, replace=n < size)
        out.append(torch.as_tensor(bags[i][pick]))
    return torch.stack(out)


def read_feature_bag(path: Path) -> np.ndarray:
    """A precomputed tile-feature bag, ``[tiles, features]``: a tensor saved by torch (the
    ``pt_files`` of CLAM that MCAT / CMTA read), the ``features`` dataset of a CLAM ``.h5``
    file (needs h5py) or the ``features`` tensor of a safetensors bag."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".h5":
            try:
                import h5py  # optional: only CLAM's .h5 bags need it
            except ImportError:
                raise InconsistentDataError(path, "reading .h5 feature bags needs h5py (pip install h5py)") from None
            with h5py.File(path, "r") as f:
                array = np.asarray(f["features"]) if "features" in f else None
        elif suffix == ".safetensors":
            with safe_open(str(path), framework="np") as f:
                array = f.get_tensor("features") if "features" in f.keys() else None
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            array = obj.numpy() if isinstance(obj, torch.Tensor) else None
    except MedmmInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch, safetensors and h5py raise many types for a broken file
        raise CorruptFileError(path, f"not a readable feature bag ({type(exc).__name__})") from None
    if array is None or array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        shape = "no array" if array is None else f"shape {tuple(array.shape)}"
        raise InconsistentDataError(path, f"a feature bag must be one [tiles, features] array, found {shape}")
    if not np.isfinite(array).all():
        raise InconsistentDataError(path, "the feature bag holds NaN or infinite values")
    return array.astype(np.float32)


def write_feature_bag(path: Path, features: np.ndarray, coords: np.ndarray, metadata: dict[str, str]) -> None:
    """Write a safetensors bag atomically: a reader (or a resumed extraction) sees the whole
    file or none, never a half-written one (written to ``.<name>.partial``, then renamed)."""
    if features.ndim != 2 or coords.shape != (len(features), 2):
        raise ValueError(f"features {features.shape} and coords {coords.shape} do not describe one bag")
    payload = safetensors_bytes({"features": np.ascontiguousarray(features, np.float32),
                                 "coords": np.ascontiguousarray(coords, np.int64)},
                                metadata={k: str(v) for k, v in metadata.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def feature_bag_header(path: Path) -> tuple[dict[str, str], tuple[int, ...], tuple[int, ...]]:
    """A safetensors bag's metadata and the shapes of its ``features`` and ``coords``, read
    from the header only (no tile data)."""
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            shapes = tuple(tuple(f.get_slice(name).get_shape()) for name in ("features", "coords"))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CorruptFileError(path, f"not a readable feature bag ({type(exc).__name__})") from None
    return metadata, shapes[0], shapes[1]


def read_bag_index(folder: str | Path) -> pd.DataFrame:
    """The index of a ``tile_features`` folder (:data:`BAG_INDEX_COLUMNS`, one row per slide)."""
    path = Path(folder) / BAG_INDEX
    if not path.is_file():
        raise MedmmInputError(path, "no feature-bag index: write the bags with python -m medmm.pipelines.tile_features "
                                    "(data.feature_bags names its output_dir)")
    try:
        index = pd.read_csv(path, dtype={"study_id": str, "slide_sha256": str, "bag": str, "problem": str})
    except (OSError, ValueError) as exc:
        raise CorruptFileError(path, f"unreadable feature-bag index ({type(exc).__name__})") from None
    missing = set(BAG_INDEX_COLUMNS) - set(index.columns)
    if missing:
        raise InconsistentDataError(path, f"the feature-bag index lacks columns {sorted(missing)}")
    return index


def tile_encoder_of(folder: str | Path) -> str:
    """The encoder a ``tile_features`` folder's bags come from (its ``extraction.json``)."""
    try:
        return str(json.loads((Path(folder) / EXTRACTION).read_text())["encoder"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _indexed_bag(index: dict[str, dict], folder: Path, row) -> np.ndarray:
    """The bag a ``tile_features`` folder holds for a manifest's slide row (matched by the
    slide's SHA-256, so a bag of another version of the file is never read)."""
    entry = index.get(str(row.sha256))
    if entry is None:
        raise InconsistentDataError(row.path, "no tile-feature bag for the slide in data.feature_bags (run python -m "
                                              "medmm.pipelines.tile_features on this cohort)")
    if entry["status"] != "ok":
        raise InconsistentDataError(row.path, f"its tile features could not be extracted ({entry['problem']})")
    return read_feature_bag(folder / str(entry["bag"]))


def _row_keys(table: pd.DataFrame, modality: str) -> dict[str, str]:
    """study -> the row of a shared table that belongs to it: the manifest's ``row_key`` (a
    TCGA sample or case barcode, as ingest linked it) or else the patient id."""
    rows = table[table["modality"] == modality]
    keys = rows["row_key"] if "row_key" in rows.columns else pd.Series(None, index=rows.index, dtype=object)
    keys = keys.where(keys.notna() & (keys.astype(str) != ""), rows["patient_id"])
    return dict(zip(rows["study_id"], keys.astype(str)))


def load_pathology_cohort(root: str | Path, cache_dir: str | Path, magnification: float = 20, tile_size: int = 128,
                          max_tiles: int | None = None, seed: int = 0, max_rows: int | None = None,
                          gene_groups: str | Path | None = None,
                          feature_bags: str | Path | None = None) -> SurvivalData:
    """One row per patient of a cohort folder with a manifest (modalities ``wsi``,
    ``genomics``, ``clinical`` and optionally ``gene_groups``): the tile features of the
    patient's slides (embedded by :class:`ColorTextureEncoder`) or precomputed feature bags
    (``.pt`` / ``.h5`` / ``.safetensors``) pooled into one bag, the genomics row and the
    outcome ingest linked to the slide's study. ``feature_bags``: a folder written by
    ``python -m medmm.pipelines.tile_features`` whose bags replace the hand-made tile
    features (matched to slides by SHA-256). Gene groups: the manifest's, else the
    ``gene_groups`` file, else one group of every gene. A bag that cannot be read is skipped and counted (a patient
    left without one dropped), never the end of the run."""

    manifest = Manifest.load(root)
    table = manifest.table

    def shared(modality: str, required: bool = True) -> Path | None:
        paths = table.loc[table["modality"] == modality, "path"].unique()
        if len(paths) != 1 and (required or len(paths)):
            raise InconsistentDataError(Path(root) / "manifest.parquet",
                                        f"expected one {modality} table, found {len(paths)}")
        return manifest.resolve(paths[0]) if len(paths) else None

    genomics_path = shared("genomics")
    groups_path = shared("gene_groups", required=False) or gene_groups
    genomics = read_table(genomics_path, gene_groups=groups_path)
    gene_sets = genomics.groups or {"genes": genomics.features}
    clinical_path = shared("clinical")
    clinical = read_table(clinical_path, numeric=False).values
    sample_of, case_of = _row_keys(table, "genomics"), _row_keys(table, "clinical")
    slides = table[table["modality"] == "wsi"].sort_values(["patient_id", "study_id", "path"])
    if max_rows is not None:
        patients = slides["patient_id"].drop_duplicates()
        chosen = set(patients.sample(n=min(max_rows, len(patients)), random_state=seed))
        slides = slides[slides["patient_id"].isin(chosen)]
    per_patient: dict[str, dict] = {}
    skipped, from_files, width = [], feature_bags is not None, 0
    bag_index = {} if feature_bags is None else (read_bag_index(feature_bags).drop_duplicates("slide_sha256")
                                                 .set_index("slide_sha256", drop=False).to_dict("index"))
    for row in slides.itertuples():
        try:
            path = manifest.resolve(row.path)
            if feature_bags is not None:
                bag = _indexed_bag(bag_index, Path(feature_bags), row)
            elif path.suffix.lower() in FEATURE_BAG_SUFFIXES:
                bag, from_files = read_feature_bag(path), True
            else:
                bag = _cached_bag(path, row.sha256, Path(cache_dir), magnification, tile_size, max_tiles, seed)
            sample, case = sample_of.get(row.study_id), case_of.get(row.study_id)
            if sample not in genomics.values.index or case not in clinical.index:
                raise InconsistentDataError(row.path, "the slide's study has no genomics or clinical row")
        except MedmmInputError as exc:
            skipped.append({"study_id": row.study_id, "path": row.path, "problem": exc.problem})
            print(f"WARNING: skipped {row.path}: {exc.problem}", file=sys.stderr)
            continue
        width = width or bag.shape[1]
        if bag.shape[1] != width:  # one model reads every bag: one tile encoder for the whole cohort
            raise InconsistentDataError(row.path, f"{bag.shape[1]} features per tile where the cohort's other bags "
                                                  f"have {width}: slides and feature bags must share one tile encoder")
        per_patient.setdefault(row.patient_id, {"bags": [], "sample": sample, "case": case,
                                                "split": row.split})["bags"].append(bag)
    if not per_patient:
        raise InconsistentDataError(root, "no readable slide or feature bag in the cohort")
    patients = list(per_patient.values())
    bags = [np.concatenate(p["bags"]) for p in patients]
    samples, cases = [p["sample"] for p in patients], [p["case"] for p in patients]
    time, event = _outcome(clinical.loc[cases], str(clinical_path))
    if np.isnan(time).any() or (time <= 0).any():
        raise InconsistentDataError(clinical_path, "missing or non-positive survival times")
    groups = {g: genomics.values.loc[samples, genes].to_numpy(float) for g, genes in gene_sets.items()}
    gene_cols = list(dict.fromkeys(c for genes in gene_sets.values() for c in genes))
    mean_tiles = np.stack([b.mean(0) for b in bags])
    x = np.concatenate([genomics.values.loc[samples, gene_cols].to_numpy(float), mean_tiles], axis=1)

    tile_names = [f"f{i}" for i in range(bags[0].shape[1])] if from_files else list(ColorTextureEncoder.names)
    names = gene_cols + [f"tile_mean.{n}" for n in tile_names]
    split = np.array([p["split"] for p in patients])
    return SurvivalData(time, event, x, names, split, bags, groups, skipped,
                        content_hash=manifest.content_hash(), manifest=manifest)
