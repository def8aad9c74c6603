"""The default SQLite store survives concurrent first use."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from mlflow.tracking import MlflowClient

from medmm.tracking.store import prepare_store, retry_busy, sqlite_path
from tests.conftest import REPO
from tests.workflows.survival.conftest import TINY_SURVIVAL

N_RUNS = 4


def test_four_pipelines_started_at_once_on_a_missing_store_all_finish_and_are_recorded(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # a cheap real pipeline: survival's Cox head on the tiny config, no baselines or bootstrap to speak of
    procs = [subprocess.Popen([sys.executable, "-m", "medmm.pipelines.survival", "--config", str(TINY_SURVIVAL),
                               f"tracking.uri={uri}", f"output_dir={tmp_path / f'runs{i}'}", "models=[cox]",
                               "train.epochs=2", "eval.n_bootstrap=2", f"seed={i}"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(N_RUNS)]
    errors = [p.communicate(timeout=480)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * N_RUNS, "\n".join(e[-1500:] for e in errors)
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == N_RUNS
    assert {r.info.status for r in runs} == {"FINISHED"}
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_prepare_store_creates_a_wal_store_and_leaves_other_uris_alone(tmp_path):
    uri = f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    assert prepare_store(uri) == uri
    assert sqlite_path(uri) == tmp_path / "a" / "mlflow.db"
    with sqlite3.connect(tmp_path / "a" / "mlflow.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert MlflowClient(uri).search_experiments()  # migrated: the default experiment exists
    assert prepare_store("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_busy_writes_are_retried():
    attempts = []

    def locked_twice():
        attempts.append(1)
        if len(attempts) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "written"

    assert retry_busy(locked_twice, timeout_s=5) == "written"
    assert len(attempts) == 3
