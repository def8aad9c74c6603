"""End-to-end pretraining on a tiny demo cohort: MLflow logging, bad files, CLI, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from medmm.io.errors import MedmmInputError
from medmm.workflows.contrastive.config import PretrainConfig
from tests.conftest import REPO, TINY_CONFIG, tiny_overrides

PY = sys.executable


def run_cli(*args, timeout=600, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([PY, "-m", "medmm.pipelines.pretrain", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_help_lists_every_option():
    out = run_cli("--help", timeout=60)
    assert out.returncode == 0
    for option in ("trainer.max_epochs", "model.text.lora_r", "data.strict", "loss.pairs", "--resume"):
        assert option in out.stdout


def test_unknown_key_is_an_error_naming_it():
    out = run_cli("--config", str(TINY_CONFIG), "trainer.max_epoch=3", timeout=60)
    assert out.returncode == 2
    assert "unknown config key 'trainer.max_epoch'" in out.stderr


@pytest.mark.parametrize("command", ["pretrain", "ptunifier_pretrain", "finetune", "survival", "report"])
def test_overrides_may_come_before_and_after_config(command):
    """`key=value --config x.yaml key=value` is how people type it; argparse's plain parser
    rejects overrides split by an option."""
    import importlib
    argv = ["a.b=1", "--config", "x.yaml", "c.d=2"]
    if command == "report":  # a sub-command comes first
        argv.insert(0, "train")
    args = importlib.import_module(f"medmm.pipelines.{command}").COMMAND.parse_args(argv)
    assert args.overrides == ["a.b=1", "c.d=2"]
    assert str(args.config) == "x.yaml"


def _artifact_texts(client, run_id, path=""):
    texts = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            if item.path != "model":
                texts.update(_artifact_texts(client, run_id, item.path))
        elif not item.path.endswith(".png"):
            local = client.download_artifacts(run_id, item.path)
            texts[item.path] = Path(local).read_text(errors="replace")
    return texts


@pytest.mark.slow
def test_tiny_pretraining_is_tracked_in_mlflow_and_registered(tiny_cohort, tmp_path):
    from medmm.workflows.contrastive.run import run

    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(
        tiny_cohort, tmp_path, "tracking.register_model=true", "tracking.registered_name=tiny-more",
        "eval.examples_figure=true"))
    outcome = run(cfg)
    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "2"
    assert run.data.params["model.text.lora_r"] == "4"
    assert len(run.data.tags["manifest_sha256"]) == 64
    assert run.data.tags["git_commit"]
    metrics = run.data.metrics
    for key in ("train/loss_epoch", "val/loss", "test.xray_to_report.P_at_5", "test.ecg_to_report.R_at_1",
                "test.report_to_xray.Hit_at_5", "test.zeroshot_xray.planted_mean", "data.n_skipped_studies",
                "test.xray_to_report.prior_corrected.P_at_5", "test.xray_to_report.memory_translated.P_at_5",
                "test.xray_to_report.memory_k"):
        assert key in metrics, key
    # the val-chosen figure is the test figure of the method best on validation (first on a tie)
    val_scores = [metrics[f"test.xray_to_report.{m}.val_P_at_5"] for m in ("plain", "prior_corrected", "memory_translated")]
    chosen = int(metrics["test.xray_to_report.val_chosen_method"])
    assert chosen == val_scores.index(max(val_scores))
    prefix = ("", "prior_corrected.", "memory_translated.")[chosen]
    assert metrics["test.xray_to_report.val_chosen.P_at_5"] == metrics[f"test.xray_to_report.{prefix}P_at_5"]
    # no retrieval figure beyond the oracle's sampling band: the model sees only what the
    # cohort's reference model says each modality shows
    banded = [r for r in outcome.rows if r.get("oracle_upper") is not None]
    assert len(banded) >= 6 and all(r["oracle"] <= r["oracle_upper"] <= 1 for r in banded)
    assert [r["metric"] for r in banded if r["value"] > r["oracle_upper"] + 1e-9] == []
    history = client.get_metric_history(outcome.run_id, "train/temperature")
    assert len(history) >= 2 and history[0].value != history[-1].value  # the temperature is learned
    names = {a.path for a in client.list_artifacts(outcome.run_id, "run")}
    assert {"run/config.yaml", "run/manifest.csv", "run/manifest_sha256.txt", "run/git.json"} <= names
    results = {a.path for a in client.list_artifacts(outcome.run_id, "results")}
    assert {"results/test_metrics.json", "results/test_metrics.txt"} <= results
    figures = {a.path for a in client.list_artifacts(outcome.run_id, "figures")}
    assert {"figures/retrieval_examples.png", "figures/zeroshot_roc_xray.png", "figures/metric_curves.png"} <= figures
    # nothing identifying leaves the cohort: no patient / study id in params, tags or text artifacts
    texts = _artifact_texts(client, outcome.run_id)
    blob = json.dumps([run.data.params, run.data.tags]) + "".join(texts.values())
    assert "DEMO-P" not in blob and "DEMO-S" not in blob
    # the registered model loads back in a fresh process and embeds a report
    version = client.search_model_versions("name='tiny-more'")[0]
    assert version.run_id == outcome.run_id
    code = (
        "import mlflow, pandas as pd; mlflow.set_tracking_uri(%r);"
        "m = mlflow.pyfunc.load_model('models:/tiny-more/%s');"
        "e = m.predict(pd.DataFrame({'report': ['No pleural effusion.', 'Cardiomegaly.']}));"
        "print(e.shape)" % (outcome.tracking_uri, version.version)
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(2, 32)" in out.stdout


def _corrupt_copy(src: Path, dst: Path) -> list[str]:
    shutil.copytree(src, dst)
    studies = sorted((dst / "patients").glob("*/*"))
    dcm = studies[0] / "xray.dcm"
    dcm.write_bytes(dcm.read_bytes()[:700])  # truncated DICOM
    dat = studies[1] / "ecg.dat"
    dat.write_bytes(dat.read_bytes()[:1000])  # truncated WFDB signal
    (studies[2] / "report.txt").write_text("   \n")  # empty report
    return [str(p.relative_to(dst)) for p in (dcm, studies[1] / "ecg.hea", studies[2] / "report.txt")]


@pytest.mark.slow
def test_corrupt_files_are_skipped_counted_and_named(tiny_cohort, tmp_path, capsys):
    from medmm.workflows.contrastive.run import run

    bad_root = tmp_path / "bad"
    bad_files = _corrupt_copy(tiny_cohort, bad_root)
    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(bad_root, tmp_path, "trainer.max_epochs=1"))
    outcome = run(cfg)
    assert outcome.n_skipped == 3
    err = capsys.readouterr().err
    for f in bad_files:
        assert f in err
    run_data = MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data
    assert run_data.metrics["data.n_skipped_studies"] == 3
    assert run_data.tags["n_skipped_files"] == "3"
    strict = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(bad_root, tmp_path / "s", "data.strict=true"))
    with pytest.raises(MedmmInputError) as info:
        run(strict)
    assert any(f in str(info.value) for f in bad_files)


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_run(tiny_cohort, tmp_path):
    overrides = tiny_overrides(tiny_cohort, tmp_path, "trainer.max_epochs=8", "data.batch_size=8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([PY, "-m", "medmm.pipelines.pretrain", "--config", str(TINY_CONFIG), *overrides],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "runs" / "run_state.json"
    deadline = time.time() + 300
    last = None
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            last = Path(json.loads(state.read_text())["ckpt_dir"]) / "last.ckpt"
            if last.exists():
                break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    time.sleep(0.5)  # let the checkpoint file finish writing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_id = json.loads(state.read_text())["run_id"]

    out = run_cli("--config", str(TINY_CONFIG), *overrides, "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming MLflow run {run_id}" in out.stdout
    assert f"MLflow run id: {run_id}" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    epochs = sorted({int(m.value) for m in client.get_metric_history(run_id, "epoch")})
    assert epochs[-1] == 7  # the resumed run reached the last epoch
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "test.xray_to_report.P_at_5" in client.get_run(run_id).data.metrics


def test_resume_without_a_run_is_a_clear_error(tiny_cohort, tmp_path):
    # a cohort that exists, so that the missing run is what the checks find
    out = run_cli("--config", str(TINY_CONFIG), f"data.root={tiny_cohort}", f"data.cache_dir={tmp_path / 'cache'}",
                  f"output_dir={tmp_path / 'nothing'}", "--resume", timeout=120)
    assert out.returncode == 2
    assert "no run to resume" in out.stderr
