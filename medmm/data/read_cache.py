"""Read volumes and ECG records once, serve later epochs from a cache.

Built on MONAI's datasets rather than a cache of our own: :class:`ReadRecord` is a
deterministic MONAI transform (medmm reader -> tensors), so MONAI caches its output:

* ``cache_dir`` given: ``monai.data.PersistentDataset``, one file per item on disk,
  reused by later runs, loaded with ``torch.load(weights_only=True)`` (tensors, strings
  and numbers only).
* no ``cache_dir``: ``monai.data.CacheDataset``, in memory for this process.

An item is ``{"path": file or folder, "kind": "dicom_series" | "nifti" | "ecg"}``.
:func:`cached_reads` adds ``"stamp"`` (size and modification time of the file, a WFDB
header's signal file included, or of every file in a folder), which MONAI's cache key hashes, so an edited file is read again
rather than served stale. A bad file does not stop the epoch: its item carries
``"problem"`` (medmm's message) and no tensors, and is cached like that so it is not
retried every epoch; callers skip and count those.

Output per item: volumes ``"image"`` float32 ``[1, I, J, K]`` and ``"affine"`` float64
``[4, 4]`` (RAS+, medmm.io.volume's convention); ECG ``"signal"`` float32
``[leads, time]`` in mV and ``"fs"``; always ``"problem"`` (``""`` when fine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from monai.transforms import (
    Transform,  # this module is MONAI-based: import cost accepted
)

from medmm.cohort.manifest import hashed_files
from medmm.data.decoded_cohort import files_stamp
from medmm.io.ecg import read_ecg
from medmm.io.errors import MedmmInputError
from medmm.io.volume import read_dicom_series, read_nifti

__all__ = ["KINDS", "ReadRecord", "cached_reads", "file_stamp"]

KINDS = ("dicom_series", "nifti", "ecg")


def file_stamp(path: str | Path) -> str:
    """Size and modification time of a file (a WFDB header with its signal file), or of
    every file directly in a folder."""
    p = Path(path)
    if p.is_dir():
        entries = sorted(f for f in p.iterdir() if f.is_file())
    else:  # a WFDB record may be named without extension: stamp its header and data too
        entries = list(hashed_files(p)) if p.is_file() else sorted(p.parent.glob(p.name + ".*"))
    return files_stamp(entries) or "missing"


def _read(item: dict) -> dict:
    import torch

    kind, path = item["kind"], item["path"]
    if kind in ("dicom_series", "nifti"):
        vol = read_dicom_series(path) if kind == "dicom_series" else read_nifti(path)
        return {"image": torch.from_numpy(vol.array[None]), "affine": torch.from_numpy(vol.affine)}
    if kind == "ecg":
        rec = read_ecg(path)
        return {"signal": torch.from_numpy(np.array(rec.signal)), "fs": float(rec.fs)}
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


class ReadRecord(Transform):
    """A deterministic MONAI transform (hence cached by MONAI's datasets): an item dict
    -> the same dict plus the tensors of the record it names (module docstring)."""

    def __call__(self, item: dict) -> dict:
        try:
            return {**item, **_read(item), "problem": ""}
        except MedmmInputError as exc:
            return {**item, "problem": str(exc)}


def cached_reads(items: Iterable[dict], cache_dir: str | Path | None = None) -> Any:
    """A MONAI dataset over ``items`` (module docstring) whose reads are cached."""
    from monai.data import CacheDataset, PersistentDataset

    data = []
    for item in items:
        if item.get("kind") not in KINDS:
            raise ValueError(f"item {item!r}: 'kind' must be one of {KINDS}")
        path = os.fspath(item["path"])
        data.append({**item, "path": path, "stamp": file_stamp(path)})
    transform = ReadRecord()
    if cache_dir is None:
        return CacheDataset(data=data, transform=transform, num_workers=0, progress=False)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return PersistentDataset(data=data, transform=transform, cache_dir=str(cache_dir))
