"""Tests for medmm.io.volume: real DICOM series / NIfTI files written into tmp_path."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medmm.demo.writers import write_dicom_series
from medmm.io.errors import MedmmInputError
from medmm.io.volume import LPS_TO_RAS, Volume, read_dicom_series, read_nifti

SHAPE = (20, 24, 16)
SPACING = (0.8, 0.9, 2.5)
MARKER = (3, 17, 11)  # off-centre, asymmetric


def _volume() -> np.ndarray:
    """A distinct integer value per voxel (so any flip / transpose shows) plus a marker."""
    arr = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE) - 3000.0
    arr[MARKER] = 5000.0
    return arr


def _rot(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    a, b = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def _affine(oblique: bool) -> np.ndarray:
    """(a) DICOM's plain axial orientation (IOP = [1,0,0, 0,1,0], i.e. RAS axes -x, -y, +z);
    (b) the same rotated by 20 deg about x then 20 deg about y."""
    aff = np.eye(4)
    aff[:3, :3] = np.diag([-SPACING[0], -SPACING[1], SPACING[2]])
    if oblique:
        aff[:3, :3] = _rot(1, 20.0) @ _rot(0, 20.0) @ aff[:3, :3]
    aff[:3, 3] = [12.5, -30.25, 47.0]
    return aff


@pytest.fixture(params=[False, True], ids=["axial", "oblique"])
def series(request, tmp_path):
    arr, aff = _volume(), _affine(request.param)
    folder = tmp_path / "series"
    paths = write_dicom_series(arr, aff, folder)
    return arr, aff, folder, paths


# ---------------------------------------------------------------- 1. round trips


def test_dicom_round_trip_and_nifti_twin(series, tmp_path):
    arr, aff, folder, paths = series
    assert len(paths) == SHAPE[2]
    vol = read_dicom_series(folder)
    assert isinstance(vol, Volume)
    assert vol.array.dtype == np.float32 and vol.affine.dtype == np.float64
    assert vol.array.shape == SHAPE
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.affine, aff, atol=1e-5)
    np.testing.assert_allclose(vol.spacing_mm, SPACING, atol=1e-6)
    assert vol.metadata["modality"] == "CT" and vol.metadata["n_slices"] == SHAPE[2]
    assert vol.path == str(folder)

    nii = tmp_path / "twin.nii.gz"
    nib.Nifti1Image(arr.astype(np.float32), aff).to_filename(nii)
    twin = read_nifti(nii)
    np.testing.assert_array_equal(twin.array, vol.array)
    np.testing.assert_allclose(twin.affine, vol.affine, atol=1e-5)
    # the marker lands on the same world point in both
    idx = np.array([*MARKER, 1.0])
    np.testing.assert_allclose(twin.affine @ idx, vol.affine @ idx, atol=1e-4)


def test_axial_tags_and_orientation_codes(tmp_path):
    """Independent anchors: the written tags for the plain axial case are the textbook
    ones, and nibabel names the axes of the read affine L, P, S."""
    paths = write_dicom_series(_volume(), _affine(False), tmp_path / "s")
    ds = pydicom.dcmread(paths[0])
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [SPACING[1], SPACING[0]])  # [row, col]
    assert (ds.Rows, ds.Columns) == (SHAPE[1], SHAPE[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.PixelRepresentation == 1
    vol = read_dicom_series(tmp_path / "s")
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")


# ---------------------------------------------------------------- 2. world coordinates by hand


def test_marker_world_position_from_raw_tags(series):
    arr, aff, folder, paths = series
    vol = read_dicom_series(folder)
    i, j, k = MARKER
    # find the marker's slice from the raw files (not from medmm's sorting)
    hits = []
    for p in paths:
        ds = pydicom.dcmread(p)
        px = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        rows, cols = np.nonzero(px == 5000.0)
        hits += [(ds, int(r), int(c)) for r, c in zip(rows, cols)]
    assert len(hits) == 1
    ds, r, c = hits[0]
    assert (r, c) == (j, i)  # pixel_array is [row, column] = [j, i]
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
    world_lps = ipp + iop[:3] * c * dc + iop[3:] * r * dr  # DICOM PS3.3 C.7.6.2.1.1
    from_affine_lps = (LPS_TO_RAS @ vol.affine @ np.array([i, j, k, 1.0]))[:3]
    np.testing.assert_allclose(from_affine_lps, world_lps, atol=1e-4)
    assert vol.array[i, j, k] == 5000.0


# ---------------------------------------------------------------- 3. order independence


def test_shuffled_names_and_scrambled_instance_numbers(series, tmp_path):
    arr, aff, folder, paths = series
    rng = np.random.default_rng(7)
    out = tmp_path / "shuffled"
    out.mkdir()
    perm = rng.permutation(len(paths))
    instance = rng.permutation(len(paths)) + 1
    new_paths = []
    for n, src in enumerate(paths):
        ds = pydicom.dcmread(src)
        ds.InstanceNumber = int(instance[n])
        dst = out / f"IMG{perm[n]:03d}_{rng.integers(1e6)}"  # random names, no extension
        ds.save_as(dst, enforce_file_format=True)
        new_paths.append(dst)
    (out / "notes.txt").write_text("not DICOM, skipped in a folder")
    ref = read_dicom_series(folder)
    for vol in (read_dicom_series(out), read_dicom_series([new_paths[p] for p in perm])):
        np.testing.assert_array_equal(vol.array, ref.array)
        np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-9)


# ---------------------------------------------------------------- 4. errors


@pytest.fixture
def axial(tmp_path):
    folder = tmp_path / "ax"
    return folder, write_dicom_series(_volume(), _affine(False), folder)


def _raises(source, *words):
    with pytest.raises(MedmmInputError) as info:
        read_dicom_series(source)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg
    return msg


def _edit(path, **tags):
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)


def test_missing_middle_slice(axial):
    folder, paths = axial
    paths[8].unlink()
    _raises(folder, str(folder), "missing slice", "slice0007.dcm", "slice0009.dcm")


def test_uneven_spacing(axial):
    folder, paths = axial
    ds = pydicom.dcmread(paths[8])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    _edit(paths[8], ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 0.3])
    _raises(folder, str(folder), "uneven slice spacing", "slice0008.dcm")


def test_two_series_in_one_folder(axial):
    folder, _ = axial
    write_dicom_series(_volume(), _affine(False), folder, file_prefix="other")
    _raises(folder, str(folder), "2 different series")


def test_truncated_file(axial):
    folder, paths = axial
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) // 2])
    _raises(folder, "slice0005.dcm")


def test_duplicate_mixed_orientation_and_size(tmp_path):
    def fresh(name):
        folder = tmp_path / name
        return folder, write_dicom_series(_volume(), _affine(False), folder)

    folder, paths = fresh("dup")
    shutil.copy(paths[4], folder / "copy_of_4.dcm")
    _raises(folder, str(folder), "duplicate slice position")

    folder, paths = fresh("orient")
    _edit(paths[3], ImageOrientationPatient=[1, 0, 0, 0, 0.9950042, 0.0998334])
    _raises(folder, str(folder), "mixed orientations")

    folder, paths = fresh("size")
    ds = pydicom.dcmread(paths[2])
    smaller = ds.pixel_array[:-4].tobytes()
    ds.Rows = SHAPE[1] - 4
    ds.PixelData = smaller
    ds.save_as(paths[2], enforce_file_format=True)
    _raises(folder, str(folder), "mismatched Rows/Columns")


def test_nifti_singular_affine(tmp_path):
    path = tmp_path / "singular.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((3, 4, 5))
    hdr.set_data_dtype(np.float32)
    hdr["sform_code"], hdr["qform_code"] = 2, 0
    for row in ("srow_x", "srow_y", "srow_z"):
        hdr[row] = 0.0
    nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), None, hdr).to_filename(path)
    with pytest.raises(MedmmInputError, match="not invertible") as info:
        read_nifti(path)
    assert str(path) in str(info.value)


def test_nifti_text_file_and_truncated(tmp_path):
    text = tmp_path / "fake.nii"
    text.write_text("this is not an image\n" * 40)
    with pytest.raises(MedmmInputError) as info:
        read_nifti(text)
    assert str(text) in str(info.value)

    good = tmp_path / "good.nii"
    nib.Nifti1Image(_volume().astype(np.float32), _affine(True)).to_filename(good)
    cut = tmp_path / "cut.nii"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedmmInputError) as info:
        read_nifti(cut)
    assert str(cut) in str(info.value)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        write_dicom_series(np.zeros((2, 2)), np.eye(4), tmp_path / "a")
    with pytest.raises(ValueError):
        write_dicom_series(np.full((2, 2, 2), 40000.0), np.eye(4), tmp_path / "b")
    skew = np.eye(4)
    skew[0, 1] = 0.5
    with pytest.raises(ValueError):
        write_dicom_series(np.zeros((2, 2, 2)), skew, tmp_path / "c")


# ---------------------------------------------------------------- MONAI cross-check


def test_monai_loads_the_same_geometry(tmp_path):
    """MONAI's LoadImage (nibabel reader) on the NIfTI twin of the oblique series:
    same voxels, and its affine equals nibabel's / medmm's."""
    monai_transforms = pytest.importorskip("monai.transforms")
    arr, aff = _volume(), _affine(True)
    write_dicom_series(arr, aff, tmp_path / "s")
    vol = read_dicom_series(tmp_path / "s")
    nii = tmp_path / "twin.nii.gz"
    nib.Nifti1Image(arr.astype(np.float32), aff).to_filename(nii)
    img, meta = monai_transforms.LoadImage(image_only=False)(str(nii))
    monai_affine = np.asarray(meta["affine"], dtype=np.float64)
    np.testing.assert_allclose(monai_affine, nib.load(nii).affine, atol=1e-6)
    np.testing.assert_allclose(monai_affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img, dtype=np.float32), vol.array)


def test_slices_with_their_own_rescale_are_each_rescaled(axial):
    """The series reader rescales once for the volume where every slice shares its rescale
    and slice by slice where one differs: both give each slice its own slope and intercept."""
    folder, paths = axial
    before = read_dicom_series(folder).array
    by_position = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    changed = {1: (2.0, None), 3: (0.75, -1000.0)}  # slice index -> new slope, new intercept (None: kept)
    expected = before.copy()
    for k, (slope, intercept) in changed.items():
        ds = pydicom.dcmread(by_position[k])
        old_slope, old_intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        new_intercept = old_intercept if intercept is None else intercept
        stored = (before[:, :, k].astype(np.float64) - old_intercept) / old_slope
        expected[:, :, k] = (stored * slope + new_intercept).astype(np.float32)
        _edit(by_position[k], RescaleSlope=slope, RescaleIntercept=new_intercept)
    after = read_dicom_series(folder).array
    np.testing.assert_allclose(after, expected, rtol=0, atol=1e-3)
    assert not np.array_equal(after, before)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", ["<i1", "<u1", "<i2", ">i2", "<u2", ">f4", "<i4", "<f8"])
@pytest.mark.parametrize("scaling", [None, (2.0, -1024.0)])
def test_nifti_voxels_equal_nibabel_get_fdata(tmp_path, monkeypatch, suffix, dtype, scaling):
    """Every stored type, byte order and scaling gives nibabel's get_fdata(float32)
    exactly, in values, dtype and memory layout (the unscaled small types are cast
    straight from the file's bytes, the others go through nibabel)."""
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    values = (rng.integers(info.min, info.max, (9, 7, 5), endpoint=True) if info is not None
              else rng.normal(0, 300, (9, 7, 5)))
    img = nib.Nifti1Image(values.astype(dtype), np.diag([0.8, 0.9, 2.5, 1.0]))
    img.set_data_dtype(np.dtype(dtype))
    if scaling is not None:
        img.header.set_slope_inter(*scaling)
    path = tmp_path / f"v{suffix}"
    img.to_filename(path)
    theirs = nib.load(str(path)).get_fdata(dtype=np.float32)
    if scaling is None and dtype[1:] in ("i1", "u1", "i2", "u2", "f4"):
        def _not_called(*args, **kwargs):
            raise AssertionError("get_fdata called for unscaled voxels")

        monkeypatch.setattr(nib.Nifti1Image, "get_fdata", _not_called)
    ours = read_nifti(path).array
    np.testing.assert_array_equal(ours, theirs, strict=True)
    assert ours.strides == theirs.strides
