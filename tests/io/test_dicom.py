"""medmm.io.dicom: write -> read round trips and real files, checked against pydicom's
own decoding (``pixel_array`` + ``apply_modality_lut``) as the independent reference."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from medmm.demo.writers import CR_SOP_CLASS_UID, DX_SOP_CLASS_UID, write_cxr_dicom
from medmm.io.dicom import DicomImage, native_pixel_layout, read_dicom
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError


def _testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return str(path)


def _reference(path) -> np.ndarray:
    """pydicom's own decoding, independent of medmm."""
    ds = pydicom.dcmread(path)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


IDS = dict(
    patient_id="DEMO0001",
    patient_name="Demo^Patient",
    study_uid="1.2.826.0.1.3680043.8.498.1",
    series_uid="1.2.826.0.1.3680043.8.498.1.1",
    sop_uid="1.2.826.0.1.3680043.8.498.1.1.1",
    study_date="20240131",
)


@pytest.fixture
def image01() -> np.ndarray:
    rng = np.random.default_rng(7)
    img = rng.random((48, 40))
    img[0, 0], img[-1, -1] = 0.0, 1.0  # hit both ends of the range
    return img


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_round_trip_matches_pydicom(tmp_path, image01, photometric, modality):
    path = tmp_path / "cxr.dcm"
    out = write_cxr_dicom(path, image01, modality=modality, photometric=photometric,
                          bits_stored=12, pixel_spacing_mm=0.5, rescale_slope=2.0,
                          rescale_intercept=-10.0, **IDS)
    assert out == path
    img = read_dicom(path)
    assert isinstance(img, DicomImage)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == image01.shape

    expected = np.rint(image01 * 4095) * 2.0 - 10.0  # the documented stored -> read rule
    np.testing.assert_array_equal(img.pixels, expected)

    ref = _reference(path)  # independent: pydicom's decoding + Modality LUT
    if photometric == "MONOCHROME1":  # reflect about the possible range [0, 4095] mapped
        lo, hi = 0 * 2.0 - 10.0, 4095 * 2.0 - 10.0
        ref = lo + hi - ref
    np.testing.assert_array_equal(img.pixels, ref.astype(np.float32))

    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPClassUID == {"CR": CR_SOP_CLASS_UID, "DX": DX_SOP_CLASS_UID}[modality]
    assert ds.SOPClassUID == {"CR": pydicom.uid.ComputedRadiographyImageStorage,
                              "DX": pydicom.uid.DigitalXRayImageStorageForPresentation}[modality]
    assert ds.file_meta.MediaStorageSOPInstanceUID == IDS["sop_uid"] == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == IDS["study_uid"] and ds.SeriesInstanceUID == IDS["series_uid"]
    assert ds.StudyDate == IDS["study_date"] and ds.PatientID == IDS["patient_id"]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel) == (16, 12, 11, 0, 1)
    assert ds.PhotometricInterpretation == photometric
    assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition == "PA"
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.5, 0.5]
    if photometric == "MONOCHROME1":  # stored values really are inverted
        assert ds.pixel_array[0, 0] == 4095 and ds.pixel_array[-1, -1] == 0

    assert img.modality == modality and img.photometric == photometric
    assert img.spacing_mm == (0.5, 0.5)
    # the file's full-range window maps the image back to ~[0, 1]
    np.testing.assert_allclose(img.window(), image01, atol=1.0 / 4095 + 1e-6)


@pytest.mark.parametrize("bits", [8, 10, 16])
def test_round_trip_bit_depths(tmp_path, image01, bits):
    path = write_cxr_dicom(tmp_path / f"b{bits}.dcm", image01, bits_stored=bits, photometric="MONOCHROME1", **IDS)
    img = read_dicom(path)
    top = 2**bits - 1
    np.testing.assert_array_equal(img.pixels, np.rint(image01 * top).astype(np.float32))
    np.testing.assert_array_equal(img.pixels, (top - _reference(path)).astype(np.float32))
    assert img.metadata["BitsStored"] == bits and pydicom.dcmread(path).HighBit == bits - 1


