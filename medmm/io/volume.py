"""3-D volumes: assemble a DICOM series, read a NIfTI file.

This module knows nothing of torch.

Geometry convention (the rule every medmm volume keeps)
--------------------------------------------------------
A :class:`Volume` holds ``array[i, j, k]`` and a 4x4 ``affine`` mapping the voxel
index ``(i, j, k, 1)`` to a world position in millimetres in **RAS+** (+x = patient
Right, +y = Anterior, +z = Superior), the NIfTI / nibabel / MONAI convention. A NIfTI file's affine is therefore used as it is.

DICOM describes positions in **LPS+** (+x = patient Left, +y = Posterior,
+z = Superior). A DICOM affine is converted with ``diag(-1, -1, 1, 1) @ A_lps``
(and back the same way: the matrix is its own inverse).

Voxel order of a DICOM series: ``i`` is the column index (it moves along the row
direction cosine, the first triplet of ImageOrientationPatient), ``j`` is the row
index (along the column direction cosine, the second triplet) and ``k`` the slice,
sorted by the slice position projected on the normal ``n = row_cosine x
column_cosine`` (ascending), never by file name or InstanceNumber. Hence, with
PixelSpacing = ``[row spacing, column spacing]`` (DICOM order: between rows first)::

    A_lps[:3, 0] = row_cosine    * column spacing      (PixelSpacing[1])
    A_lps[:3, 1] = column_cosine * row spacing         (PixelSpacing[0])
    A_lps[:3, 2] = (IPP_last - IPP_first) / (n_slices - 1)   (the measured step)
    A_lps[:3, 3] = IPP_first

and ``array[:, :, k] = pixels_of_slice_k.T`` (a DICOM slice's pixel array is
``[row, column] = [j, i]``). Pixel values have the Modality LUT applied (HU for CT)
through :func:`medmm.io.dicom.read_dicom`.
"""

from __future__ import annotations

import io
import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
import numpy as np
from isal import igzip
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from medmm.io.dicom import (
    check_pixel_length,
    decode_pixels,
    image_from_dataset,
    linear_rescale,
    native_pixel_layout,
    parse_dicom,
)
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.guard import check_declared_size, reader_boundary

__all__ = [
    "LPS_TO_RAS",
    "Volume",
    "read_dicom_series",
    "read_nifti",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Converts an LPS affine to RAS (and back): ``A_ras = LPS_TO_RAS @ A_lps``."""

_ORIENTATION_ATOL = 1e-4  # on direction cosines
_SPACING_RTOL = 0.01  # uneven slice spacing tolerated up to 1 % of the median step
_DUPLICATE_MM = 1e-3  # two slices closer than this along the normal are the same
_GZIP_CHUNK = 8 * 2**20  # bytes inflated at a time from a .nii.gz stream


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image and its geometry.

    Attributes:
        array: float32 ``[i, j, k]``: voxel index along the affine's columns 0, 1, 2.
        affine: float64 4x4, voxel index -> world mm in RAS+ (module docstring).
        spacing_mm: ``(|affine[:3, 0]|, |affine[:3, 1]|, |affine[:3, 2]|)``, derived
            from the affine (not an init argument).
        path: the file or folder read (``None`` for an in-memory volume).
        metadata: technical fields only (``source``, ``modality``, ``n_slices``, ...);
            never names, IDs, UIDs or dates.
    """

    array: np.ndarray
    affine: np.ndarray
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    spacing_mm: tuple[float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array, dtype=np.float32)
        aff = np.array(self.affine, dtype=np.float64)
        if arr.ndim != 3:
            raise ValueError(f"Volume.array must be 3-D, got shape {arr.shape}")
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise ValueError(f"Volume.affine must be a finite 4x4 matrix, got shape {aff.shape}")
        # in Python floats: numpy's calls on 16 numbers cost more than a small volume's read
        (a, b, c, _), (d, e, f, _), (g, h, i, _), last = aff.tolist()
        if any(abs(x - y) > 1e-8 + 1e-5 * abs(y) for x, y in zip(last, (0.0, 0.0, 0.0, 1.0))):  # np.allclose
            raise ValueError(f"Volume.affine's last row must be [0, 0, 0, 1], got {aff[3]}")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "affine", aff)
        object.__setattr__(self, "path", None if self.path is None else str(self.path))
        object.__setattr__(self, "metadata", dict(self.metadata))
        # the columns' lengths, summed in numpy.linalg.norm's order: the same floats
        spacing = (math.sqrt(a * a + d * d + g * g), math.sqrt(b * b + e * e + h * h), math.sqrt(c * c + f * f + i * i))
        object.__setattr__(self, "spacing_mm", spacing)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------- DICOM read


