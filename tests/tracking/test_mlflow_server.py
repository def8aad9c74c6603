"""Against a real ``mlflow server`` (127.0.0.1, free port, SQLite backend) over HTTP: the
tiny pretrain, report and retrieval runs of the session read back in the same shape -
params, metrics, resolved config, manifest hash, git commit, figures - and the registered
models load through MLflow in a fresh process. The server is stopped by its pid at the end
of the session (the fixture fails if it survives)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

PY = sys.executable


def _paths(client, run_id, path=""):
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.slow
def test_every_pipeline_leaves_the_same_shape_on_the_live_server(tracked_runs):
    assert tracked_runs.uri.startswith("http://127.0.0.1:")
    client = MlflowClient(tracked_runs.uri)
    runs = {"pretrain": tracked_runs.pretrain.run_id, "report": tracked_runs.report.run_id,
            "retrieve": tracked_runs.index.run_id}
    for pipeline, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", pipeline
        tags = run.data.tags
        assert tags["medmm.pipeline"] == pipeline
        assert len(tags["manifest_sha256"]) == 64 and tags["git_commit"] not in ("", None)
        assert "data.root" in run.data.params and "seed" in run.data.params
        artifacts = _paths(client, run_id)
        assert {"run/config.yaml", "run/manifest_sha256.txt", "run/git.json", "run/manifest.csv"} <= artifacts
        manifest_hash = Path(client.download_artifacts(run_id, "run/manifest_sha256.txt")).read_text().strip()
        assert manifest_hash == tags["manifest_sha256"]
    # one cohort, one manifest hash across pipelines
    assert len({client.get_run(r).data.tags["manifest_sha256"] for r in runs.values()}) == 1
    report = client.get_run(runs["report"])
    for key in ("test.model_greedy.bleu4", "test.model_beam2.rouge_l", "test.nearest_neighbour.cider",
                "test.most_frequent.ce_f1", "best_val_loss", "train/loss_epoch", "val/loss", "time.train_s"):
        assert key in report.data.metrics, key
    assert {"figures/report_metrics.png", "figures/report_examples.png", "results/report_metrics.json"} <= \
        _paths(client, runs["report"])
    assert {"figures/retrieval_examples.png"} <= _paths(client, runs["pretrain"])
    retrieve = client.get_run(runs["retrieve"]).data.metrics
    assert retrieve["index.n_studies"] > 0 and "index.xray.build_s" in retrieve
    # nothing identifying: no patient / study id in params, tags or the text artifacts of any run
    for run_id in runs.values():
        run = client.get_run(run_id)
        blob = json.dumps([run.data.params, run.data.tags])
        for path in _paths(client, run_id):
            if path.endswith((".json", ".txt", ".yaml", ".csv")) and not path.startswith("model/"):
                blob += Path(client.download_artifacts(run_id, path)).read_text(errors="replace")
        assert "DEMO-P" not in blob and "DEMO-S" not in blob


@pytest.mark.slow
def test_registered_models_carry_aliases_and_load_in_a_fresh_process(tracked_runs):
    client = MlflowClient(tracked_runs.uri)
    for name, run_id in (("tiny-more", tracked_runs.pretrain.run_id),
                         ("medmm-report-tiny", tracked_runs.report.run_id)):
        for alias in ("champion", "newest"):
            version = client.get_model_version_by_alias(name, alias)
            assert version.run_id == run_id, (name, alias)
    xray = sorted(tracked_runs.cohort.glob("patients/*/*/xray.dcm"))[0]
    ecg = xray.with_name("ecg.hea")
    code = (
        "import mlflow, pandas as pd; mlflow.set_tracking_uri(%r);"
        "e = mlflow.pyfunc.load_model('models:/tiny-more@champion').predict(pd.DataFrame({'xray': [%r]}));"
        "print('EMB', e.shape);"
        "g = mlflow.pyfunc.load_model('models:/medmm-report-tiny@champion');"
        "print('REPORTS', len(g.predict(pd.DataFrame({'xray': [%r], 'ecg': [%r]}), params={'num_beams': 2})))"
        % (tracked_runs.uri, str(xray), str(xray), str(ecg))
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "EMB (1, 32)" in out.stdout and "REPORTS 1" in out.stdout


def test_champion_moves_only_when_the_selection_metric_improves(tmp_path):
    import mlflow

    from medmm.tracking.pipeline_run import register_with_aliases, start_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    champions = []
    for loss in (0.5, 0.7, 0.3):
        client, run_id, _ = start_run(uri, "alias-test", None, "test")
        client.log_metric(run_id, "best_val_loss", loss)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_text("x", "model/x.txt")  # any artifact as the version's source
        version = register_with_aliases(client, f"runs:/{run_id}/model", "m", run_id, "best_val_loss",
                                        higher_is_better=False)
        assert str(client.get_model_version_by_alias("m", "newest").version) == version
        champions.append(str(client.get_model_version_by_alias("m", "champion").version))
    assert champions == ["1", "1", "3"]  # 0.7 did not beat 0.5; 0.3 did
    assert client.get_model_version("m", "2").tags["selection_metric"] == "best_val_loss=0.7"