def test_metadata_is_technical_only(tmp_path, image01):
    path = write_cxr_dicom(tmp_path / "a.dcm", image01, **IDS)
    md = read_dicom(path).metadata
    for key in ("Modality", "Rows", "Columns", "BitsStored", "PhotometricInterpretation",
                "TransferSyntaxUID", "NumberOfFrames", "ViewPosition", "BodyPartExamined"):
        assert key in md
    assert (md["Rows"], md["Columns"], md["BitsStored"], md["NumberOfFrames"]) == (48, 40, 12, 1)
    text = repr(md)
    for secret in (IDS["patient_id"], "Demo", IDS["study_date"], IDS["study_uid"], IDS["sop_uid"]):
        assert secret not in text


def test_window_rules(tmp_path, image01):
    img = read_dicom(write_cxr_dicom(tmp_path / "w.dcm", image01, **IDS))
    # explicit window: DICOM linear formula, clipped
    w = img.window(center=1000.0, width=501.0)
    x = img.pixels.astype(np.float64)
    ref = np.clip((x - 999.5) / 500.0 + 0.5, 0, 1)
    np.testing.assert_allclose(w, ref, atol=1e-6)
    assert w.min() == 0.0 and w.max() == 1.0
    # no window in the file -> min-max
    bare = DicomImage(pixels=np.array([[2.0, 4.0], [6.0, 10.0]], np.float32), spacing_mm=None,
                      photometric="MONOCHROME2", modality="OT")
    np.testing.assert_allclose(bare.window(), [[0, 0.25], [0.5, 1.0]])
    with pytest.raises(ValueError):
        img.window(center=3.0)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "MR_small_RLE.dcm"])
def test_bundled_monochrome2_agree_with_pydicom(name):
    path = _testdata(name)
    img = read_dicom(path)
    ref = _reference(path)
    assert img.pixels.shape == ref.shape
    np.testing.assert_array_equal(img.pixels, ref.astype(np.float32))
    ds = pydicom.dcmread(path)
    assert img.modality == ds.Modality
    assert img.metadata["Rows"] == ds.Rows and img.metadata["BitsStored"] == ds.BitsStored
    if "PixelSpacing" in ds:
        assert img.spacing_mm == tuple(float(v) for v in ds.PixelSpacing)


def test_bundled_multiframe_shape():
    img = read_dicom(_testdata("emri_small.dcm"))
    assert img.pixels.shape == (10, 64, 64) and img.metadata["NumberOfFrames"] == 10


def test_bundled_ct_in_hounsfield():
    img = read_dicom(_testdata("CT_small.dcm"))
    assert img.metadata["RescaleIntercept"] == -1024.0
    assert img.pixels.min() < -500  # air / fat present, i.e. rescale applied


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG1_UNCR.dcm"])
def test_bundled_monochrome1_cr_inverted(name):
    path = _testdata(name)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = read_dicom(path)
    ref = _reference(path)
    top = float(2 ** int(ds.BitsStored) - 1)  # identity rescale in these files
    np.testing.assert_array_equal(img.pixels, (top - ref).astype(np.float32))
    # the file's window is reflected with the pixels
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    assert img.voi_window == (top - c, w)
    if name == "RG1_UNCR.dcm":  # a real PA chest: after inversion the spine is brighter
        assert img.metadata["BodyPartExamined"] == "CHEST"  # than both lung fields
        spine = img.pixels[900:1100, 850:1000].mean()
        right_lung, left_lung = img.pixels[900:1100, 400:600].mean(), img.pixels[900:1100, 1250:1450].mean()
        assert spine > right_lung + 2000 and spine > left_lung + 2000


def test_bundled_rgb_kept_as_channels():
    path = _testdata("SC_rgb.dcm")
    img = read_dicom(path)
    assert img.pixels.shape[-1] == 3
    np.testing.assert_array_equal(img.pixels, pydicom.dcmread(path).pixel_array.astype(np.float32))


# ------------------------------------------------------------------------- errors


