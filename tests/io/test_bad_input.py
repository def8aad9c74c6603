"""Bad input the issue names, per reader: each raises a medmm exception naming the file
and the problem, within a second (CPU time; the wall clock is bounded loosely because
other processes share this machine). Complements the per-reader tests in test_dicom.py,
test_volume.py and test_ecg.py (truncated files, text renamed .dcm / .nii / .hea, missing
pixel data, rows disagreeing with the bytes, NaN in a WFDB signal, a singular NIfTI
affine), which this file does not repeat."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medmm.demo.writers import write_dicom_series, write_wfdb
from medmm.io.dicom import read_dicom
from medmm.io.ecg import STANDARD_LEADS, read_ecg
from medmm.io.errors import InconsistentDataError, MedmmInputError
from medmm.io.guard import LIMIT_ENV, max_decoded_bytes
from medmm.io.volume import read_dicom_series, read_nifti


@contextlib.contextmanager
def raises_fast(path, *words: str, kind: type[MedmmInputError] = MedmmInputError):
    """The block raises `kind`, naming `path` and every word, in under 1 s of CPU."""
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(kind) as info:
            yield info
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    assert cpu < 1.0 and wall < 5.0, (cpu, wall)


def test_default_allocation_limit_is_a_quarter_of_memory(monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert max_decoded_bytes() == ram // 4
    monkeypatch.setenv(LIMIT_ENV, "1000")
    assert max_decoded_bytes() == 1000


# ------------------------------------------------------- sizes that would exhaust memory


def test_dicom_compressed_header_declaring_terabytes(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)  # the default ceiling
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # encapsulated: no byte count to compare
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 100000
    bad = tmp_path / "huge.dcm"
    ds.save_as(bad)
    with raises_fast(bad, "limit", "refusing to allocate", kind=InconsistentDataError):
        read_dicom(bad)


def test_dicom_series_declaring_huge_slices(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    folder = tmp_path / "s"
    paths = write_dicom_series(np.zeros((4, 4, 3)), np.diag([-1.0, -1.0, 2.0, 1.0]), folder)
    for p in paths:  # every slice now claims 65535 x 65535 pixels: 51 GB as float32
        ds = pydicom.dcmread(p)
        ds.Rows = ds.Columns = 65535
        ds.save_as(p)
    with raises_fast(folder, "limit", kind=InconsistentDataError):
        read_dicom_series(folder)


def test_nifti_header_declaring_huge_volume(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    img.header.set_data_shape((30000, 30000, 30000))  # 108 TB of float32, on a tiny .nii.gz
    raw = img.header.binaryblock + b"\x00" * 4 + np.zeros(64, np.float32).tobytes()
    bad = tmp_path / "huge.nii.gz"
    import gzip

    bad.write_bytes(gzip.compress(raw))
    with raises_fast(bad, "limit", kind=InconsistentDataError):
        read_nifti(bad)
    plain = tmp_path / "short.nii"  # uncompressed: the file size itself contradicts the header
    img.header.set_data_shape((100, 100, 100))
    plain.write_bytes(img.header.binaryblock + b"\x00" * 4 + np.zeros(64, np.float32).tobytes())
    with raises_fast(plain, "truncated", kind=InconsistentDataError):
        read_nifti(plain)


def test_wfdb_header_declaring_trillions_of_samples(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    hea = write_wfdb(tmp_path / "r", np.zeros((12, 500)), 500, STANDARD_LEADS)
    hea.write_text(hea.read_text().replace(" 500 500", " 500 1000000000000", 1))
    with raises_fast(hea, "limit", kind=InconsistentDataError):
        read_ecg(hea)


def test_dicom_ecg_declaring_billions_of_samples(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    ds.WaveformSequence[0].NumberOfWaveformSamples = 2**32 - 1
    bad = tmp_path / "ecg.dcm"
    ds.save_as(bad)
    with raises_fast(bad, "limit", kind=InconsistentDataError):
        read_ecg(bad)


# ------------------------------------------------------- values that are not data


def test_nifti_nan_voxels(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    bad = tmp_path / "nan.nii"
    nib.Nifti1Image(arr, np.eye(4)).to_filename(bad)
    with raises_fast(bad, "NaN", kind=InconsistentDataError):
        read_nifti(bad)


def test_nifti_voxel_size_of_a_flipped_byte(tmp_path):
    # found by the fuzz test: pixdim 1e-28 is invertible on paper and meaningless
    bad = tmp_path / "tiny.nii"
    nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([1e-28, 2.0, 2.0, 1.0])).to_filename(bad)
    with raises_fast(bad, "voxel size", kind=InconsistentDataError):
        read_nifti(bad)


def test_dicom_series_with_parallel_orientation_cosines(tmp_path):
    folder = tmp_path / "s"
    for p in write_dicom_series(np.zeros((4, 4, 3)), np.diag([-1.0, -1.0, 2.0, 1.0]), folder):
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]  # row and column both along x
        ds.save_as(p)
    with raises_fast(Path(folder) / "slice0000.dcm", "orthonormal", kind=InconsistentDataError):
        read_dicom_series(folder)


def test_dicom_rescale_overflowing_float32(tmp_path):
    # found by the fuzz test: an intercept of -1e308 is finite in float64, -inf in float32
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleIntercept = "-1e308"
    bad = tmp_path / "overflow.dcm"
    ds.save_as(bad)
    with raises_fast(bad, "RescaleIntercept", kind=InconsistentDataError):
        read_dicom(bad)


def test_damaged_sampling_rate(tmp_path):
    # found by the fuzz test: "abc" / 0 / inf as a rate used to escape as ValueError
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    ds.WaveformSequence[0].SamplingFrequency = "0"
    bad = tmp_path / "rate.dcm"
    ds.save_as(bad)
    with raises_fast(bad, "Sampling Frequency", kind=InconsistentDataError):
        read_ecg(bad)
    hea = write_wfdb(tmp_path / "r", np.zeros((12, 100)), 500, STANDARD_LEADS)
    hea.write_text(hea.read_text().replace("r 12 500 100", "r 12 0 100", 1))
    with raises_fast(hea, "sampling frequency", kind=InconsistentDataError):
        read_ecg(hea)


def test_damaged_element_value_is_a_medmm_error(tmp_path):
    """A value pydicom converts lazily (here a Decimal String that is not a number)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.RescaleSlope
    ds.add_new(0x00281053, "LO", "abc")  # RescaleSlope stored as text
    bad = tmp_path / "slope.dcm"
    ds.save_as(bad)
    with raises_fast(bad):
        read_dicom(bad)