_SPACING_RANGE_MM = (1e-6, 1e6)  # a nanometre to a kilometre: anything else is a damaged header


def _check_affine(where: str, affine: np.ndarray) -> None:
    """An affine a volume can carry: finite, invertible (determinant not negligible
    against the product of the column lengths, i.e. the axes are not nearly parallel),
    and voxel sizes in a physical range (a flipped byte can make a spacing 1e-28 mm,
    which is invertible on paper and meaningless)."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InconsistentDataError(where, "affine is missing or not finite")
    # in Python floats: numpy's calls on a 3x3 matrix cost more than a small volume's read
    (a, b, c), (d, e, f), (g, h, i) = affine[:3, :3].tolist()
    spacing = [math.hypot(a, d, g), math.hypot(b, e, h), math.hypot(c, f, i)]
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    scale = spacing[0] * spacing[1] * spacing[2]
    if scale == 0.0 or not math.isfinite(det) or abs(det) < 1e-6 * scale:
        raise InconsistentDataError(where, f"affine is not invertible (determinant {det:.3g}): {affine.tolist()}")
    lo, hi = _SPACING_RANGE_MM
    if min(spacing) < lo or max(spacing) > hi:
        raise InconsistentDataError(
            where, f"voxel size {spacing} mm is outside [{lo:g}, {hi:g}] mm: the geometry header is damaged"
        )


def _first_number(value: Any) -> float | None:
    """A positive finite number from a DICOM value, else None (missing or damaged)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) and x > 0 else None


