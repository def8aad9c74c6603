"""Volumes against real data and independent geometry code.

* The real head CT (Debian invesalius-examples): written as a DICOM series and as NIfTI,
  both read back as the same voxels and the same affine, and MONAI's PydicomReader
  (its own DICOM series assembly) reads the written series the same way.
* An oblique synthetic series with shuffled file names: MONAI's PydicomReader and
  nibabel's DICOM wrappers (per-slice geometry from the raw tags) agree with medmm.
"""

from __future__ import annotations

import os
import warnings

import nibabel as nib
import numpy as np
import pytest

with warnings.catch_warnings():  # nibabel calls its DICOM wrappers experimental; the
    warnings.simplefilter("ignore")  # per-slice geometry used here is the basic part
    from nibabel.nicom import dicomwrappers

from medmm.demo.writers import write_dicom_series
from medmm.io.volume import LPS_TO_RAS, read_dicom_series, read_nifti


def _monai_dicom(folder):
    """MONAI's own DICOM-series reader (pydicom backend): array and RAS affine."""
    transforms = pytest.importorskip("monai.transforms")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nvImageCodec absent: MONAI falls back to pydicom
        img, meta = transforms.LoadImage(reader="PydicomReader", image_only=False)(str(folder))
    return np.asarray(img, dtype=np.float32), np.asarray(meta["affine"], dtype=np.float64)


def test_real_head_ct_dicom_and_nifti_agree(invesalius_ct, tmp_path):
    ct = invesalius_ct
    assert ct.shape == (256, 256, 108)
    np.testing.assert_allclose(ct.spacing_mm, (0.9570312, 0.9570312, 1.5), atol=1e-6)
    assert ct.array.min() == -1024.0 and ct.array.max() > 2000  # air and dense bone, in HU
    assert np.array_equal(ct.array, np.rint(ct.array))

    paths = write_dicom_series(ct.array, ct.affine, tmp_path / "series")
    assert len(paths) == 108
    from_dicom = read_dicom_series(tmp_path / "series")
    nib.Nifti1Image(ct.array.astype(np.int16), ct.affine).to_filename(tmp_path / "head.nii")
    from_nifti = read_nifti(tmp_path / "head.nii")

    for vol in (from_dicom, from_nifti):
        assert vol.shape == ct.shape
        np.testing.assert_array_equal(vol.array, ct.array)
        np.testing.assert_allclose(vol.affine, ct.affine, atol=1e-5)
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-5)
    assert nib.aff2axcodes(from_dicom.affine) == ("L", "P", "S")

    monai_array, monai_affine = _monai_dicom(tmp_path / "series")
    np.testing.assert_array_equal(monai_array, from_dicom.array)
    np.testing.assert_allclose(monai_affine, from_dicom.affine, atol=1e-4)


def _rotation(degrees_x: float, degrees_y: float) -> np.ndarray:
    ax, ay = np.deg2rad([degrees_x, degrees_y])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


def test_oblique_real_crop_agrees_with_monai_and_nibabel(invesalius_ct, tmp_path):
    """A crop of the real CT, tilted 25 deg / 15 deg, file names shuffled."""
    arr = invesalius_ct.array[64:192:2, 64:192:2, 30:54]  # 64 x 64 x 24 through the skull
    aff = np.eye(4)
    aff[:3, :3] = _rotation(25.0, 15.0) @ np.diag([-1.4, -1.2, 2.0])
    aff[:3, 3] = [-31.5, 12.25, 80.0]
    folder = tmp_path / "oblique"
    paths = write_dicom_series(arr, aff, folder)
    rng = np.random.default_rng(3)
    for p, name in zip(paths, rng.permutation(len(paths))):  # file order says nothing
        os.rename(p, folder / f"img_{name:03d}.dcm")

    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-5)

    monai_array, monai_affine = _monai_dicom(folder)
    np.testing.assert_array_equal(monai_array, vol.array)
    np.testing.assert_allclose(monai_affine, vol.affine, atol=1e-4)

    # nibabel, slice by slice from the raw tags: LPS, voxel axes (row, column)
    lps = LPS_TO_RAS @ vol.affine
    for f in sorted(folder.iterdir()):
        w = dicomwrappers.wrapper_from_file(str(f))
        nib_aff = np.asarray(w.affine, dtype=np.float64)
        np.testing.assert_allclose(nib_aff[:3, 0], lps[:3, 1], atol=1e-5)  # down a column = j
        np.testing.assert_allclose(nib_aff[:3, 1], lps[:3, 0], atol=1e-5)  # along a row = i
        k = np.linalg.solve(lps[:3, :3], nib_aff[:3, 3] - lps[:3, 3])  # this slice's index
        np.testing.assert_allclose(k[:2], 0.0, atol=1e-4)
        assert abs(k[2] - round(k[2])) < 1e-4
        np.testing.assert_array_equal(w.get_data().T, vol.array[:, :, int(round(k[2]))])
