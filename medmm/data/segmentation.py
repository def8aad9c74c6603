"""Volume cohorts for segmentation: cases from the manifest, one preprocessing path from
file to model input (training, evaluation and ``infer`` all use it), MONAI patch
sampling, and the alternating CT / MR batch stream of MulModSeg.

A case is a study with a ``ct`` or ``mr`` image and its label map: a ``<modality>_seg``
row (the demo cohorts) or a ``label`` row (an ingested export such as AMOS or BTCV). The
class names come from ``labels.json`` in the cohort folder or, failing that, from the
``labels`` of the Medical Segmentation Decathlon style ``dataset.json`` such exports ship."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from medmm.cohort.manifest import Manifest
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.volume import read_dicom_series, read_nifti


@dataclass
class VolumeCase:
    case_id: str
    modality: str
    split: str
    image: np.ndarray  # [1, i, j, k] float32, normalised
    label: np.ndarray  # [1, i, j, k] int64
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str = ""


@dataclass
class VolumeCohort:
    root: Path
    classes: list[str]
    modality_classes: dict[str, list[str]]
    cases: list[VolumeCase]
    skipped: list[dict]
    manifest: object

    def select(self, split: str, modality: str | None = None) -> list[VolumeCase]:
        return [c for c in self.cases if c.split == split and (modality is None or c.modality == modality)]

    def class_indices(self, modality: str) -> list[int]:
        """Foreground classes that this modality's label maps annotate."""
        return [self.classes.index(n) for n in self.modality_classes.get(modality, self.classes[1:])]


def normalise_intensity(array: np.ndarray, modality: str, data_cfg) -> np.ndarray:
    """CT: the HU window -> [0, 1] (clipped); MR: the given percentiles -> [0, 1] (clipped).
    An MR volume without contrast between those percentiles becomes all zeros (MONAI would
    divide by zero)."""
    from monai.transforms import ScaleIntensityRange

    array = np.asarray(array, dtype=np.float32)
    if modality == "ct":
        lo, hi = data_cfg.ct_window
    elif modality == "mr":
        lo, hi = (float(v) for v in np.percentile(array, data_cfg.mr_percentiles))
        if hi <= lo:
            return np.zeros_like(array)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    t = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(t(array), dtype=np.float32)


def read_input_volume(path: str | Path):
    """A NIfTI file or a DICOM series folder -> :class:`medmm.io.volume.Volume` (RAS+)."""

    path = Path(path)
    return read_dicom_series(path) if path.is_dir() else read_nifti(path)


def model_input(volume, modality: str, data_cfg) -> np.ndarray:
    """Volume -> ``[1, i, j, k]`` float32 network input."""
    return normalise_intensity(volume.array, modality, data_cfg)[None]


def _read_label(path: Path, volume) -> np.ndarray:
    lab = read_nifti(path)
    if lab.shape != volume.shape:
        raise InconsistentDataError(path, f"label shape {lab.shape} differs from the image's {volume.shape}")
    if not np.allclose(lab.affine, volume.affine, atol=1e-3):
        raise InconsistentDataError(path, "label affine differs from the image's: they do not overlay")
    values = lab.array
    if np.any(values < 0) or np.any(values != np.round(values)):
        raise InconsistentDataError(path, "label map holds negative or non-integer values")
    return values.astype(np.int64)[None]


LABEL_MODALITY = "label"  # a cohort spec's label-map rows, shared by every image modality of the study


