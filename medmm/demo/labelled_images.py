"""Labelled image sets of four imaging modalities, laid out as classification datasets ship:

    <out>/<modality>/labels.csv       path (relative to the modality folder), patient, one column
                                      per class: 1 present, 0 absent, -1 uncertain, blank unknown
    <out>/<modality>/images/*.png     one grayscale (X-ray, CT, MR) or RGB (pathology) image each

- ``xray``: chest radiograph phantoms (:mod:`medmm.demo.xray_phantom`), each of the eight
  findings planted independently; one image per patient.
- ``ct`` / ``mr``: axial slices of the abdominal phantoms (:mod:`medmm.demo.volumes`), every
  other slice of each volume; an organ (liver, kidney, spleen, vertebra) is present where it
  covers at least ``ORGAN_PIXELS`` pixels of the slice, uncertain where it shows only an edge
  (fewer pixels). The phantom is the patient: its slices stay in one split.
- ``pathology``: 64-pixel crops of the real H&E image (tiatoolbox's target image), rotated,
  flipped and stain-jittered; a crop among the densest third of nuclear (haematoxylin) area is
  dense cellular tissue, among the sparsest third loose stroma, and glass with at most a thin
  tissue edge is background. The image is cut into a 4 x 4 grid of regions and a region is
  the patient, so train and test tiles come from different parts of the slide.

CT and MR slices are written as 16-bit PNG (CT as HU + 1024), the way a slice exported from a
PACS viewer arrives. Nothing identifies a person: patient ids are synthetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medmm.demo.pathology import load_he_image
from medmm.demo.volumes import make_phantom
from medmm.demo.xray_phantom import render_chest_xray
from medmm.io.findings import FINDINGS
from medmm.io.wsi import ColorTextureEncoder

MODALITIES = ("xray", "ct", "mr", "pathology")
ORGANS = {1: "liver", 2: "kidney", 3: "spleen", 4: "vertebra"}
ORGAN_PIXELS = 10  # at 48 x 48 pixels of 6 mm: 3.6 cm^2
TISSUES = ("dense cellular tissue", "loose stroma", "background")
CAPTION_STYLE = {"xray": "chest_xray", "ct": "ct", "mr": "mr", "pathology": "pathology"}
TILE = 64
REGIONS = 4  # the H&E image is cut into REGIONS x REGIONS patient regions


def _save_png(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return f"images/{path.name}"


def _xray_set(folder: Path, n: int, rng: np.random.Generator, size: int) -> list[dict]:
    rows = []
    for i in range(n):
        findings = {f: bool(rng.random() < 0.3) for f in FINDINGS}
        image = render_chest_xray(findings, rng, size=size)
        path = _save_png(np.round(image * 65535).astype(np.uint16), folder / "images" / f"cxr{i:05d}.png")
        rows.append({"path": path, "patient": f"CXR-{i:05d}", **{f: int(v) for f, v in findings.items()}})
    return rows


def _slice_set(folder: Path, modality: str, n_volumes: int, rng: np.random.Generator, size: int) -> list[dict]:
    rows = []
    for v in range(n_volumes):
        case = make_phantom(modality, rng, size=size)
        stored = case.image + 1024.0 if modality == "ct" else case.image
        stored = np.clip(np.rint(stored), 0, 65535).astype(np.uint16)
        for k in range(0, size, 2):
            area = {name: int((case.label[:, :, k] == value).sum()) for value, name in ORGANS.items()}
            labels = {name: 1 if a >= ORGAN_PIXELS else -1 if a > 0 else 0 for name, a in area.items()}
            # Transposed so that the image's rows run along y (the phantom's arrays are x, y, z).
            path = _save_png(np.ascontiguousarray(stored[:, :, k].T),
                             folder / "images" / f"{modality}{v:04d}_z{k:02d}.png")
            rows.append({"path": path, "patient": f"{modality.upper()}-{v:04d}", **labels})
    return rows


def _tile(he: np.ndarray, y: int, x: int, rng: np.random.Generator) -> np.ndarray:
    tile = np.rot90(he[y:y + TILE, x:x + TILE], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    stain = rng.uniform(0.92, 1.08, 3)  # per-channel stain / scanner variation
    return np.clip(tile.astype(np.float32) * stain, 0, 255).astype(np.uint8)


def _pathology_set(folder: Path, n: int, rng: np.random.Generator, he: np.ndarray) -> list[dict]:
    from skimage.color import rgb2hed

    nuclei = rgb2hed(he)[..., 0] > ColorTextureEncoder.h_threshold
    region = he.shape[0] // REGIONS
    corners = [(int(rng.integers(0, he.shape[0] - TILE)), int(rng.integers(0, he.shape[1] - TILE)))
               for _ in range(20 * n)]
    density = np.array([nuclei[y:y + TILE, x:x + TILE].mean() for y, x in corners])
    low, high = np.quantile(density, [1 / 3, 2 / 3])
    dense = [c for c, d in zip(corners, density) if d >= high]
    sparse = [c for c, d in zip(corners, density) if d <= low]
    rows = []
    for i in range(n):
        tissue = TISSUES[i % len(TISSUES)]
        if tissue == "background":
            y, x = sparse[int(rng.integers(len(sparse)))]
            tile = np.clip(rng.normal(236, 4, (TILE, TILE, 3)), 0, 255).astype(np.uint8)
            edge = int(rng.integers(0, TILE // 6))  # a thin strip of tissue at most
            tile[:edge] = _tile(he, y, x, rng)[:edge]
        else:
            y, x = (dense if tissue == TISSUES[0] else sparse)[int(rng.integers(len(dense if tissue == TISSUES[0]
                                                                                 else sparse)))]
            tile = _tile(he, y, x, rng)
        path = _save_png(tile, folder / "images" / f"tile{i:05d}.png")
        patient = f"REGION-{min(y // region, REGIONS - 1)}{min(x // region, REGIONS - 1)}"
        rows.append({"path": path, "patient": patient, **{t: int(t == tissue) for t in TISSUES}})
    return rows


def write_labelled_image_sets(out: str | Path, *, n_xray: int = 1200, n_volumes: int = 30, n_tiles: int = 900,
                              seed: int = 0, xray_size: int = 64, volume_size: int = 48,
                              he_source: str | Path | None = None,
                              modalities: tuple[str, ...] = MODALITIES) -> dict[str, Path]:
    """Write the labelled sets of ``modalities`` under ``out``; returns each one's labels.csv."""
    out = Path(out)
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; known: {', '.join(MODALITIES)}")
    written = {}
    for m, modality in enumerate(modalities):
        rng = np.random.default_rng([seed, MODALITIES.index(modality)])
        folder = out / modality
        if modality == "xray":
            rows = _xray_set(folder, n_xray, rng, xray_size)
        elif modality in ("ct", "mr"):
            rows = _slice_set(folder, modality, n_volumes, rng, volume_size)
        else:
            rows = _pathology_set(folder, n_tiles, rng, load_he_image(he_source))
        written[modality] = folder / "labels.csv"
        pd.DataFrame(rows).to_csv(written[modality], index=False)
    return written
