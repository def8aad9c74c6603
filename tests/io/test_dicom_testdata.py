"""Every file of pydicom's and pydicom-data's test corpus through read_dicom.

For each file pydicom itself decodes (``pixel_array``, with the pylibjpeg plugins),
medmm's pixels must equal pydicom's after the Modality LUT (palette files: after the
colour LUT; MONOCHROME1: reflected about the mapped range of possible stored values, the
rule documented in medmm.io.dicom), multi-frame files as a ``[frames, rows, cols]``
stack. Every other file (no pixels, undecodable, not DICOM at all) must raise one of
medmm's own exceptions naming the file. pydicom is the independent reference.

Kept fast: the reference of a big multi-frame file is decoded frame by frame for three
frames only (pydicom.pixels.pixel_array(path, index=i)), and each file is one test so a
failure names it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from medmm.io.dicom import read_dicom
from medmm.io.errors import MedmmInputError

_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FEW_FRAMES = 8  # above this, check three frames of the stack against pydicom


def _corpus() -> list[str]:
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = sorted(set(get_testdata_files()))
    return files


FILES = _corpus()


def _id(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def test_corpus_includes_pydicom_data():
    """The walk covers both the wheel's files and pydicom-data's (RG1 chest CR, J2K twins)."""
    names = {Path(f).name for f in FILES}
    assert {"CT_small.dcm", "emri_small.dcm", "waveform_ecg.dcm"} <= names  # pydicom wheel
    assert {"RG1_UNCR.dcm", "RG1_J2KR.dcm", "color3d_jpeg_baseline.dcm"} <= names  # pydicom-data
    assert len(FILES) > 200


def _reference_frame(ds, stored: np.ndarray) -> np.ndarray:
    """pydicom's stored values -> what medmm promises (module docstring)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        return np.asarray(apply_color_lut(stored, ds), dtype=np.float64)
    if photometric in _COLOUR:
        return stored.astype(np.float64)
    ref = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if photometric == "MONOCHROME1":
        if "PixelData" in ds:
            bits = int(ds.get("BitsStored") or ds.BitsAllocated)
            signed = int(ds.get("PixelRepresentation") or 0) == 1
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            possible = np.arange(lo, hi + 1, dtype=np.int64 if signed else np.uint32)
            mapped = np.asarray(apply_modality_lut(possible, ds), dtype=np.float64)
            ref = mapped.min() + mapped.max() - ref
        else:  # float pixels have no stored range: reflected about the data range
            ref = ref.min() + ref.max() - ref
    return ref


@pytest.mark.parametrize("path", FILES, ids=[_id(f) for f in FILES])
def test_file_matches_pydicom_or_raises_medmm_error(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
        except Exception:  # noqa: BLE001 - pydicom cannot even parse it (dumps, .icc, ...)
            ds, has_pixels = None, False
        frames = 0
        reference: dict[int | None, np.ndarray] = {}
        if has_pixels:
            try:
                frames = int(ds.get("NumberOfFrames") or 1)
                if frames > _FEW_FRAMES:
                    for i in (0, frames // 2, frames - 1):
                        reference[i] = _reference_frame(ds, pixel_array(path, index=i))
                else:
                    reference[None] = _reference_frame(ds, ds.pixel_array)
            except Exception:  # noqa: BLE001 - pydicom cannot decode it
                reference = {}

        if not reference:  # pydicom cannot decode it: medmm must say so in its own words
            with pytest.raises(MedmmInputError) as info:
                read_dicom(path)
            assert str(path) in str(info.value) and info.value.problem
            return

        image = read_dicom(path)

    pixels = image.pixels
    assert pixels.dtype == np.float32
    if None in reference:
        ref = reference[None]
        assert pixels.shape == ref.shape, f"{_id(path)}: medmm {pixels.shape} vs pydicom {ref.shape}"
        np.testing.assert_array_equal(pixels, ref.astype(np.float32), err_msg=_id(path))
    else:  # a big multi-frame file: the stack's shape, and three frames in place
        first = reference[0]
        assert pixels.shape == (frames, *first.shape)
        for i, ref in reference.items():
            np.testing.assert_array_equal(pixels[i], ref.astype(np.float32), err_msg=f"{_id(path)} frame {i}")
    if frames > 1:
        assert pixels.shape[0] == frames and image.metadata["NumberOfFrames"] == frames
