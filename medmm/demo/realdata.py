"""Real public data that installs offline, for tests and benchmarks.

The head CT of Debian's ``invesalius-examples`` package (GPL-2 data): ``make
invesalius-ct`` fetches the package with ``apt-get download`` at set-up (never at run
time) and keeps its ``Cranium.inv3`` in ``data/cache``. An ``.inv3`` project is a tar.gz
holding ``main.plist`` (shape, dtype, spacing in mm, modality) and ``matrix.dat`` (the
voxels, raw, C order ``[slice, row, column]``), plus masks and surfaces medmm ignores.
"""

from __future__ import annotations

import os
import plistlib
import tarfile
from pathlib import Path

import numpy as np

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.volume import Volume

__all__ = ["INVESALIUS_ENV", "invesalius_ct_path", "load_invesalius_ct", "load_invesalius_masks"]

INVESALIUS_ENV = "MEDMM_INVESALIUS_CT"
_DEFAULT = Path("data/cache/Cranium.inv3")
_DTYPES = {"int16": "<i2", "uint16": "<u2", "uint8": "u1", "float32": "<f4"}


def invesalius_ct_path(repo_root: str | Path | None = None) -> Path:
    """Where the project file is expected: ``$MEDMM_INVESALIUS_CT``, else
    ``<repo_root>/data/cache/Cranium.inv3`` (repo_root defaults to the working folder)."""
    if os.environ.get(INVESALIUS_ENV):
        return Path(os.environ[INVESALIUS_ENV])
    return Path(repo_root or ".") / _DEFAULT


def _member(tar: tarfile.TarFile, name: str, where: Path) -> bytes:
    for info in tar.getmembers():
        if info.isfile() and Path(info.name).name == name:
            handle = tar.extractfile(info)
            if handle is not None:
                return handle.read()
    raise CorruptFileError(where, f"InVesalius project holds no {name}")


def load_invesalius_ct(path: str | Path) -> Volume:
    """The project's CT as a :class:`~medmm.io.volume.Volume` (values in HU).

    ``array[i, j, k] = matrix[k, j, i]`` (column, row, slice, as medmm's DICOM reader
    orders a series). The file stores spacing but no position or orientation, so the
    geometry is that of a plain axial DICOM series (ImageOrientationPatient
    ``[1,0,0, 0,1,0]``, slices along +S, first voxel at the origin): in RAS+,
    ``affine = diag(-spacing_x, -spacing_y, spacing_z, 1)``.
    """
    where = Path(path)
    if not where.is_file():
        raise MedmmInputError(where, "no such file (run `make invesalius-ct`)")
    try:
        with tarfile.open(where, "r:gz") as tar:
            main = plistlib.loads(_member(tar, "main.plist", where))
            matrix = main.get("matrix", {})
            raw = _member(tar, str(matrix.get("filename", "matrix.dat")), where)
    except (tarfile.TarError, OSError, EOFError, plistlib.InvalidFileException, ValueError) as exc:
        raise CorruptFileError(where, f"not a readable InVesalius project ({type(exc).__name__}: {exc})") from exc
    try:
        shape = tuple(int(s) for s in matrix["shape"])
        dtype = np.dtype(_DTYPES[str(matrix["dtype"])])
        spacing = tuple(float(s) for s in main["spacing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(where, f"main.plist lacks a valid matrix shape / dtype / spacing ({exc})") from exc
    if len(shape) != 3 or len(spacing) != 3 or min(spacing) <= 0:
        raise InconsistentDataError(where, f"expected a 3-D matrix and 3 positive spacings, got {shape}, {spacing}")
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        raise InconsistentDataError(where, f"matrix.dat holds {len(raw)} bytes, shape {shape} of {dtype} needs {need}")
    voxels = np.frombuffer(raw, dtype=dtype).reshape(shape)
    array = np.ascontiguousarray(voxels.transpose(2, 1, 0), dtype=np.float32)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    metadata = {"source": "invesalius", "modality": str(main.get("modality", "")), "n_slices": shape[0]}
    return Volume(array=array, affine=affine, path=str(where), metadata=metadata)


def load_invesalius_masks(path: str | Path) -> np.ndarray:
    """The project's two threshold masks as one label map on the CT's grid (``[i, j, k]``
    like :func:`load_invesalius_ct`): 1 bone (the higher threshold), 2 soft tissue, 0 else."""
    where = Path(path)
    if not where.is_file():
        raise MedmmInputError(where, "no such file (run `make invesalius-ct`)")
    try:
        with tarfile.open(where, "r:gz") as tar:
            main = plistlib.loads(_member(tar, "main.plist", where))
            masks = []
            for plist_name in main["masks"].values():
                info = plistlib.loads(_member(tar, plist_name, where))
                raw = np.frombuffer(_member(tar, info["mask_file"], where), dtype=np.uint8)
                # InVesalius masks carry one extra leading slice / row / column of flags.
                masks.append((int(info["threshold_range"][0]), raw.reshape(tuple(info["mask_shape"]))[1:, 1:, 1:] > 127))
    except (tarfile.TarError, OSError, EOFError, KeyError, TypeError, ValueError, plistlib.InvalidFileException) as exc:
        raise CorruptFileError(where, f"no readable InVesalius masks ({type(exc).__name__}: {exc})") from exc
    if len(masks) != 2:
        raise CorruptFileError(where, f"expected 2 masks (bone, soft tissue), found {len(masks)}")
    (_, soft), (_, bone) = sorted(masks, key=lambda m: m[0])
    labels = np.zeros(soft.shape, dtype=np.uint8)
    labels[soft] = 2
    labels[bone] = 1
    return np.ascontiguousarray(labels.transpose(2, 1, 0))