def _floats(ds: Any, keyword: str, n: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InconsistentDataError(where, f"{keyword} missing or not numeric ({value!r})") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise InconsistentDataError(where, f"{keyword} must hold {n} finite numbers, got {value!r}")
    return out


# What the series checks and the Modality LUT read from each slice. A slice that stores
# the same bytes for all of them as the first slice passes every check of these that the
# first one passes, so only the first is converted and checked: pydicom's conversion of
# the decimal strings (orientation, spacing, rescale) costs more per slice than the checks.
# (What decoding needs besides is decoded per slice, and its result checked per slice.)
_SHARED_TAGS = tuple(BaseTag(tag) for tag in (
    0x0020000E,  # SeriesInstanceUID
    0x00200037,  # ImageOrientationPatient
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280030,  # PixelSpacing
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280102,  # HighBit
    0x00280103,  # PixelRepresentation
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
    0x00283000,  # ModalityLUTSequence
))
_PIXEL_DATA_TAG = BaseTag(0x7FE00010)
_TRANSFER_SYNTAX_TAG = BaseTag(0x00020010)
_FLOAT32_EXACT_INT = 2**24  # float32 holds every integer below this exactly


def _shared_elements(ds: Any) -> tuple:
    """The transfer syntax and :data:`_SHARED_TAGS` of a slice as stored: a raw element's
    VR, encoding and bytes, a converted element's VR and value (never equal to a raw one,
    so such a slice is checked in full)."""
    meta = getattr(ds, "file_meta", None)
    get = ds.get_item
    elements = [None if meta is None else meta.get_item(_TRANSFER_SYNTAX_TAG)] + [get(tag) for tag in _SHARED_TAGS]
    return tuple([
        None if e is None
        else (e.VR, e.is_implicit_VR, e.is_little_endian, e.value) if type(e) is RawDataElement
        else (e.VR, e.value)
        for e in elements
    ])


def _transfer_syntax(ds: Any) -> Any:
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _list_files(paths_or_dir: str | Path | Iterable[str | Path]) -> tuple[str, list[Path], bool]:
    """-> (name of the input for messages, files, came from a folder)."""
    if isinstance(paths_or_dir, (str, Path)):
        folder = Path(paths_or_dir)
        if not folder.is_dir():
            raise MedmmInputError(folder, "not a directory (give a folder or a list of files)")
        with os.scandir(folder) as entries:  # the directory's own file types: no stat per file
            files = sorted(Path(e.path) for e in entries if e.is_file() and not e.name.startswith("."))
        return str(folder), files, True
    files = [Path(p) for p in paths_or_dir]
    if not files:
        raise MedmmInputError(None, "empty list of DICOM files")
    parents = {str(p.parent) for p in files}
    where = parents.pop() if len(parents) == 1 else f"{len(files)} files in {len(parents) + 1} folders"
    return where, files, False


@reader_boundary("DICOM series")
def read_dicom_series(paths_or_dir: str | Path | Iterable[str | Path]) -> Volume:
    """Assemble one DICOM series (a folder, or a list of files) into a :class:`Volume`.

    From a folder, files that are not DICOM at all are skipped; DICOM files without
    image pixels (DICOMDIR, structured reports, ...) are skipped in both cases. The
    slices must form one series (one SeriesInstanceUID), share orientation, Rows /
    Columns and PixelSpacing, and be evenly spaced. Geometry: module docstring.

    Raises:
        MedmmInputError: not a folder, nothing to read, a listed file is not DICOM,
            or a slice is multi-frame.
        CorruptFileError: a file is truncated / undecodable.
        InconsistentDataError: several series, mixed orientations or sizes, missing
            slices, duplicate positions, uneven spacing, slices off a straight line.
    Every message names the folder (or file) and the problem.
    """
    where, files, from_folder = _list_files(paths_or_dir)
    slices: list[tuple[Path, Any]] = []
    for f in files:
        try:
            # one parse per slice, pixels included (decoded later from this dataset)
            ds = parse_dicom(f)
        except MedmmInputError:
            raise
        except InvalidDicomError as exc:
            if from_folder:
                continue  # a stray non-DICOM file in the folder
            raise MedmmInputError(f, f"not a DICOM Part-10 file ({exc})") from exc
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise MedmmInputError(f, f"cannot open file ({exc.strerror or exc})") from exc
        except Exception as exc:  # noqa: BLE001 - any parser failure = damaged file
            raise CorruptFileError(f, f"cannot parse DICOM ({type(exc).__name__}: {exc})") from exc
        if "Rows" not in ds or "Columns" not in ds:
            continue  # not an image (DICOMDIR, SR, presentation state, ...)
        slices.append((f, ds))
    if not slices:
        raise MedmmInputError(where, "no DICOM image slices found")

    shared = [_shared_elements(ds) for _, ds in slices]
    like_first = [i > 0 and s == shared[0] for i, s in enumerate(shared)]  # checked once, on slice 0
    series = {str(ds.get("SeriesInstanceUID", "")) for (_, ds), same in zip(slices, like_first) if not same}
    if len(series) > 1:
        raise InconsistentDataError(
            where, f"holds {len(series)} different series (SeriesInstanceUID); give one series at a time"
        )

    f0, ds0 = slices[0]
    iop0 = _floats(ds0, "ImageOrientationPatient", 6, str(f0))
    spacing0 = _floats(ds0, "PixelSpacing", 2, str(f0))
    size0 = (int(ds0.Rows), int(ds0.Columns))
    positions = []
    for (f, ds), same in zip(slices, like_first):
        positions.append(_floats(ds, "ImagePositionPatient", 3, str(f)))
        if same:
            continue
        frames = int(ds.get("NumberOfFrames") or 1)
        if frames > 1:
            raise MedmmInputError(f, f"multi-frame file ({frames} frames) in a slice series is not supported")
        iop = _floats(ds, "ImageOrientationPatient", 6, str(f))
        if np.abs(iop - iop0).max() > _ORIENTATION_ATOL:  # (np.allclose is slow on 6 numbers)
            raise InconsistentDataError(
                where, f"mixed orientations: {f.name} has ImageOrientationPatient {iop.tolist()}, "
                f"{f0.name} has {iop0.tolist()}"
            )
        size = (int(ds.Rows), int(ds.Columns))
        if size != size0:
            raise InconsistentDataError(where, f"mismatched Rows/Columns: {f.name} is {size}, {f0.name} is {size0}")
        sp = _floats(ds, "PixelSpacing", 2, str(f))
        if np.abs(sp - spacing0).max() > 1e-4 * np.abs(spacing0).max():
            raise InconsistentDataError(
                where, f"mismatched PixelSpacing: {f.name} has {sp.tolist()}, {f0.name} has {spacing0.tolist()}"
            )

    row_cos, col_cos = iop0[:3], iop0[3:]
    if not (
        abs(np.linalg.norm(row_cos) - 1) < 1e-3
        and abs(np.linalg.norm(col_cos) - 1) < 1e-3
        and abs(float(row_cos @ col_cos)) < 1e-3
    ):
        raise InconsistentDataError(f0, f"ImageOrientationPatient {iop0.tolist()} is not two orthonormal cosines")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    if np.any(spacing0 <= 0):
        raise InconsistentDataError(f0, f"PixelSpacing must be positive, got {spacing0.tolist()}")

    pos = np.array(positions)
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    proj, pos = proj[order], pos[order]
    names = [slices[o][0].name for o in order]
    n = len(order)

    if n >= 2:
        gaps = np.diff(proj)
        dup = np.flatnonzero(gaps < _DUPLICATE_MM)
        if dup.size:
            a = int(dup[0])
            raise InconsistentDataError(
                where, f"duplicate slice position {proj[a]:.4f} mm along the normal: {names[a]} and {names[a + 1]}"
            )
        median = float(np.median(gaps))
        for a, g in enumerate(gaps):
            if g > 1.5 * median:
                missing = int(round(g / median)) - 1
                raise InconsistentDataError(
                    where, f"missing slice(s): gap of {g:.4f} mm between {names[a]} ({proj[a]:.4f} mm) and "
                    f"{names[a + 1]} ({proj[a + 1]:.4f} mm), median step {median:.4f} mm "
                    f"(about {max(missing, 1)} slice(s) missing)"
                )
        dev = np.abs(gaps - median) / median
        if dev.max() > _SPACING_RTOL:
            a = int(np.argmax(dev))
            raise InconsistentDataError(
                where, f"uneven slice spacing: gap of {gaps[a]:.4f} mm between {names[a]} and {names[a + 1]} "
                f"differs from the median step {median:.4f} mm by {100 * dev[a]:.2f} % (> 1 %)"
            )
        step = (pos[-1] - pos[0]) / (n - 1)
        off_line = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step), axis=1)
        if off_line.max() > _SPACING_RTOL * median + 1e-3:
            a = int(np.argmax(off_line))
            raise InconsistentDataError(
                where, f"slice {names[a]} lies {off_line[a]:.4f} mm off the straight line through the slice positions"
            )
    else:
        thickness = _first_number(ds0.get("SpacingBetweenSlices")) or _first_number(ds0.get("SliceThickness")) or 1.0
        step = normal * thickness

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * spacing0[1]
    affine_lps[:3, 1] = col_cos * spacing0[0]
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = pos[0]
    _check_affine(where, affine_lps)

    rows, cols = size0
    check_declared_size(where, (cols, rows, n), 4, "series (columns, rows, slices)")
    stack = _stack_pixels(slices, order, like_first, (rows, cols))
    array = stack.transpose(2, 1, 0)

    metadata = {
        "source": "dicom",
        "modality": str(ds0.get("Modality", "") or ""),
        "n_slices": n,
        "rows": rows,
        "columns": cols,
    }
    return Volume(array=array, affine=LPS_TO_RAS @ affine_lps, path=where, metadata=metadata)


