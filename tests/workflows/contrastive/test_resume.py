"""Resume that resumes: a pretraining run killed with SIGKILL mid-epoch, mid-checkpoint write
and mid-evaluation, then ``--resume``d each time, finishes in the same MLflow run with each
metric step logged once and the final metrics of an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from medmm.pipelines import pretrain
from medmm.training.lightning_run import (
    CONTINUES_TAG,
    RUN_STATE,
    latest_readable_checkpoint,
    stored_config,
)
from medmm.workflows.contrastive.config import PretrainConfig, preflight
from tests.conftest import REPO, TINY_CONFIG, tiny_overrides

EPOCHS = 3
EXTRA = (f"trainer.max_epochs={EPOCHS}", "data.batch_size=8", "trainer.threads=1")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
PAUSE_HOOK = Path(__file__).parent / "pause_hook"  # sitecustomize holding a run where the test kills it


def command(tmp_path: Path, cohort: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "medmm.pipelines.pretrain", "--config", str(TINY_CONFIG),
            *tiny_overrides(cohort, tmp_path, *EXTRA), *flags]


def start_paused(tmp_path: Path, cohort: Path, point: str, *flags: str) -> tuple[subprocess.Popen, Path, Path]:
    """A run that holds at ``point`` (see pause_hook/sitecustomize.py); -> (process, log, marker)."""
    tmp_path.mkdir(exist_ok=True)
    log = tmp_path / f"log{time.monotonic_ns()}.txt"
    marker = tmp_path / f"paused-{point}"
    env = {**ENV, "PYTHONPATH": f"{PAUSE_HOOK}{os.pathsep}{REPO}", "MEDMM_TEST_PAUSE": point,
           "MEDMM_TEST_PAUSE_MARKER": str(marker)}
    with open(log, "w") as out:
        proc = subprocess.Popen(command(tmp_path, cohort, *flags), cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    return proc, log, marker


def kill_when(proc: subprocess.Popen, log: Path, ready, poll_s: float = 0.002, timeout_s: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fails if the run ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(poll_s)
    raise AssertionError(f"the run ended (rc={proc.poll()}) before it could be killed:\n{log.read_text()[-3000:]}")


def ckpt_dir(tmp_path: Path) -> Path:
    state = tmp_path / "runs" / RUN_STATE
    return Path(json.loads(state.read_text())["ckpt_dir"]) if state.exists() else tmp_path / "none"


def last_epoch(tmp_path: Path) -> int:
    path = latest_readable_checkpoint(ckpt_dir(tmp_path)) if ckpt_dir(tmp_path).exists() else None
    return -1 if path is None else torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]


def metric_steps(client: MlflowClient, run_id: str) -> Counter:
    return Counter((key, m.step) for key in client.get_run(run_id).data.metrics
                   for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_equals_an_uninterrupted_run(tiny_cohort, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(whole, tiny_cohort), cwd=REPO, env=ENV, check=False, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # 1. mid-epoch: the second epoch's second batch
    proc, log, marker = start_paused(killed, tiny_cohort, "epoch")
    kill_when(proc, log, marker.exists, poll_s=0.05)
    assert last_epoch(killed) == 0
    run_id = json.loads((killed / "runs" / RUN_STATE).read_text())["run_id"]
    assert MlflowClient(f"sqlite:///{killed / 'mlflow.db'}").get_run(run_id).info.status == "RUNNING"

    # 2. mid-checkpoint write: a checkpoint's temp file written, not yet renamed into place
    proc, log, marker = start_paused(killed, tiny_cohort, "checkpoint", "--resume")
    kill_when(proc, log, marker.exists, poll_s=0.05)
    assert any(ckpt_dir(killed).glob(".*.tmp"))
    assert latest_readable_checkpoint(ckpt_dir(killed)) is not None

    # 3. mid-evaluation: after the last epoch's checkpoint
    proc, log, marker = start_paused(killed, tiny_cohort, "evaluation", "--resume")
    kill_when(proc, log, marker.exists, poll_s=0.05)
    assert last_epoch(killed) == EPOCHS - 1

    out = subprocess.run(command(killed, tiny_cohort, "--resume"), cwd=REPO, env=ENV, check=False, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming MLflow run {run_id}" in out.stdout and f"MLflow run id: {run_id}" in out.stdout

    a = MlflowClient(f"sqlite:///{whole / 'mlflow.db'}")
    b = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    (run_a,) = a.search_runs([e.experiment_id for e in a.search_experiments()])
    runs_b = b.search_runs([e.experiment_id for e in b.search_experiments()])
    assert [r.info.run_id for r in runs_b] == [run_id]
    assert runs_b[0].info.status == "FINISHED"
    steps_b = metric_steps(b, run_id)
    assert max(steps_b.values()) == 1, [k for k, n in steps_b.items() if n > 1]
    assert set(steps_b) == set(metric_steps(a, run_a.info.run_id))
    final_a = {k: v for k, v in run_a.data.metrics.items() if k.startswith(("test.", "val/", "train/"))}
    final_b = {k: v for k, v in runs_b[0].data.metrics.items() if k.startswith(("test.", "val/", "train/"))}
    assert final_a.keys() == final_b.keys()
    differences = {k: abs(final_a[k] - final_b[k]) for k in final_a}
    print("largest metric difference, resumed vs uninterrupted:", max(differences.values()))
    assert max(differences.values()) < 1e-5, sorted(differences.items(), key=lambda kv: -kv[1])[:5]

    # a FINISHED run is not resumed; --resume-new continues it in a new run
    refused = subprocess.run(command(killed, tiny_cohort, "--resume"), cwd=REPO, env=ENV, check=False, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "FINISHED" in refused.stderr and "--resume-new" in refused.stderr
    continued = subprocess.run(command(killed, tiny_cohort, "--resume-new"), cwd=REPO, env=ENV, check=False,
                               capture_output=True, text=True, timeout=600)
    assert continued.returncode == 0, continued.stderr[-3000:]
    runs_b = b.search_runs([e.experiment_id for e in b.search_experiments()])
    (new_run,) = [r for r in runs_b if r.info.run_id != run_id]
    assert new_run.data.tags[CONTINUES_TAG] == run_id and new_run.info.status == "FINISHED"
    assert b.get_run(run_id).info.status == "FINISHED"


def test_resume_refuses_contradicting_overrides_and_a_missing_checkpoint(tiny_cohort, tmp_path, capsys):
    """Both refusals come before any training: a run state naming a store, a config (as
    resolved for the cohort) and an empty checkpoint folder is all they need."""
    overrides = tiny_overrides(tiny_cohort, tmp_path, *EXTRA)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("medmm-tiny")).info.run_id
    checkpoints = tmp_path / "runs" / run_id / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"PK\x03\x04 cut short by a kill")
    cfg = preflight(build_config(PretrainConfig, TINY_CONFIG, overrides))
    (tmp_path / "runs" / RUN_STATE).write_text(json.dumps(
        {"run_id": run_id, "ckpt_dir": str(checkpoints), "config": stored_config(cfg)}))

    assert pretrain.main(["--config", str(TINY_CONFIG), *overrides, "seed=5", "data.batch_size=4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config differs" in err and "data.batch_size" in err and "seed" in err

    assert pretrain.main(["--config", str(TINY_CONFIG), *overrides, "--resume"]) == 2
    assert "no readable checkpoint" in capsys.readouterr().err
    assert client.get_run(run_id).info.status == "RUNNING"  # refused, not restarted: no new run either
    assert len(client.search_runs([client.get_experiment_by_name("medmm-tiny").experiment_id])) == 1
