"""A failing command ends its MLflow run FAILED with a one-line reason, and bad input is one
line on stderr with exit code 2."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

import medmm.workflows.contrastive.run as contrastive_run
from medmm.pipelines import pretrain
from medmm.tracking.pipeline_run import FAILURE_TAG, failure_reason
from tests.conftest import TINY_CONFIG, tiny_overrides


def runs_of(store: str):
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_an_exception_during_evaluation_ends_the_run_failed_with_a_reason(tiny_cohort, tmp_path, monkeypatch):
    def broken_evaluation(*args, **kwargs):
        raise RuntimeError(f"evaluation broke reading {tiny_cohort}/MRN99812_ecg.hea")

    monkeypatch.setattr(contrastive_run, "evaluate_contrastive", broken_evaluation)
    overrides = tiny_overrides(tiny_cohort, tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    with pytest.raises(RuntimeError, match="evaluation broke"):
        pretrain.main(["--config", str(TINY_CONFIG), *overrides])
    (run,) = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    reason = run.data.tags[FAILURE_TAG]
    assert reason == "RuntimeError: evaluation broke reading <path>"
    assert "MRN99812" not in reason and str(tiny_cohort) not in reason


def test_a_wrong_data_root_is_one_line_exit_2_and_no_run_left_running(tmp_path, capsys):
    missing = tmp_path / "no_such_cohort"
    code = pretrain.main(["--config", str(TINY_CONFIG), *tiny_overrides(missing, tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    # MLflow and Lightning log their own notes (store created, experiment created); medmm says one line
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no_such_cohort" in errors[0], err
    assert "Traceback" not in err
    # the data root is checked before a run is opened; a run opened before a failure would end FAILED
    runs = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert all(r.info.status == "FAILED" for r in runs)
    assert all(r.data.tags[FAILURE_TAG].count("\n") == 0 for r in runs)
    assert all(str(missing) not in r.data.tags[FAILURE_TAG] for r in runs)


def test_failure_reasons_carry_no_paths_or_file_names():
    assert failure_reason(FileNotFoundError(2, "No such file", "/data/MRN1/x.dcm")) == \
        "FileNotFoundError: [Errno 2] No such file: '<path>'"
    assert failure_reason(ValueError("bad header in MRN7_scan.nii.gz\nsecond line")) == \
        "ValueError: bad header in <path>"
    assert len(failure_reason(ValueError("x" * 1000))) <= 250
