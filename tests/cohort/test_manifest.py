import pandas as pd
import pytest

from medmm.cohort.manifest import (
    LeakageError,
    Manifest,
    check_no_leakage,
    entry_sha256,
    hashed_files,
    patient_level_split,
    resolve_under,
)


def test_split_is_by_patient_and_deterministic():
    patients = [f"P{i // 3}" for i in range(300)]  # three studies per patient
    a = patient_level_split(patients, (0.7, 0.1, 0.2), seed=3)
    assert a == patient_level_split(patients, (0.7, 0.1, 0.2), seed=3)
    counts = pd.Series(a).value_counts()
    assert counts["train"] == 70 and counts["val"] == 10 and counts["test"] == 20


def test_leakage_is_detected():
    table = pd.DataFrame({"patient_id": ["A", "A", "B"], "split": ["train", "test", "val"]})
    with pytest.raises(LeakageError, match="1 patient"):
        check_no_leakage(table)


def test_paths_cannot_escape_the_root(tmp_path):
    assert resolve_under(tmp_path, "a/b.dcm") == (tmp_path / "a/b.dcm").resolve()
    with pytest.raises(ValueError, match="escapes"):
        resolve_under(tmp_path, "../../etc/passwd")


def test_demo_manifest_hashes_and_splits(tiny_cohort):
    from medmm.cohort.manifest import file_sha256

    m = Manifest.load(tiny_cohort)
    assert set(m.table["modality"]) == {"xray", "ecg", "report"}
    row = m.table[m.table["modality"] == "report"].iloc[0]
    assert file_sha256(m.resolve(row["path"])) == row["sha256"]
    assert set(m.table["split"]) <= {"train", "val", "test"}
    assert len(m.content_hash()) == 64


def test_entry_hash_covers_the_wfdb_signal_file(tiny_cohort):
    m = Manifest.load(tiny_cohort)
    for row in m.table.itertuples():
        assert entry_sha256(m.resolve(row.path)) == row.sha256
    header = m.resolve(m.table[m.table["modality"] == "ecg"].iloc[0]["path"])
    assert hashed_files(header) == (header, header.with_suffix(".dat"))