def _stack_pixels(
    slices: list[tuple[Path, Any]], order: np.ndarray, like_first: list[bool], size: tuple[int, int]
) -> np.ndarray:
    """float32 ``[slice, row, column]``: each slice's pixels with the Modality LUT applied,
    as :func:`~medmm.io.dicom.image_from_dataset` gives them, in ``order``.

    Slices are written contiguously and the volume is a transposed view of them: writing
    each slice into the last axis directly is a strided scatter that cost a third of the
    read. A plain monochrome series (:func:`~medmm.io.dicom.linear_rescale`) is stacked
    from the stored values (the PixelData bytes viewed as integers when uncompressed:
    :func:`~medmm.io.dicom.native_pixel_layout`) and rescaled once for the whole volume where float32 gives the
    float64 result exactly (slope 1, an integer intercept: a CT in HU); its values are
    finite by construction. Any other slice goes through ``image_from_dataset``."""
    f0, ds0 = slices[0]
    rescale = linear_rescale(ds0)
    if rescale is not None:
        check_pixel_length(ds0, str(f0), "PixelData", _transfer_syntax(ds0))
        length0 = len(ds0.get_item(_PIXEL_DATA_TAG).value)
        slope, intercept = rescale
        in_place = slope == 1.0 and intercept.is_integer() and abs(intercept) <= _FLOAT32_EXACT_INT - 2**16
        native = native_pixel_layout(ds0)  # shared by every slice stored like the first
    stack = np.empty((len(order),) + size, dtype=np.float32)
    shift = np.zeros(len(order), dtype=bool)  # slices whose intercept is added at the end
    for k, o in enumerate(order):
        f, ds = slices[o]
        pixel_data = ds.get_item(_PIXEL_DATA_TAG) if rescale is not None and (o == 0 or like_first[o]) else None
        if pixel_data is not None and pixel_data.value is not None:
            if len(pixel_data.value) != length0:  # same header, other length: check it in full
                check_pixel_length(ds, str(f), "PixelData", _transfer_syntax(ds))
            raw = native.pixels(pixel_data.value) if native is not None else None
            if raw is None:
                raw = decode_pixels(ds, str(f))
            if raw.shape == size and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2:
                if in_place:
                    stack[k] = raw
                    shift[k] = True
                else:  # image_from_dataset's arithmetic: pydicom's apply_modality_lut in float64
                    scaled = raw.astype(np.float64)
                    scaled *= slope
                    scaled += intercept
                    stack[k] = scaled
                continue
        pixels = image_from_dataset(ds, str(f), describe=False).pixels
        if pixels.shape != size:
            raise InconsistentDataError(f, f"pixel array has shape {pixels.shape}, expected {size}")
        stack[k] = pixels
    if rescale is not None and intercept != 0.0 and shift.any():
        if shift.all():
            stack += np.float32(intercept)
        else:
            stack[shift] += np.float32(intercept)
    return stack


