"""Tile-feature extraction (``python -m medmm.pipelines.tile_features``): every slide of a
pathology cohort tiled at one magnification, its tissue tiles embedded by one encoder, one
feature bag per slide on disk.

Output folder (the survival workflow's ``data.feature_bags``):

    bags/<slide sha256[:24]>.safetensors   features [tiles, dim] float32, coords [tiles, 2]
                                           level-0 (x, y); metadata: encoder, weights, dim,
                                           magnification, tile size, slide sha256
    bags.csv                               study_id, slide_sha256, status (ok | unreadable),
                                           bag, tiles, problem
    extraction.json                        the encoder and tiling every bag shares

Bags are named by the slide's content hash, never by its file name (slide names of real
cohorts embed case barcodes). A run resumes: a slide whose bag exists (bags are written to a
temporary name and renamed, so an existing bag is complete) is skipped; an unreadable slide
is reported in one line, listed in ``bags.csv`` and tried again by the next run. A folder
holding bags of another encoder or tiling is refused, never mixed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmm.cohort.manifest import file_sha256
from medmm.config.core import ConfigError
from medmm.console import progress
from medmm.data.survival import (
    BAG_FOLDER,
    BAG_INDEX,
    BAG_INDEX_COLUMNS,
    EXTRACTION,
    FEATURE_BAG_SUFFIXES,
    feature_bag_header,
    write_feature_bag,
)
from medmm.io.errors import InconsistentDataError, MedmmInputError
from medmm.io.wsi import read_wsi, tile_order
from medmm.tracking.store import default_tracking_uri
from medmm.workflows.preflight import CohortNeeds, check_cohort, check_output_folder, check_pretrained_source
from medmm.workflows.tile_features.config import TileFeaturesConfig
from medmm.workflows.tile_features.encoders import TileEncoder, build_tile_encoder

BAG_NAME_CHARS = 24  # of the slide's SHA-256: 96 bits, as the survival workflow's bag cache


@dataclass
class TileFeaturesOutcome:
    output_dir: Path
    encoder: str
    dim: int
    computed: int
    reused: int
    unreadable: list[str] = field(default_factory=list)  # bag names (slide hash prefixes) of unreadable slides

    def __str__(self) -> str:  # what the command prints
        lines = [f"tile features ({self.encoder}, {self.dim} per tile): {self.computed} slide(s) embedded, "
                 f"{self.reused} already done, {len(self.unreadable)} unreadable",
                 f"bags: {self.output_dir / BAG_FOLDER}, index: {self.output_dir / BAG_INDEX} "
                 f"(survival: data.feature_bags={self.output_dir})"]
        return "\n".join(lines)


def extraction_settings(cfg: TileFeaturesConfig, encoder: TileEncoder) -> dict:
    """What every bag of a folder shares: bags differing in any of these cannot share a model."""
    return {"encoder": encoder.name, "weights": encoder.weights, "dim": encoder.dim,
            "magnification": cfg.data.magnification, "tile_size": cfg.data.tile_size,
            "min_tissue": cfg.data.min_tissue, "max_tiles": cfg.data.max_tiles,
            "seed": cfg.seed if cfg.data.max_tiles is not None else None}


def claim_folder(output_dir: Path, settings: dict) -> None:
    """Write ``extraction.json``, or check that the folder's bags were made with ``settings``."""
    path = output_dir / EXTRACTION
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MedmmInputError(path, f"unreadable extraction settings ({type(exc).__name__})") from None
        differ = sorted(k for k in settings if existing.get(k) != settings[k])
        if differ:
            raise ConfigError(f"output_dir {output_dir} holds bags of other settings ({', '.join(differ)} differ): "
                              "bags of one folder must share one encoder and tiling; choose another output_dir")
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(settings, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def embed_slide(path: Path, encoder: TileEncoder, cfg: TileFeaturesConfig) -> tuple[np.ndarray, np.ndarray]:
    """(features [tiles, dim], level-0 coords [tiles, 2]) of one slide's tissue tiles."""
    data = cfg.data
    with read_wsi(path) as slide:
        grid = slide.tiles(magnification=data.magnification, tile_size=data.tile_size, min_tissue=data.min_tissue)
        if len(grid.coords) == 0:
            raise InconsistentDataError(path, f"no tissue tile (of {grid.n_background} grid tiles) at "
                                              f"{grid.mpp:.2f} um/px")
        order = tile_order(len(grid.coords), data.max_tiles, cfg.seed)
        batches = []
        for start in range(0, len(order), cfg.encoder.batch_size):
            tiles = np.stack([slide.read_tile(grid, int(i)) for i in order[start:start + cfg.encoder.batch_size]])
            batches.append(encoder(tiles, grid.mpp))
    features = np.concatenate(batches)
    if not np.isfinite(features).all():
        raise InconsistentDataError(path, f"the {encoder.name} encoder gave non-finite features")
    return features, grid.coords[order]


def done_bag_tiles(path: Path, slide_sha: str, dim: int) -> int | None:
    """The tiles of a finished bag of this slide, None where it must be (re)computed: a bag
    under its final name was renamed there whole; it must also be this slide's."""
    if not path.is_file():
        return None
    try:
        metadata, features, coords = feature_bag_header(path)
    except MedmmInputError:
        return None
    fits = metadata.get("slide_sha256") == slide_sha and len(features) == 2 and features[1] == dim
    return features[0] if fits and coords == (features[0], 2) else None


def _pseudonymous(problem: str, path: Path, name: str) -> str:
    """A reader's message with the slide's path and file name replaced by its bag name:
    messages of libraries (OpenSlide) quote the path, and slide names embed case barcodes."""
    for text in (str(path.resolve()), str(path), path.name, path.stem):
        problem = problem.replace(text, name)
    return " ".join(problem.split())


def run(cfg: TileFeaturesConfig) -> TileFeaturesOutcome:
    facts = check_cohort(CohortNeeds(cfg.data.root, modalities=("wsi",), study_modality=None,
                                     why="tile-feature extraction"))
    check_output_folder(cfg.output_dir)
    if cfg.encoder.pretrained is not None:
        check_pretrained_source(cfg.encoder.pretrained, cfg.encoder.tracking_uri or default_tracking_uri(),
                                "encoder.pretrained")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = build_tile_encoder(cfg.encoder, cfg.seed)
    settings = extraction_settings(cfg, encoder)
    output_dir = Path(cfg.output_dir)
    claim_folder(output_dir, settings)

    manifest = facts.manifest
    slides = manifest.table[manifest.table["modality"] == "wsi"].sort_values(["study_id", "path"])
    rows, computed, reused, unreadable = [], 0, 0, []
    for row in progress(list(slides.itertuples()), "embed slides"):
        path = manifest.resolve(row.path)
        sha = str(row.sha256) if isinstance(row.sha256, str) and row.sha256 else None
        try:
            sha = sha or file_sha256(path)
            name = f"{sha[:BAG_NAME_CHARS]}.safetensors"
            bag = output_dir / BAG_FOLDER / name
            done = done_bag_tiles(bag, sha, encoder.dim)
            if done is not None:
                reused += 1
                rows.append((row.study_id, sha, "ok", f"{BAG_FOLDER}/{name}", done, ""))
                continue
            if path.suffix.lower() in FEATURE_BAG_SUFFIXES:
                raise InconsistentDataError(path, "is a feature bag, not a slide")
            features, coords = embed_slide(path, encoder, cfg)
        except (MedmmInputError, FileNotFoundError) as exc:
            label = name if sha else f"(no hash, {Path(row.path).suffix or 'no suffix'})"
            problem = _pseudonymous(exc.problem if isinstance(exc, MedmmInputError) else "file not found", path, label)
            print(f"WARNING: slide {label} unreadable, skipped: {problem}", file=sys.stderr)
            unreadable.append(label)
            rows.append((row.study_id, sha or "", "unreadable", "", 0, problem))
            continue
        metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()}
        write_feature_bag(bag, features, coords, {**metadata, "slide_sha256": sha,
                                                  "mpp": repr(10.0 / cfg.data.magnification)})
        computed += 1
        rows.append((row.study_id, sha, "ok", f"{BAG_FOLDER}/{name}", len(features), ""))

    index = pd.DataFrame(rows, columns=list(BAG_INDEX_COLUMNS))
    _write_atomic(output_dir / BAG_INDEX, index.to_csv(index=False))
    if not (index["status"] == "ok").any():
        raise MedmmInputError(cfg.data.root, f"no slide of the cohort could be embedded ({len(index)} unreadable)")
    return TileFeaturesOutcome(output_dir, encoder.name, encoder.dim, computed, reused, unreadable)
