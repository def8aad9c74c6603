"""Writers of the formats medmm reads, for building synthetic cohorts and test files:
a chest radiograph as DICOM (CR / DX), a CT series as DICOM, a 12-lead ECG as a WFDB
record and an RGB slide as a pyramidal TIFF. Each writes what the matching reader in
:mod:`medmm.io` reads back exactly (the readers' tests check the round trips).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmm.io.errors import InconsistentDataError
from medmm.io.volume import LPS_TO_RAS

__all__ = [
    "CR_SOP_CLASS_UID",
    "CT_SOP_CLASS_UID",
    "DX_SOP_CLASS_UID",
    "write_cxr_dicom",
    "write_dicom_series",
    "write_pyramidal_tiff",
    "write_wfdb",
]

CR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
DX_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
_SOP_CLASS_BY_MODALITY = {"CR": CR_SOP_CLASS_UID, "DX": DX_SOP_CLASS_UID}
CT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage

# WFDB storage formats medmm writes: format -> (lowest, highest) storable digital
# value. The lowest value of the full range is the format's "missing sample" code,
# so it is excluded (NaN is written as that code).
_WFDB_WRITE_RANGE = {
    "80": (-127, 127),
    "212": (-2047, 2047),
    "16": (-32767, 32767),
    "24": (-(2**23) + 1, 2**23 - 1),
    "32": (-(2**31) + 1, 2**31 - 1),
}
_RECORD_NAME_RE = re.compile(r"[-\w]+")


# --------------------------------------------------------------------------- chest radiograph (DICOM)

_DATE = re.compile(r"^\d{8}$")


def _check_uid(name: str, value: str) -> str:
    from pydicom.uid import UID

    with warnings.catch_warnings():  # pydicom warns on invalid UIDs; we raise instead
        warnings.simplefilter("ignore")
        uid = UID(str(value))
    if not uid.is_valid:
        raise ValueError(f"{name} {value!r} is not a valid DICOM UID (digits and dots, <= 64 chars)")
    return str(uid)


def write_cxr_dicom(
    path: str | Path,
    image01: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    study_date: str,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    pixel_spacing_mm: float = 0.7,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
) -> Path:
    """Write a 2-D chest radiograph as a DICOM Part-10 file; return the path.

    ``image01`` is ``[rows, cols]`` in ``[0, 1]`` with 1 = most attenuation (white on
    a MONOCHROME2 display). Stored value ``s = round(image01 * (2**bits_stored - 1))``;
    for ``photometric="MONOCHROME1"`` the stored value is ``2**bits_stored - 1 - s`` so
    that :func:`medmm.io.dicom.read_dicom` of either file gives ``s * rescale_slope +
    rescale_intercept``. ``modality`` "CR" writes Computed Radiography Image Storage,
    "DX" Digital X-Ray Image Storage - For Presentation; both carry PixelSpacing and
    ImagerPixelSpacing (the DX Detector module requires the latter), a full-range VOI
    window, PA chest view, explicit VR little endian, 16 bits allocated, unsigned.

    The written file is read back with pydicom and checked (pixels, UIDs, SOP class).
    Raises ValueError for bad arguments.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    path = Path(path)
    modality = str(modality).upper()
    photometric = str(photometric).upper()
    if modality not in _SOP_CLASS_BY_MODALITY:
        raise ValueError(f"modality must be 'CR' or 'DX', got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be 'MONOCHROME1' or 'MONOCHROME2', got {photometric!r}")
    if not isinstance(bits_stored, (int, np.integer)) or not 8 <= int(bits_stored) <= 16:
        raise ValueError(f"bits_stored must be an integer in 8..16, got {bits_stored!r}")
    bits_stored = int(bits_stored)
    if not (np.isfinite(pixel_spacing_mm) and pixel_spacing_mm > 0):
        raise ValueError(f"pixel_spacing_mm must be > 0, got {pixel_spacing_mm!r}")
    if not (np.isfinite(rescale_slope) and rescale_slope > 0 and np.isfinite(rescale_intercept)):
        raise ValueError(f"rescale_slope must be > 0 and both finite, got {rescale_slope!r}, {rescale_intercept!r}")
    if not _DATE.match(str(study_date)):
        raise ValueError(f"study_date must be YYYYMMDD, got {study_date!r}")
    uids = {
        "study_uid": _check_uid("study_uid", study_uid),
        "series_uid": _check_uid("series_uid", series_uid),
        "sop_uid": _check_uid("sop_uid", sop_uid),
    }
    img = np.asarray(image01)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"image01 must be a non-empty 2-D array, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
        raise ValueError(f"image01 must be real-valued, got dtype {img.dtype}")
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)) or img.min() < 0.0 or img.max() > 1.0:
        raise ValueError("image01 must be finite and within [0, 1]")

    max_value = 2**bits_stored - 1
    stored = np.rint(img * max_value).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
    rows, cols = stored.shape
    sop_class = _SOP_CLASS_BY_MODALITY[modality]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids["sop_uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDMM_0"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    # SOP common
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["sop_uid"]
    # patient (type 2 fields present, empty)
    ds.PatientName = str(patient_name)
    ds.PatientID = str(patient_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # general study
    ds.StudyInstanceUID = uids["study_uid"]
    ds.StudyDate = str(study_date)
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # general series
    ds.Modality = modality
    ds.SeriesInstanceUID = uids["series_uid"]
    ds.SeriesNumber = 1
    ds.Laterality = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Manufacturer = ""
    # general image: PA chest displayed as facing the patient
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [float(pixel_spacing_mm), float(pixel_spacing_mm)]
    ds.ImagerPixelSpacing = [float(pixel_spacing_mm), float(pixel_spacing_mm)]
    # modality LUT + a full-range VOI window (in modality-LUT output units)
    ds.RescaleIntercept = f"{float(rescale_intercept):.10g}"[:16]
    ds.RescaleSlope = f"{float(rescale_slope):.10g}"[:16]
    ds.RescaleType = "US"
    ds.WindowCenter = f"{rescale_intercept + rescale_slope * max_value / 2.0:.10g}"[:16]
    ds.WindowWidth = f"{rescale_slope * (max_value + 1):.10g}"[:16]
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME1" else 1
        ds.DetectorType = ""
    ds.PixelData = stored.astype("<u2").tobytes()

    ds.save_as(path, enforce_file_format=True)

    # validate by reading back with pydicom
    try:
        back = pydicom.dcmread(path)
        ok = (
            back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            and back.SOPClassUID == sop_class
            and back.file_meta.MediaStorageSOPClassUID == sop_class
            and back.SOPInstanceUID == uids["sop_uid"]
            and back.StudyInstanceUID == uids["study_uid"]
            and back.SeriesInstanceUID == uids["series_uid"]
            and np.array_equal(back.pixel_array, stored)
        )
    except Exception as exc:  # noqa: BLE001 - any failure means we wrote a bad file
        raise InconsistentDataError(path, f"written DICOM does not read back ({type(exc).__name__}: {exc})") from exc
    if not ok:
        raise InconsistentDataError(path, "written DICOM reads back with different pixels or identifiers")
    return path


# --------------------------------------------------------------------------- CT series (DICOM)



def _ds_str(x: float) -> str:
    """A float as a DICOM Decimal String (at most 16 characters)."""
    for digits in range(12, 3, -1):
        s = f"{x:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{x:.3e}"


def write_dicom_series(
    volume_array: np.ndarray,
    affine_ras: np.ndarray,
    folder: str | Path,
    *,
    modality: str = "CT",
    rescale_intercept: float = -1024.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    file_prefix: str = "slice",
) -> list[Path]:
    """Write ``volume_array[i, j, k]`` as a CT Image Storage series, one file per k.

    Geometry follows :mod:`medmm.io.volume`'s convention in reverse: ImageOrientationPatient is
    the LPS directions of the affine's columns 0 and 1 (which must be orthogonal),
    PixelSpacing ``[|col 1|, |col 0|]``, ImagePositionPatient of slice k the LPS
    world position of voxel ``(0, 0, k)``, SliceThickness ``|col 2|``. For
    :func:`medmm.io.volume.read_dicom_series` to return the same affine, column 2 must point to
    the side of ``row_cosine x column_cosine`` (``det(affine_ras[:3, :3]) > 0``;
    the LPS flip has determinant +1); otherwise the series reads back as the same
    voxels with k reversed (an equivalent affine).

    Values are rounded to integers and stored as int16 with RescaleSlope 1 and the
    given RescaleIntercept (``stored = round(value) - intercept``). Fresh UIDs are
    generated unless given; patient fields are written empty. Returns the paths,
    in slice order. Raises ValueError for bad arguments.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(volume_array)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"volume_array must be a non-empty 3-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"volume_array must be real-valued, got dtype {arr.dtype}")
    values = np.rint(arr.astype(np.float64))
    if not np.all(np.isfinite(values)):
        raise ValueError("volume_array must be finite")
    intercept = float(rescale_intercept)
    if not np.isfinite(intercept) or intercept != round(intercept):
        raise ValueError(f"rescale_intercept must be a finite integer value, got {rescale_intercept!r}")
    stored = values - intercept
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(
            f"values minus the intercept span [{stored.min()}, {stored.max()}], outside int16: change rescale_intercept"
        )
    stored = stored.astype(np.int16)

    aff = np.asarray(affine_ras, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine_ras must be a finite 4x4 matrix, got shape {aff.shape}")
    lps = LPS_TO_RAS @ aff
    col0, col1, col2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    s0, s1, s2 = (float(np.linalg.norm(c)) for c in (col0, col1, col2))
    if min(s0, s1, s2) <= 0:
        raise ValueError("affine_ras has a zero column: not invertible")
    row_cos, col_cos = col0 / s0, col1 / s1
    if abs(float(row_cos @ col_cos)) > 1e-6:
        raise ValueError("affine_ras columns 0 and 1 must be orthogonal (DICOM pixels are rectangular)")
    if abs(float(np.linalg.det(lps[:3, :3]))) < 1e-9 * s0 * s1 * s2:
        raise ValueError("affine_ras is singular")

    modality = str(modality).upper()
    if modality != "CT":
        raise ValueError(f"only modality 'CT' is supported, got {modality!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    ni, nj, nk = arr.shape
    iop = [_ds_str(float(v)) for v in (*row_cos, *col_cos)]
    normal = np.cross(row_cos, col_cos)

    paths = []
    for k in range(nk):
        ipp = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_SOP_CLASS_UID
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "MEDMM_0"

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CT_SOP_CLASS_UID
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = ""
        ds.PatientID = ""
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = ""
        ds.StudyTime = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = ""
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.Manufacturer = ""
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.KVP = ""
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in ipp]
        ds.ImageOrientationPatient = iop
        ds.SliceLocation = _ds_str(float(ipp @ normal))
        ds.SliceThickness = _ds_str(s2)
        ds.PixelSpacing = [_ds_str(s1), _ds_str(s0)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = nj
        ds.Columns = ni
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds_str(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        path = folder / f"{file_prefix}{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- ECG (WFDB)


def write_wfdb(
    record_path: str | os.PathLike,
    signal_mV: np.ndarray,
    fs: float,
    lead_names: Sequence[str],
    units: str | Sequence[str] = "mV",
    fmt: str = "16",
    adc_gain: float = 1000.0,
    comments: Sequence[str] | None = None,
) -> Path:
    """Write ``signal_mV`` ``[leads, time]`` as a WFDB record; returns the ``.hea`` path.

    ``record_path`` is the record path without extension (``dir/name`` writes
    ``dir/name.hea`` and ``dir/name.dat``); the name may contain only letters,
    digits, ``-`` and ``_`` (a WFDB rule). Values are stored as
    ``round(value * adc_gain)`` (baseline 0), so the round trip is exact to
    ``0.5 / adc_gain``; NaN is stored as the format's missing-sample code. Values
    that do not fit the format at this gain raise ``ValueError``.
    """
    import wfdb

    record_path = Path(record_path)
    if record_path.suffix in (".hea", ".dat"):
        record_path = record_path.with_suffix("")
    name = record_path.name
    if not _RECORD_NAME_RE.fullmatch(name):
        raise ValueError(
            f"WFDB record name {name!r} may contain only letters, digits, '-' and '_'"
        )
    sig = np.asarray(signal_mV, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] == 0 or sig.shape[1] == 0:
        raise ValueError(f"signal must be [leads, time] with both > 0, got shape {sig.shape}")
    n_leads = sig.shape[0]
    names = [str(n) for n in lead_names]
    if len(names) != n_leads:
        raise ValueError(f"{n_leads} leads but {len(names)} lead names")
    unit_list = [units] * n_leads if isinstance(units, str) else [str(u) for u in units]
    if len(unit_list) != n_leads:
        raise ValueError(f"{n_leads} leads but {len(unit_list)} units")
    fmt = str(fmt)
    if fmt not in _WFDB_WRITE_RANGE:
        raise ValueError(f"fmt {fmt!r} not supported for writing; use one of {sorted(_WFDB_WRITE_RANGE)}")
    if not adc_gain > 0:
        raise ValueError(f"adc_gain must be positive, got {adc_gain!r}")
    if np.isinf(sig).any():
        raise ValueError("signal contains infinite values")
    lo, hi = _WFDB_WRITE_RANGE[fmt]
    finite = sig[~np.isnan(sig)]
    if finite.size and (
        np.round(finite.max() * adc_gain) > hi or np.round(finite.min() * adc_gain) < lo
    ):
        raise ValueError(
            f"signal range [{finite.min():.4g}, {finite.max():.4g}] does not fit WFDB format "
            f"{fmt} at adc_gain {adc_gain} (digital range {lo}..{hi})"
        )
    write_dir = record_path.parent
    write_dir.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name,
        fs=float(fs),
        units=unit_list,
        sig_name=names,
        p_signal=np.ascontiguousarray(sig.T),
        fmt=[fmt] * n_leads,
        adc_gain=[float(adc_gain)] * n_leads,
        baseline=[0] * n_leads,
        comments=list(comments) if comments else None,
        write_dir=str(write_dir),
    )
    return write_dir / f"{name}.hea"


# --------------------------------------------------------------------------- slide (pyramidal TIFF)


def write_pyramidal_tiff(path: str | Path, rgb: np.ndarray, mpp: float, n_levels: int = 3, tile: int = 256) -> Path:
    """Write an RGB image as a tiled, deflate-compressed pyramidal TIFF (each level half the
    previous) with its resolution, readable by OpenSlide as ``generic-tiff``."""
    import tifffile
    from PIL import Image

    path = Path(path)
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for level in range(n_levels):
            if level:
                h, w = img.shape[:2]
                img = np.asarray(Image.fromarray(img).resize((max(1, w // 2), max(1, h // 2)), Image.BOX))
            res = 1e4 / (mpp * 2**level)  # pixels per cm
            tw.write(img, tile=(tile, tile), photometric="rgb", compression="deflate",
                     resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=0 if level == 0 else 1)
    return path
