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
    InconsistentDataError,
    MedmmInputError,
    read_dicom,
    read_ecg,
    read_nifti,
    read_wsi,
)
from medmm.io.guard import LIMIT_ENV

REPO = Path(__file__).resolve().parents[2]


def _refused_under_memory_cap(reader: str, path: Path) -> str:
    """Run ``medmm.io.<reader>(path)`` in a subprocess limited to 4 GiB of address space with
    medmm's own allocation guard out of the way; -> the medmm error's message."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
        import medmm.io
        try:
            medmm.io.{reader}(sys.argv[1])
        except medmm.io.MedmmInputError as exc:
            print("REFUSED", exc)
        else:
            print("READ")
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False, env={"PATH": "/usr/bin:/bin", LIMIT_ENV: str(2**50)})
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