# --------------------------------------------------------------------------- NIfTI read


@reader_boundary("NIfTI")
def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) with nibabel into a :class:`Volume`.

    The affine is nibabel's ``img.affine`` (sform, else qform, else the zooms): RAS+
    already. A 4-D image whose trailing dimensions are all 1 is squeezed to 3-D. The
    voxels are nibabel's ``get_fdata(dtype=float32)`` (unscaled 8- / 16-bit integers and
    float32 are cast directly from the file's bytes: the same array); a ``.nii.gz`` is
    inflated once, by ISA-L (about 2.5x zlib's speed), into memory read from there.

    Raises:
        MedmmInputError: cannot open the file, or not a 3-D image.
        CorruptFileError: not a NIfTI file, or truncated / undecodable data.
        InconsistentDataError: a non-invertible affine, or NaN / infinite voxels.
    """
    where = str(path)
    if not os.path.isfile(where):
        raise MedmmInputError(where, "no such file")
    try:
        img = nib.load(where)  # the header only: nibabel reads the voxels on demand
    except (PermissionError, IsADirectoryError) as exc:
        raise MedmmInputError(where, f"cannot open file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - ImageFileError, HeaderDataError, EOFError, gzip ...
        raise CorruptFileError(where, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CorruptFileError(where, f"not a NIfTI file (nibabel reads it as {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise MedmmInputError(where, f"expected a 3-D image, got shape {shape}")
    try:
        stored = img.header.get_data_dtype()
        # the voxels' offset is the data object's: nibabel zeroes the loaded header's own
        need = int(img.dataobj.offset) + math.prod(shape) * stored.itemsize
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(where, f"NIfTI header has an invalid data type or offset ({exc})") from exc
    # nibabel holds the stored values and the float32 result at once
    check_declared_size(where, shape[:3], 4 + stored.itemsize, "NIfTI header (dim)")
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(where, affine)
    finite = _finite_by_construction(img.dataobj)
    if where.endswith(".gz"):
        inflated = _gunzip_bounded(where, need)
        held, stream = len(inflated), "decompressed stream"
    else:
        held, stream = os.stat(where).st_size, "file"
    if held < need:
        raise InconsistentDataError(
            where, f"header declares {shape} voxels of {stored} ending at byte {need}, "
            f"the {stream} holds {held} bytes (truncated, or a wrong header)"
        )
    try:
        if _unscaled_cast(img.dataobj, stored):
            data = _voxels_as_float32(inflated if where.endswith(".gz") else where, int(img.dataobj.offset),
                                      stored, shape[:3])
        else:
            if where.endswith(".gz"):  # nibabel reads the inflated bytes, not the file again
                klass = type(img)
                img = klass.from_file_map(klass.make_file_map({"image": io.BytesIO(inflated)}), mmap=False)
            data = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - EOFError / ValueError on truncated data
        raise CorruptFileError(where, f"cannot read the image data ({type(exc).__name__}: {exc})") from exc
    data = data.reshape(shape[:3])
    if not finite and not np.all(np.isfinite(data)):
        raise InconsistentDataError(where, "image holds NaN or infinite voxels")
    version = 2 if isinstance(img, nib.Nifti2Image) else 1
    metadata = {"source": "nifti", "modality": "", "n_slices": shape[2], "nifti_version": version}
    return Volume(array=data, affine=affine, path=where, metadata=metadata)


# Stored types whose float32 cast is the whole of nibabel's get_fdata(dtype=float32) when
# the scaling is the identity.
_CAST_ONLY_DTYPES = frozenset(np.dtype(f"{order}{code}") for order in "<>" for code in ("i1", "u1", "i2", "u2", "f4"))


def _unscaled_cast(dataobj: Any, stored: np.dtype) -> bool:
    return (
        stored in _CAST_ONLY_DTYPES
        and getattr(dataobj, "order", "F") == "F"
        and float(getattr(dataobj, "slope", 1.0)) == 1.0
        and float(getattr(dataobj, "inter", 0.0)) == 0.0
    )


def _voxels_as_float32(source: str | bytes, offset: int, stored: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The voxels at ``offset`` of a file (memory-mapped) or of inflated bytes, cast to
    float32 in NIfTI's column-major order: nibabel's get_fdata for unscaled data, without
    its proxy's per-read setup or, for inflated bytes, the copy of them it reads."""
    count = math.prod(shape)
    if isinstance(source, bytes):
        return np.frombuffer(source, dtype=stored, count=count, offset=offset).reshape(shape, order="F").astype(
            np.float32)
    with open(source, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=stored, count=count, offset=offset).reshape(shape, order="F")
        data = view.astype(np.float32)
        del view  # the map closes only once no array looks at it
    return data


def _gunzip_bounded(where: str, enough: int) -> bytes:
    """The first ``enough`` bytes of a gzip stream (all of it if shorter), inflated in
    bounded chunks: a 14 KB file may declare gigabytes, and the gzip trailer's size
    field is modulo 4 GiB (and as easy to forge as the header), so nothing is allocated
    for bytes the stream does not hold."""
    chunks: list[bytes] = []
    held = 0
    with igzip.open(where, "rb") as stream:
        while held < enough:
            chunk = stream.read(min(_GZIP_CHUNK, enough - held))
            if not chunk:
                break
            chunks.append(chunk)
            held += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _finite_by_construction(dataobj: Any) -> bool:
    """Integer voxels scaled by a finite slope / intercept that cannot leave float32's
    range are finite without looking at them (skips a pass over the whole volume). The
    scaling is the data object's: nibabel moves it there from the header on load."""
    dtype = np.dtype(dataobj.dtype)
    if dtype.kind not in "iub":
        return False
    slope = float(getattr(dataobj, "slope", 1.0))
    inter = float(getattr(dataobj, "inter", 0.0))
    if not (math.isfinite(slope) and math.isfinite(inter)):
        return False
    biggest = float(max(abs(np.iinfo(dtype).min), np.iinfo(dtype).max)) if dtype.kind != "b" else 1.0
    return biggest * abs(slope) + abs(inter) < 1e38
