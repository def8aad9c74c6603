"""medmm.data.read_cache: MONAI-cached reads of volumes and ECG records equal medmm's
direct reads, later epochs come from the cache (the source files can be gone), an
edited file is read again, and a bad file is recorded, not raised."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medmm.demo.writers import write_dicom_series, write_wfdb
from medmm.io.ecg import STANDARD_LEADS, read_ecg
from medmm.io.volume import read_dicom_series, read_nifti

monai = pytest.importorskip("monai")


@pytest.fixture
def records(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, (12, 10, 5)).astype(np.float64)
    aff = np.diag([-0.8, -0.9, 2.0, 1.0])
    write_dicom_series(arr, aff, tmp_path / "series")
    nib.Nifti1Image(arr.astype(np.float32), aff).to_filename(tmp_path / "vol.nii.gz")
    ecg = read_ecg(get_testdata_file("waveform_ecg.dcm"))
    write_wfdb(tmp_path / "ecg" / "rec", ecg.signal[:, :1000], ecg.fs, STANDARD_LEADS)
    (tmp_path / "bad.nii").write_text("not an image")
    return [
        {"path": tmp_path / "series", "kind": "dicom_series"},
        {"path": tmp_path / "vol.nii.gz", "kind": "nifti"},
        {"path": tmp_path / "ecg" / "rec.hea", "kind": "ecg"},
        {"path": tmp_path / "bad.nii", "kind": "nifti"},
    ]


def _check_against_direct(items, sources):
    series, nifti, ecg, bad = items
    direct = read_dicom_series(sources[0]["path"])
    assert series["problem"] == ""
    np.testing.assert_array_equal(np.asarray(series["image"])[0], direct.array)
    np.testing.assert_allclose(np.asarray(series["affine"]), direct.affine)
    assert nifti["problem"] == ""
    np.testing.assert_array_equal(np.asarray(nifti["image"])[0], read_nifti(sources[1]["path"]).array)
    rec = read_ecg(sources[2]["path"])
    np.testing.assert_array_equal(np.asarray(ecg["signal"]), rec.signal)
    assert ecg["fs"] == rec.fs == 1000.0
    assert "bad.nii" in bad["problem"] and "image" not in bad  # recorded, not raised


def test_persistent_cache_serves_second_epoch_without_the_files(records, tmp_path):
    from medmm.data.read_cache import cached_reads

    cache = tmp_path / "cache"
    dataset = cached_reads(records, cache)
    first = [dataset[i] for i in range(4)]
    _check_against_direct(first, records)
    assert len(list(cache.glob("*.pt"))) == 4

    kept = tmp_path / "kept"
    shutil.move(records[0]["path"], kept)  # the series is gone: epoch 2 can only use the cache
    second = [dataset[i] for i in range(4)]
    for a, b in zip(first, second):
        assert a["problem"] == b["problem"]
    np.testing.assert_array_equal(np.asarray(second[0]["image"]), np.asarray(first[0]["image"]))
    np.testing.assert_array_equal(np.asarray(second[2]["signal"]), np.asarray(first[2]["signal"]))


def test_edited_file_is_read_again(records, tmp_path):
    from medmm.data.read_cache import cached_reads, file_stamp

    cache = tmp_path / "cache"
    item = records[1]
    before = cached_reads([item], cache)[0]
    arr = np.full((3, 3, 3), 7.0, np.float32)
    nib.Nifti1Image(arr, np.eye(4)).to_filename(item["path"])
    after = cached_reads([item], cache)[0]
    assert after["image"].shape == (1, 3, 3, 3) and before["image"].shape == (1, 12, 10, 5)
    assert float(after["image"].max()) == 7.0
    assert file_stamp(item["path"]) != ""


def test_edited_wfdb_signal_file_is_read_again(records, tmp_path):
    """A WFDB record named by its header: an edit of the signal file alone is seen too."""
    from medmm.data.read_cache import cached_reads

    cache = tmp_path / "cache"
    item = records[2]
    before = np.asarray(cached_reads([item], cache)[0]["signal"])
    dat = item["path"].with_suffix(".dat")
    data = bytearray(dat.read_bytes())
    data[:64] = bytes(64)  # same size, the first samples zeroed
    dat.write_bytes(bytes(data))
    after = np.asarray(cached_reads([item], cache)[0]["signal"])
    np.testing.assert_array_equal(after, np.asarray(read_ecg(item["path"]).signal))
    assert not np.array_equal(after, before)


def test_in_memory_cache(records):
    from medmm.data.read_cache import cached_reads

    dataset = cached_reads(records)  # CacheDataset: read at construction
    _check_against_direct([dataset[i] for i in range(4)], records)