def test_truncated_file(tmp_path):
    src = _testdata("CT_small.dcm")
    data = open(src, "rb").read()
    # cut in the header, in the middle of the pixels, and just before their end (CT_small
    # carries 138 bytes of elements after PixelData, so end the file well before that)
    for n, cut in enumerate((300, len(data) // 2, len(data) - 1000)):
        bad = tmp_path / f"truncated_{n}.dcm"
        bad.write_bytes(data[:cut])
        with pytest.raises((CorruptFileError, InconsistentDataError)) as info:
            read_dicom(bad)
        assert str(bad) in str(info.value)


def test_text_file_renamed(tmp_path):
    bad = tmp_path / "report.dcm"
    bad.write_text("FINDINGS: the heart is normal in size. No pleural effusion.\n" * 20)
    with pytest.raises(CorruptFileError) as info:
        read_dicom(bad)
    assert str(bad) in str(info.value)


def test_missing_pixel_data(tmp_path, image01):
    path = write_cxr_dicom(tmp_path / "ok.dcm", image01, **IDS)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    bad = tmp_path / "nopixels.dcm"
    ds.save_as(bad)
    with pytest.raises(CorruptFileError) as info:
        read_dicom(bad)
    assert str(bad) in str(info.value) and "PixelData" in str(info.value)


@pytest.mark.parametrize("rows_delta", [+5, -5])
def test_pixel_size_disagrees_with_header(tmp_path, image01, rows_delta):
    path = write_cxr_dicom(tmp_path / "ok.dcm", image01, **IDS)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Rows + rows_delta  # header no longer matches the bytes
    bad = tmp_path / "badsize.dcm"
    ds.save_as(bad)
    with pytest.raises(InconsistentDataError) as info:
        read_dicom(bad)
    assert str(bad) in str(info.value)


def test_zero_padding_tolerated():
    # pydicom's MR_small_padded carries 128 zero bytes after the pixels
    path = _testdata("MR_small_padded.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _reference(path)
        img = read_dicom(path)
    np.testing.assert_array_equal(img.pixels, ref.astype(np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(MedmmInputError) as info:
        read_dicom(tmp_path / "nope.dcm")
    assert "nope.dcm" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(modality="CT"),
        dict(photometric="RGB"),
        dict(bits_stored=20),
        dict(study_date="2024-01-31"),
        dict(sop_uid="not.a.uid!"),
    ],
)
def test_write_rejects_bad_arguments(tmp_path, image01, kwargs):
    with pytest.raises(ValueError):
        write_cxr_dicom(tmp_path / "x.dcm", image01, **{**IDS, **kwargs})


@pytest.mark.parametrize("bad", [np.full((4, 4), 1.5), np.full((4, 4), np.nan), np.zeros((2, 3, 3))])
def test_write_rejects_bad_images(tmp_path, bad):
    with pytest.raises(ValueError):
        write_cxr_dicom(tmp_path / "x.dcm", bad, **IDS)


@pytest.mark.parametrize("allocated", [8, 16])
@pytest.mark.parametrize("signed", [0, 1])
def test_native_pixel_view_equals_pixel_array(allocated, signed):
    """The direct view of uncompressed PixelData equals pydicom's ``pixel_array`` for
    every Bits Stored, with random garbage in the bits above it (masked or sign-extended
    by pydicom), in values, dtype and shape; odd 8-bit frames carry their pad byte."""
    rng = np.random.default_rng(allocated + signed)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    seen = 0
    for stored in range(1, allocated + 1):
        for rows, cols in ((5, 7), (16, 16)):
            ds = copy.deepcopy(base)
            ds.Rows, ds.Columns = rows, cols
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, stored, stored - 1, signed
            data = rng.integers(0, 256, rows * cols * allocated // 8, dtype=np.uint8).tobytes()
            ds.PixelData = data + b"\0" * (len(data) % 2)
            layout = native_pixel_layout(ds)
            assert layout is not None
            ours = layout.pixels(ds.PixelData)
            np.testing.assert_array_equal(ours, ds.pixel_array, strict=True)
            seen += 1
    assert seen == 2 * allocated


def test_native_pixel_view_declines_what_it_does_not_handle():
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert native_pixel_layout(base) is not None
    for change in (
        lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", pydicom.uid.ExplicitVRBigEndian),
        lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", pydicom.uid.JPEGBaseline8Bit),
        lambda ds: setattr(ds, "HighBit", 12),
        lambda ds: setattr(ds, "BitsAllocated", 32),
        lambda ds: setattr(ds, "NumberOfFrames", 2),
        lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"),
    ):
        ds = copy.deepcopy(base)
        change(ds)
        assert native_pixel_layout(ds) is None
    layout = native_pixel_layout(base)
    assert layout.pixels(base.PixelData[:-2]) is None  # short: pydicom decides (and raises)
    assert layout.pixels(base.PixelData + b"\0\0") is None