def _read_json(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(path, f"does not parse as JSON ({type(exc).__name__})") from None
    if not isinstance(info, dict):
        raise InconsistentDataError(path, "must be a JSON object")
    return info


def _decathlon_classes(path: Path, labels: object) -> list[str]:
    """The ``labels`` of a dataset.json as a class list (index = label value): ``{"0":
    "background", "1": "spleen"}`` (Decathlon, AMOS, BTCV) or ``{"background": 0, ...}``
    (nnU-Net v2)."""
    if not isinstance(labels, dict) or not labels:
        raise InconsistentDataError(path, "has no 'labels' mapping of label values to class names")
    try:
        if all(str(k).strip().isdigit() for k in labels):
            by_value = {int(k): str(v) for k, v in labels.items()}
        else:
            by_value = {int(v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise InconsistentDataError(path, "'labels' must map label values to class names") from None
    if sorted(by_value) != list(range(len(by_value))):
        raise InconsistentDataError(path, f"label values {sorted(by_value)} are not 0, 1, 2, ... without gaps")
    return [by_value[v] for v in range(len(by_value))]


def cohort_classes(root: str | Path) -> tuple[list[str], dict[str, list[str]]]:
    """(class names by label value, per modality the classes its label maps annotate) of a
    volume cohort: ``labels.json`` (``classes``, ``modality_classes``) or the ``labels`` of
    ``dataset.json``, every modality annotating every class."""
    root = Path(root)
    path = root / "labels.json"
    if path.is_file():
        info = _read_json(path)
        classes = info.get("classes")
        if not isinstance(classes, list) or len(classes) < 2:
            raise InconsistentDataError(path, "'classes' must list the background and at least one class")
        return [str(c) for c in classes], dict(info.get("modality_classes", {}))
    decathlon = root / "dataset.json"
    if decathlon.is_file():
        classes = _decathlon_classes(decathlon, _read_json(decathlon).get("labels"))
        if len(classes) < 2:
            raise InconsistentDataError(decathlon, "'labels' must name the background and at least one class")
        return classes, {}
    raise MedmmInputError(path, "volume cohort lacks labels.json or dataset.json (the class names)")


def load_volume_cohort(data_cfg, strict: bool = False) -> VolumeCohort:
    """Read every case of the configured modalities; a bad file is skipped and counted
    (``strict`` raises instead)."""

    root = Path(data_cfg.root)
    manifest = Manifest.load(root)
    classes, modality_classes = cohort_classes(root)
    table = manifest.table
    shared_labels = table[table["modality"] == LABEL_MODALITY].set_index("study_id")["path"].to_dict()
    cases, skipped = [], []
    for modality in data_cfg.modalities:
        rows = table[table["modality"] == modality].sort_values("study_id")
        seg = {**shared_labels, **table[table["modality"] == f"{modality}_seg"].set_index("study_id")["path"].to_dict()}
        per_split: dict[str, int] = {}
        for _, row in rows.iterrows():
            n = per_split.get(row["split"], 0)
            if data_cfg.limit_cases is not None and n >= data_cfg.limit_cases:
                continue
            try:
                if row["study_id"] not in seg:  # neither trained on nor scored
                    raise InconsistentDataError(row["path"], "the image has no label map in the manifest")
                volume = read_input_volume(manifest.resolve(row["path"]))
                label = _read_label(manifest.resolve(seg[row["study_id"]]), volume)
                if label.max() >= len(classes):
                    raise InconsistentDataError(seg[row["study_id"]], f"label value {label.max()} has no class name")
            except MedmmInputError as exc:
                if strict:
                    raise
                skipped.append({"study_id": row["study_id"], "path": row["path"], "problem": exc.problem})
                print(f"WARNING: skipped {row['path']}: {exc.problem}", file=sys.stderr)
                continue
            per_split[row["split"]] = n + 1
            cases.append(VolumeCase(row["study_id"], modality, row["split"], model_input(volume, modality, data_cfg),
                                    label, volume.affine, volume.spacing_mm, source=row["path"]))
    return VolumeCohort(root, classes, modality_classes, cases, skipped, manifest)


def patch_dataset(cases: list[VolumeCase], data_cfg):
    """MONAI dataset of random training patches: pad to the ROI, crop around foreground
    (``pos_fraction``) or anywhere, then random intensity scale / shift."""
    from monai.data import Dataset
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    roi = tuple(int(r) for r in data_cfg.roi)
    pos = float(data_cfg.pos_fraction)
    transforms = [
        SpatialPadd(keys=["image", "label"], spatial_size=roi),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=roi, pos=pos,
                               neg=1.0 - pos, num_samples=data_cfg.samples_per_volume, allow_smaller=False),
    ]
    if data_cfg.augment:
        transforms += [RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                       RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5)]
    items = [{"image": c.image, "label": c.label} for c in cases]
    return Dataset(items, transform=Compose(transforms))


def patch_loader(cases: list[VolumeCase], data_cfg, seed: int):
    import torch
    from monai.data import DataLoader

    ds = patch_dataset(cases, data_cfg)
    ds.transform.set_random_state(seed=seed)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=data_cfg.batch_size, shuffle=True, num_workers=0, generator=g)


def alternating_batches(loaders: dict[str, object]) -> Iterator[tuple[str, dict]]:
    """MulModSeg's alternating training stream: one batch of each modality in turn
    (CT, MR, CT, MR ...), each loader restarted when it runs out (so the shorter one
    cycles). A modality without a loader is left out."""
    order = [m for m, loader in loaders.items() if loader is not None]
    if not order:
        raise ValueError("no training data in any modality")
    iters = {m: iter(loaders[m]) for m in order}
    while True:
        for m in order:
            try:
                batch = next(iters[m])
            except StopIteration:
                iters[m] = iter(loaders[m])
                batch = next(iters[m])
            yield m, batch
