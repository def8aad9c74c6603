"""Pipelines adapt to the cohort and check their inputs before they build anything: an X-ray +
report cohort pretrains X-ray <-> report only; a wrong data root, a modality the cohort lacks,
a split too small, an unwritable or unreachable tracking store, a pretrained model that does not
exist are each one line, exit code 2, and no MLflow run (not even a store) left behind."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medmm.cohort.manifest import MANIFEST_NAME
from medmm.config.core import ConfigError
from medmm.io.errors import MedmmInputError
from medmm.pipelines import pretrain
from medmm.workflows.preflight import CohortNeeds, check_cohort, check_pretrained_source, read_cohort
from tests.conftest import PTU_TINY, TINY_CONFIG, tiny_overrides


def derived_cohort(src: Path, dst: Path, modalities: tuple[str, ...], splits: dict[str, str] | None = None) -> Path:
    """A copy of the cohort at ``src`` holding only the files of ``modalities`` (no labs
    table, no reference levels: as a real export), with ``splits`` renamed (e.g. val -> train)."""
    table = pd.read_parquet(src / MANIFEST_NAME)
    table = table[table["modality"].isin(modalities)].reset_index(drop=True)
    if splits:
        table["split"] = table["split"].replace(splits)
    for rel in table["path"]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    table.to_parquet(dst / MANIFEST_NAME, index=False)
    return dst


@pytest.fixture(scope="module")
def xray_report_cohort(tiny_cohort, tmp_path_factory) -> Path:
    return derived_cohort(tiny_cohort, tmp_path_factory.mktemp("xr") / "cohort", ("xray", "report"))


def errors_of(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith(("error:", "config error:"))]


def no_store_left(tmp_path: Path) -> bool:
    return not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_an_xray_report_cohort_trains_and_logs_xray_report_only(xray_report_cohort, tmp_path, capsys, caplog):
    """...with the default modalities and no config edit; and a batch size larger than the train
    split trains in one batch of the whole split."""
    code = pretrain.main(["--config", str(TINY_CONFIG), *tiny_overrides(xray_report_cohort, tmp_path),
                          "trainer.max_epochs=1", "trainer.precision=32-true", "eval.memory_retrieval=false",
                          "data.batch_size=1000"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    params = {key: json.loads(run.data.params[key]) for key in ("modalities", "model.modalities", "loss.pairs")}
    assert params == {"modalities": ["xray", "report"], "model.modalities": ["xray", "report"],
                      "loss.pairs": [["xray", "report"]]}
    metrics = run.data.metrics
    for key in ("test.xray_to_report.R_at_1", "test.report_to_xray.P_at_5", "test.zeroshot_xray.cardiomegaly"):
        assert key in metrics, key
    assert not [key for key in metrics if "ecg" in key], sorted(metrics)
    assert "ecg" not in out.out  # the printed table
    assert "not in the cohort: ecg" in caplog.text  # the one note saying what was left out
    n_train = read_cohort(xray_report_cohort).studies["train"]
    assert metrics["data.train_batch_size"] == n_train < 1000
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_step")] == [0]  # one batch
    assert "data.batch_size 1000 is larger than the train split" in caplog.text
    # a downstream workflow's pretrained source is looked up in this store before its run opens
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check_pretrained_source(f"runs:/{run.info.run_id}/model", store, "pretrained.source")
    with pytest.raises(MedmmInputError, match=r"^models:/medmm-more@champion: no such registered model in "):
        check_pretrained_source("models:/medmm-more@champion", store, "pretrained.source")
    with pytest.raises(MedmmInputError, match=r"^runs:/0123abcd/model: no such run"):
        check_pretrained_source("runs:/0123abcd/model", store, "pretrained.source")


def test_asking_for_ecg_on_an_xray_report_cohort_is_one_line_and_no_run(xray_report_cohort, tmp_path, capsys):
    code = pretrain.main(["--config", str(TINY_CONFIG), *tiny_overrides(xray_report_cohort, tmp_path),
                          "modalities=[xray,ecg,report]"])
    assert code == 2
    assert errors_of(capsys) == ["config error: modalities: the cohort has no ecg (it has xray, report)"]
    assert no_store_left(tmp_path)


def test_a_wrong_data_root_is_one_line_exit_2_and_creates_no_run(tmp_path, capsys):
    code = pretrain.main(["--config", str(TINY_CONFIG), *tiny_overrides(tmp_path / "no_such_cohort", tmp_path)])
    assert code == 2
    assert errors_of(capsys) == [f"error: {tmp_path / 'no_such_cohort'}: no such cohort folder (data.root)"]
    assert no_store_left(tmp_path)


def test_a_folder_without_manifest_names_the_manifest(tmp_path, capsys):
    (tmp_path / "export").mkdir()
    assert pretrain.main(["--config", str(TINY_CONFIG), *tiny_overrides(tmp_path / "export", tmp_path)]) == 2
    (line,) = errors_of(capsys)
    assert line.startswith(f"error: {tmp_path / 'export' / MANIFEST_NAME}: no cohort manifest")
    assert no_store_left(tmp_path)


def test_ptunifier_on_a_cohort_without_reports_is_one_line_and_no_run(tiny_cohort, tmp_path, capsys):
    cohort = derived_cohort(tiny_cohort, tmp_path / "cohort", ("xray", "ecg"))
    assert pretrain.main(["--config", str(PTU_TINY), *tiny_overrides(cohort, tmp_path)]) == 2
    (line,) = errors_of(capsys)
    assert "PTUnifier pretraining (X-ray + report pairs) needs xray, report" in line
    assert "has no report (it has ecg, xray)" in line
    assert no_store_left(tmp_path)


def test_an_empty_validation_split_is_one_line_naming_it(tiny_cohort, tmp_path, capsys):
    cohort = derived_cohort(tiny_cohort, tmp_path / "cohort", ("xray", "report"), splits={"val": "train"})
    assert pretrain.main(["--config", str(TINY_CONFIG), *tiny_overrides(cohort, tmp_path)]) == 2
    (line,) = errors_of(capsys)
    assert "the val split holds 0 stud(ies) with xray; contrastive pretraining needs at least 1" in line
    assert no_store_left(tmp_path)


def test_a_tracking_store_in_an_unwritable_place_is_one_line_and_no_run(xray_report_cohort, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be\n")
    store = f"sqlite:///{blocker / 'mlflow.db'}"
    overrides = [*tiny_overrides(xray_report_cohort, tmp_path), f"tracking.uri={store}"]
    assert pretrain.main(["--config", str(TINY_CONFIG), *overrides]) == 2
    assert errors_of(capsys) == [f"config error: tracking.uri {store}: {blocker} is a file, not a folder"]
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("not a database\n")
    overrides[-1] = f"tracking.uri=sqlite:///{not_sqlite}"
    assert pretrain.main(["--config", str(TINY_CONFIG), *overrides]) == 2
    assert errors_of(capsys)[0].endswith(f"{not_sqlite} is not a SQLite database")
    assert not_sqlite.read_text() == "not a database\n"
    assert no_store_left(tmp_path)


def test_a_tracking_server_that_does_not_answer_is_one_line_and_no_run(xray_report_cohort, tmp_path, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    overrides = [*tiny_overrides(xray_report_cohort, tmp_path), f"tracking.uri={uri}"]
    assert pretrain.main(["--config", str(TINY_CONFIG), *overrides]) == 2
    (line,) = errors_of(capsys)
    assert line.startswith(f"config error: tracking.uri {uri}: no tracking server answers")


def test_cohort_facts_and_needs(tiny_cohort, xray_report_cohort):
    facts = read_cohort(tiny_cohort)
    assert facts.modalities == ("ecg", "labs", "report", "xray")  # labs from labs.csv
    manifest = pd.read_parquet(tiny_cohort / MANIFEST_NAME)
    xrays = manifest[manifest["modality"] == "xray"]
    assert facts.studies == xrays.groupby("split")["study_id"].nunique().to_dict()
    assert read_cohort(xray_report_cohort).modalities == ("report", "xray")
    first = sorted(manifest["study_id"].unique())[:10]
    limited = read_cohort(tiny_cohort, limit_studies=10).studies
    assert limited == xrays[xrays["study_id"].isin(first)].groupby("split")["study_id"].nunique() \
        .reindex(["train", "val", "test"], fill_value=0).to_dict()
    with pytest.raises(MedmmInputError, match="report retraining needs ecg; the cohort's manifest has no ecg"):
        check_cohort(CohortNeeds(xray_report_cohort, ("ecg",), why="report retraining"))


def test_a_pretrained_source_is_a_folder_or_a_uri_of_an_existing_store(tmp_path):
    with pytest.raises(MedmmInputError, match="no such folder, and not an MLflow URI"):
        check_pretrained_source(str(tmp_path / "no_model"), f"sqlite:///{tmp_path / 'mlflow.db'}", "checkpoint")
    with pytest.raises(MedmmInputError, match="no tracking store at"):
        check_pretrained_source("models:/medmm-more@champion", f"sqlite:///{tmp_path / 'mlflow.db'}", "checkpoint")
    with pytest.raises(ConfigError, match="checkpoint is required"):
        check_pretrained_source(None, f"sqlite:///{tmp_path / 'mlflow.db'}", "checkpoint")
    assert not (tmp_path / "mlflow.db").exists()  # looking a model up creates no store
    folder = tmp_path / "export"
    folder.mkdir()
    check_pretrained_source(folder, f"sqlite:///{tmp_path / 'mlflow.db'}", "checkpoint")  # loading checks its files
