"""JPEG / PNG radiographs: real files written by Pillow, read back by medmm.io.raster and by
the training data path (medmm.data.decoded_cohort.load_xray_input)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medmm.data.decoded_cohort import load_xray_input, normalise_radiograph
from medmm.demo.writers import write_cxr_dicom
from medmm.io import CorruptFileError, MedmmInputError, check_raster, raster_format, read_raster


def gradient(rows: int = 40, cols: int = 48, top: int = 255) -> np.ndarray:
    """A smooth test picture (JPEG keeps it close)."""
    y, x = np.mgrid[0:rows, 0:cols]
    return np.round(top * (0.5 * y / (rows - 1) + 0.5 * x / (cols - 1))).astype(np.int64)


def test_8bit_png_reads_exactly_and_jpeg_closely(tmp_path):
    picture = gradient().astype(np.uint8)
    Image.fromarray(picture, mode="L").save(tmp_path / "a.png")
    Image.fromarray(picture, mode="L").save(tmp_path / "a.jpg", quality=95)
    png, jpg = read_raster(tmp_path / "a.png"), read_raster(tmp_path / "a.jpg")
    assert png.format == "PNG" and png.bit_depth == 8 and png.pixels.dtype == np.float32
    np.testing.assert_array_equal(png.pixels, picture.astype(np.float32))
    assert jpg.format == "JPEG" and jpg.pixels.shape == (40, 48)
    assert np.abs(jpg.pixels - picture).mean() < 2.0  # lossy, but the same picture
    assert check_raster(tmp_path / "a.jpg") == ("JPEG", 40, 48)


def test_16bit_png_keeps_its_range(tmp_path):
    picture = gradient(top=65535).astype(np.uint16)
    Image.fromarray(picture).save(tmp_path / "deep.png")
    image = read_raster(tmp_path / "deep.png")
    assert image.bit_depth == 16 and image.pixels.max() == 65535.0
    np.testing.assert_array_equal(image.pixels, picture.astype(np.float32))


def test_colour_is_reduced_to_luminance(tmp_path):
    rgb = np.stack([gradient(), 255 - gradient(), np.full((40, 48), 60)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114  # ITU-R 601-2
    assert np.abs(read_raster(tmp_path / "rgb.png").pixels - expected).max() <= 1.0


def test_format_comes_from_the_content_not_the_name(tmp_path):
    Image.fromarray(gradient().astype(np.uint8), mode="L").save(tmp_path / "x.png", format="JPEG")
    assert raster_format(tmp_path / "x.png") == "JPEG" and read_raster(tmp_path / "x.png").format == "JPEG"
    (tmp_path / "notes.jpg").write_text("not an image")
    assert raster_format(tmp_path / "notes.jpg") is None
    with pytest.raises(CorruptFileError, match="notes.jpg: not a JPEG or PNG"):
        read_raster(tmp_path / "notes.jpg")
    with pytest.raises(MedmmInputError, match="missing.png"):
        read_raster(tmp_path / "missing.png")


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png"])
def test_a_file_cut_at_half_is_truncated_before_and_when_decoding(tmp_path, name):
    Image.fromarray(gradient().astype(np.uint8), mode="L").save(tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    for reader in (check_raster, read_raster):
        with pytest.raises(CorruptFileError, match=f"{name}: truncated"):
            reader(tmp_path / name)


def test_damaged_png_data_is_a_corrupt_file(tmp_path):
    Image.fromarray(gradient().astype(np.uint8), mode="L").save(tmp_path / "bad.png")
    data = bytearray((tmp_path / "bad.png").read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 16] = bytes(16)  # the compressed stream, IEND kept
    (tmp_path / "bad.png").write_bytes(bytes(data))
    assert check_raster(tmp_path / "bad.png") == ("PNG", 40, 48)  # complete: the header check passes
    with pytest.raises(CorruptFileError, match="bad.png"):
        read_raster(tmp_path / "bad.png")


def test_training_input_reads_jpeg_png_and_dicom_alike(tmp_path):
    picture = gradient(64, 64).astype(np.uint8)
    Image.fromarray(picture, mode="L").save(tmp_path / "cxr.png")
    write_cxr_dicom(tmp_path / "cxr.dcm", picture / 255.0, patient_id="P", patient_name="TEST^P",
                    study_uid="1.2.3.4", series_uid="1.2.3.4.5", sop_uid="1.2.3.4.5.6", study_date="20240101",
                    bits_stored=8)
    from_png, from_dicom = load_xray_input(tmp_path / "cxr.png", 16), load_xray_input(tmp_path / "cxr.dcm", 16)
    # independent: scale the written array and area-average it to 16 x 16 (4 x 4 blocks)
    expected = normalise_radiograph(picture.astype(np.float32)).reshape(16, 4, 16, 4).mean(axis=(1, 3))
    assert from_png.shape == (1, 16, 16)
    np.testing.assert_allclose(from_png[0], expected, atol=1e-5)
    np.testing.assert_allclose(from_dicom, from_png, atol=1e-5)  # the same picture, either format
