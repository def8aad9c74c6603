"""The decoded-cohort cache notices changed files: a study whose files changed size or
modification time is read again (skipped and counted when its content no longer matches
the manifest's sha256), the other studies come from the cache without a read, and
``strict`` verifies every file's sha256 before anything is decoded, also catching a
change that restored size and time. Real cohort files, real readers."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from medmm.cohort.manifest import Manifest
from medmm.data import decoded_cohort
from medmm.data.decoded_cohort import decode_cohort
from medmm.io.errors import MedmmInputError
from medmm.pipelines.pretrain import main
from tests.conftest import TINY_CONFIG, tiny_overrides

SETTINGS = {"image_size": 32, "ecg_fs": 100, "workers": 1}


@pytest.fixture
def cohort(tiny_cohort, tmp_path):
    """A private copy of the tiny cohort whose cache is built."""
    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, root)
    manifest = Manifest.load(root)
    first = decode_cohort(manifest, cache_dir=tmp_path / "cache", **SETTINGS)
    assert len(first) == 60 and not first.skipped
    return manifest, first


@pytest.fixture
def xray_reads(monkeypatch):
    """The X-ray files decoded (every decoded study reads its X-ray first)."""
    reads = []
    real = decoded_cohort.load_xray_input

    def counting(path, image_size):
        reads.append(path)
        return real(path, image_size)

    monkeypatch.setattr(decoded_cohort, "load_xray_input", counting)
    return reads


def _study_file(manifest: Manifest, study: int, modality: str):
    row = manifest.studies().iloc[study]
    return row["study_id"], manifest.resolve(row[modality])


def _bump_mtime(path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_changed_files_are_reread_per_study_and_the_rest_come_from_the_cache(cohort, tmp_path, xray_reads):
    manifest, first = cohort
    truncated_id, dcm = _study_file(manifest, 0, "xray")
    original_dcm = dcm.read_bytes()
    dcm.write_bytes(original_dcm[:700])
    flipped_id, hea = _study_file(manifest, 1, "ecg")
    dat = hea.with_suffix(".dat")
    data = bytearray(dat.read_bytes())
    data[100:110] = bytes(255 - b for b in data[100:110])  # same size, other samples
    dat.write_bytes(bytes(data))
    _bump_mtime(dat)
    touched_id, report = _study_file(manifest, 2, "report")
    _bump_mtime(report)  # same content, newer time: read again, still good

    second = decode_cohort(manifest, cache_dir=tmp_path / "cache", **SETTINGS)
    assert [p.parent.name for p in xray_reads] == [touched_id]  # only the touched study was decoded
    assert [(s["study_id"], s["problem"]) for s in second.skipped] == [
        (truncated_id, decoded_cohort.CHANGED_AFTER_INGEST), (flipped_id, decoded_cohort.CHANGED_AFTER_INGEST)]
    assert [s["path"] for s in second.skipped] == [str(dcm.relative_to(manifest.root)),
                                                   str(hea.relative_to(manifest.root))]
    assert len(second) == 58 and truncated_id not in second.study_ids and flipped_id not in second.study_ids
    keep = np.isin(first.study_ids, second.study_ids)
    np.testing.assert_array_equal(first.study_ids[keep], second.study_ids)
    np.testing.assert_array_equal(first.xray[keep], second.xray)
    np.testing.assert_array_equal(first.ecg[keep], second.ecg)
    np.testing.assert_array_equal(first.labels[keep], second.labels)
    assert len(list((tmp_path / "cache").glob("decoded-*.npz"))) == 1  # updated in place

    xray_reads.clear()
    third = decode_cohort(manifest, cache_dir=tmp_path / "cache", **SETTINGS)
    assert xray_reads == [] and third.skipped == second.skipped and len(third) == 58  # counted, not retried

    dcm.write_bytes(original_dcm)  # the file restored: its study is read again and is good
    fourth = decode_cohort(manifest, cache_dir=tmp_path / "cache", **SETTINGS)
    assert [p.parent.name for p in xray_reads] == [truncated_id]
    assert [s["study_id"] for s in fourth.skipped] == [flipped_id] and len(fourth) == 59
    np.testing.assert_array_equal(fourth.xray[list(fourth.study_ids).index(truncated_id)],
                                  first.xray[list(first.study_ids).index(truncated_id)])


def test_strict_verifies_every_hash_and_catches_a_change_that_kept_size_and_time(cohort, tmp_path, xray_reads):
    manifest, _ = cohort
    _, dcm = _study_file(manifest, 3, "xray")
    st = dcm.stat()
    data = bytearray(dcm.read_bytes())
    data[-20:] = bytes(255 - b for b in data[-20:])  # pixel bytes, same size
    dcm.write_bytes(bytes(data))
    os.utime(dcm, ns=(st.st_atime_ns, st.st_mtime_ns))  # time restored: stamps cannot see it

    lenient = decode_cohort(manifest, cache_dir=tmp_path / "cache", **SETTINGS)
    assert xray_reads == [] and not lenient.skipped  # served from the cache
    with pytest.raises(MedmmInputError) as info:
        decode_cohort(manifest, cache_dir=tmp_path / "cache", strict=True, **SETTINGS)
    assert info.value.path == str(dcm) and info.value.problem == decoded_cohort.CHANGED_AFTER_INGEST
    assert xray_reads == []  # refused before decoding anything
    with pytest.raises(MedmmInputError, match="xray.dcm"):  # and without a cache
        decode_cohort(manifest, cache_dir=tmp_path / "other-cache", strict=True, **SETTINGS)


def test_strict_command_exits_2_with_one_line_naming_the_changed_file(cohort, tmp_path, capsys):
    manifest, _ = cohort
    _, hea = _study_file(manifest, 4, "ecg")
    dat = hea.with_suffix(".dat")
    st = dat.stat()
    data = bytearray(dat.read_bytes())
    data[:4] = bytes(255 - b for b in data[:4])
    dat.write_bytes(bytes(data))
    os.utime(dat, ns=(st.st_atime_ns, st.st_mtime_ns))
    code = main(["--config", str(TINY_CONFIG),
                 *tiny_overrides(manifest.root, tmp_path / "run", "data.strict=true", "trainer.max_epochs=1")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert [line for line in err if line.startswith("error:")] == [
        f"error: {hea}: {decoded_cohort.CHANGED_AFTER_INGEST}"]
