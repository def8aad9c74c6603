"""The package-level API of medmm.io: every reader, result type and error type, without torch."""

from __future__ import annotations

import subprocess
import sys

import medmm.io
from medmm.io import read_dicom, read_dicom_series, read_ecg, read_nifti, read_report, read_table, read_wsi
from tests.conftest import REPO


def test_readers_import_from_the_package():
    assert all(callable(f) for f in (read_dicom, read_dicom_series, read_nifti, read_ecg, read_wsi, read_table,
                                     read_report))


def test_all_names_exist_and_errors_share_one_base():
    assert len(set(medmm.io.__all__)) == len(medmm.io.__all__)
    for name in medmm.io.__all__:
        assert hasattr(medmm.io, name), name
    assert issubclass(medmm.io.CorruptFileError, medmm.io.MedmmInputError)
    assert issubclass(medmm.io.InconsistentDataError, medmm.io.MedmmInputError)


def test_importing_io_does_not_import_torch():
    code = "import sys, medmm.io; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
