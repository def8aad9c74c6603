"""Stable patient-level splits and the leakage gate that runs before every training run."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from medmm.cohort.manifest import LeakageError, Manifest
from medmm.cohort.splits import stable_patient_split, verify_before_training


def test_stable_split_fractions_and_no_moves_when_the_cohort_grows():
    first = stable_patient_split([f"P{i}" for i in range(5000)], (0.7, 0.1, 0.2), seed=0)
    counts = pd.Series(first).value_counts(normalize=True)
    assert abs(counts["train"] - 0.7) < 0.03 and abs(counts["val"] - 0.1) < 0.02 and abs(counts["test"] - 0.2) < 0.03
    grown = stable_patient_split([f"P{i}" for i in range(8000)], (0.7, 0.1, 0.2), seed=0)
    assert all(grown[p] == s for p, s in first.items())
    other = stable_patient_split([f"P{i}" for i in range(5000)], (0.7, 0.1, 0.2), seed=1)
    assert sum(other[p] != s for p, s in first.items()) > 1000


def _table(**over):
    base = {"patient_id": ["A", "A", "B"], "study_id": ["s1", "s2", "s3"], "modality": "xray",
            "path": ["a/1", "a/2", "b/3"], "sha256": "0", "split": ["train", "train", "test"]}
    base.update(over)
    return pd.DataFrame(base)


def test_gate_refuses_leaks_without_naming_patients(tmp_path):
    assert len(verify_before_training(Manifest(tmp_path, _table()))) == 64
    cases = {"more than one split": _table(split=["train", "test", "test"]),
             "more than one patient": _table(study_id=["s1", "s1", "s1"], split=["train", "train", "train"]),
             "other than": _table(split=["train", "train", "holdout"])}
    for message, table in cases.items():
        with pytest.raises(LeakageError, match=message) as err:
            verify_before_training(Manifest(tmp_path, table))
        assert "A" not in str(err.value).replace("A patient", "")
    with pytest.raises(ValueError, match="escapes"):
        verify_before_training(Manifest(tmp_path, _table(path=["a/1", "../../etc/passwd", "b/3"])))


def test_pretraining_refuses_a_leaky_manifest(tiny_cohort, tmp_path):
    """The pretrain DataModule runs the gate before any batch."""
    from medmm.data.datamodule import PretrainDataModule
    from medmm.workflows.contrastive.config import PretrainConfig

    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, root, ignore=shutil.ignore_patterns(".cache"))
    table = pd.read_parquet(root / "manifest.parquet")
    patient = table.groupby("patient_id").size().idxmax()  # one with several studies (files)
    rows = table.index[table["patient_id"] == patient]
    table.loc[rows[0], "split"] = "test" if table.loc[rows[0], "split"] != "test" else "train"
    table.loc[rows[1:], "split"] = "val"  # the same patient now sits in two splits
    table.to_parquet(root / "manifest.parquet", index=False)
    cfg = PretrainConfig.model_validate({"data": {"root": str(root), "cache_dir": str(tmp_path / "c")}})
    with pytest.raises(LeakageError):
        PretrainDataModule(cfg.data, max_tokens=16).setup()
