"""Files whose headers declare the impossible: each is refused with a medmm error naming the
file, before any large allocation, and a MemoryError is never reported as a bad file.
The memory cases run in a subprocess under a 4 GiB address-space limit (RLIMIT_AS), so an
allocation of the declared size fails there instead of being silently granted."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from medmm.demo.writers import write_pyramidal_tiff, write_wfdb
from medmm.io import (
    CorruptFileError,
    InconsistentDataError,
    MedmmInputError,
    read_dicom,
    read_ecg,
    read_nifti,
    read_wsi,
)
from medmm.io.guard import LIMIT_ENV

REPO = Path(__file__).resolve().parents[2]


def _refused_under_memory_cap(reader: str, path: Path, decoded_limit: int = 2**50, then: str = "") -> str:
    """Run ``medmm.io.<reader>(path)<then>`` in a subprocess limited to 4 GiB of address space with
    medmm's own allocation guard at ``decoded_limit`` (default: out of the way); -> the medmm
    error's message. A reader that aborts the process fails here."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
        import medmm.io
        try:
            medmm.io.{reader}(sys.argv[1]){then}
        except medmm.io.MedmmInputError as exc:
            print("REFUSED", exc)
        else:
            print("READ")
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False, env={"PATH": "/usr/bin:/bin", LIMIT_ENV: str(decoded_limit)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("REFUSED"), proc.stdout
    return proc.stdout


def test_nifti_scaling_that_overflows_float32_is_refused(tmp_path):
    img = nib.Nifti1Image(np.arange(1000, dtype=np.int16).reshape(10, 10, 10), np.eye(4))
    img.header.set_slope_inter(1e38, 0)
    path = tmp_path / "scaled.nii"
    img.to_filename(path)
    with pytest.raises(InconsistentDataError, match="infinite") as info:
        read_nifti(path)
    assert info.value.path == str(path)


def test_small_nifti_gz_declaring_gigabytes_is_refused_before_allocating(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((1124, 1124, 1124))
    header.set_data_dtype(np.float64)  # 10.6 GiB of stored values
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(2**20), 9))
    assert path.stat().st_size < 16_000
    message = _refused_under_memory_cap("read_nifti", path)
    assert "decompressed stream holds" in message and str(path) in message


def test_dicom_element_length_past_the_end_is_refused_before_allocating(tmp_path):
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.find(b"\xe0\x7f\x10\x00OW\x00\x00")  # (7FE0,0010) Pixel Data, explicit VR OW
    data[at + 8:at + 12] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "length.dcm"
    path.write_bytes(bytes(data))
    message = _refused_under_memory_cap("read_dicom", path)
    assert "declares 4294967280 bytes" in message and str(path) in message


def test_wfdb_gain_that_overflows_float32_is_refused(tmp_path):
    hea = write_wfdb(tmp_path / "rec", np.full((2, 100), 0.5), 500, ["I", "II"])
    hea.write_text(hea.read_text().replace("1000.0(0)/mV", "1e-300(0)/mV").replace("1000(0)/mV", "1e-300(0)/mV"))
    assert "1e-300" in hea.read_text()
    with pytest.raises(InconsistentDataError, match="infinite"):
        read_ecg(hea)


def test_wfdb_data_file_too_short_for_each_channels_own_format_is_refused(tmp_path):
    hea = write_wfdb(tmp_path / "rec", np.full((2, 100), 0.5), 500, ["I", "II"], fmt="16")
    lines = hea.read_text().splitlines()
    # 1 + 4 bytes per frame declared, the file holds 2 + 2 (the first channel's format alone fits)
    lines[1], lines[2] = lines[1].replace(" 16 ", " 80 ", 1), lines[2].replace(" 16 ", " 32 ", 1)
    hea.write_text("\n".join(lines) + "\n")
    with pytest.raises(InconsistentDataError, match="needs 500 bytes"):
        read_ecg(hea)


def test_memory_error_is_raised_not_reported_as_a_corrupt_file(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(pydicom, "dcmread", out_of_memory)
    with pytest.raises(MemoryError):
        read_dicom(get_testdata_file("CT_small.dcm"))
    monkeypatch.setattr(nib, "load", out_of_memory)
    with pytest.raises(MemoryError):
        read_nifti(Path(data_path) / "anatomical.nii")


def _small_pyramid(tmp_path: Path) -> Path:
    """256 x 256 stained tissue on glass in 64-pixel deflate tiles; level 2 is one tile."""
    canvas = np.full((256, 256, 3), 242, np.uint8)
    canvas[:128, :128] = (150, 60, 140)
    return write_pyramidal_tiff(tmp_path / "slide.tiff", canvas, mpp=0.25, n_levels=3, tile=64)


def _overwrite_tag(path: Path, page: int, name: str, value: int) -> None:
    """Set one IFD entry to a single LONG value, in place."""
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[page].tags[name].offset
    data = bytearray(path.read_bytes())
    data[entry + 2:entry + 12] = struct.pack("<HII", 4, 1, value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tile_length", [2**31 - 1, 2**30])
def test_wsi_tile_too_large_to_allocate_is_refused_before_openslide_reads_it(tmp_path, tile_length):
    # OpenSlide allocates a whole RGBA tile before decoding it, and GLib aborts the process
    # when that fails: 64 x (2**31 - 1) x 4 bytes is 512 GB
    path = _small_pyramid(tmp_path)
    _overwrite_tag(path, 2, "TileLength", tile_length)
    message = _refused_under_memory_cap("read_wsi", path, decoded_limit=2**31, then=".read_level(2)")
    assert "TIFF image 2" in message and str(path) in message


def test_wsi_damaged_deflate_tile_is_refused_where_it_is_read(tmp_path):
    path = _small_pyramid(tmp_path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[2]
        stream_end = page.dataoffsets[0] + page.databytecounts[0]
    data = bytearray(path.read_bytes())
    data[stream_end - 1] ^= 0xFF  # the deflate stream's adler-32: libtiff stops inflating before it
    path.write_bytes(bytes(data))
    with read_wsi(path) as slide:
        assert slide.read_region(0, 0, 0, (64, 64)).shape == (64, 64, 3)  # level 0's tiles are intact
        with pytest.raises(CorruptFileError, match="TIFF image 2's tile 0 is damaged") as info:
            slide.read_level(2)
    assert info.value.path == str(path)


def test_wsi_empty_tile_is_refused_not_read_as_glass(tmp_path):
    path = _small_pyramid(tmp_path)
    _overwrite_tag(path, 2, "TileByteCounts", 0)  # OpenSlide reads a 0-byte tile as transparent: white
    with read_wsi(path) as slide, pytest.raises(CorruptFileError, match="holds no data") as info:
        slide.read_level(2)
    assert info.value.path == str(path)


def test_wsi_level_larger_than_its_tiles_is_refused(tmp_path):
    canvas = np.full((512, 512, 3), 242, np.uint8)
    canvas[:256, :256] = (150, 60, 140)  # stained tissue on glass
    path = write_pyramidal_tiff(tmp_path / "slide.tiff", canvas, mpp=0.25, n_levels=1, tile=256)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[0].tags["ImageLength"].offset
    data[entry + 2:entry + 12] = struct.pack("<HII", 4, 1, 100000)  # LONG, 1 value: 100000 rows over 4 tiles
    path.write_bytes(bytes(data))
    with pytest.raises(InconsistentDataError, match="512x100000") as info:
        read_wsi(path)
    assert isinstance(info.value, MedmmInputError) and info.value.path == str(path)
