"""``python -m medmm.pipelines.survival`` end to end on tiny configs, into a temporary MLflow
store: every model scored, the logged c-index recomputed from the logged predictions,
KM figures present, a corrupt slide skipped and counted, config errors exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from medmm.pipelines.survival import main
from medmm.workflows.survival.config import SurvivalConfig
from medmm.workflows.survival.run import run
from tests.workflows.survival.conftest import TINY_SURVIVAL, survival_overrides


def _artifact(client, run_id, path, tmp_path):
    return client.download_artifacts(run_id, path, str(tmp_path))


def test_breast_cancer_all_heads_and_baselines(tiny_survival_run, tmp_path):
    from sksurv.metrics import concordance_index_censored

    outcome = tiny_survival_run
    assert list(outcome.results) == ["cox", "deepsurv", "discrete", "coxnet", "rsf"]
    client = MlflowClient(outcome.tracking_uri)
    r = client.get_run(outcome.run_id)
    assert r.data.tags["dataset"] == "breast_cancer" and len(r.data.tags["manifest_sha256"]) == 64
    assert r.data.metrics["data.n_test"] == 36  # 30% of 120, stratified, never used for fitting or selection
    preds = pd.read_csv(_artifact(client, outcome.run_id, "results/test_predictions.csv", tmp_path))
    for name, res in outcome.results.items():
        for metric in ("harrell_c", "uno_c", "ibs", "mean_auc"):
            assert np.isfinite(r.data.metrics[f"test.{name}.{metric}"])
        assert res["harrell_c_lo"] <= res["harrell_c_hi"] and 0 < res["ibs"] < 0.5
        c = concordance_index_censored(preds["event"].astype(bool), preds["time"], preds[f"risk.{name}"])[0]
        assert r.data.metrics[f"test.{name}.harrell_c"] == pytest.approx(c)
    artifacts = {f.path for f in client.list_artifacts(outcome.run_id, "figures")}
    assert artifacts == {f"figures/km_{m}.png" for m in outcome.results}
    logged = json.loads(open(_artifact(client, outcome.run_id, "results/test_metrics.json", tmp_path)).read())
    assert logged["coxnet"]["info.alpha"] > 0
    assert "| deepsurv |" in outcome.table


def test_pathology_cmta_run_skips_a_corrupt_slide(tiny_pathology_cohort, tmp_path):
    import shutil

    root = tmp_path / "cohort"
    shutil.copytree(tiny_pathology_cohort, root)
    victim = sorted((root / "slides").glob("*.tiff"))[0]
    victim.write_bytes(victim.read_bytes()[:3000])  # truncated: the run must go on without it
    cfg = build_config(SurvivalConfig, TINY_SURVIVAL, survival_overrides(
        tmp_path, "data.dataset=pathology", f"data.root={root}", "data.max_rows=null", "data.tile_size=64",
        "data.bag_size=8", "models=[cmta,genomics,coxnet]", "train.epochs=2", "train.dim=16",
        "train.n_bins=2", "eval.n_bootstrap=5"))
    outcome = run(cfg)
    r = MlflowClient(outcome.tracking_uri).get_run(outcome.run_id)
    assert r.data.metrics["data.n_skipped"] == 1
    client = MlflowClient(outcome.tracking_uri)
    skipped = open(_artifact(client, outcome.run_id, "run/skipped_files.json", tmp_path)).read()
    assert victim.stem not in skipped and "DEMO-" not in skipped and json.loads(skipped)[0]["suffix"] == ".tiff"
    assert r.data.metrics["data.n_train"] + r.data.metrics["data.n_val"] + r.data.metrics["data.n_test"] == 23
    for name in ("cmta", "genomics", "coxnet"):
        assert 0.0 <= r.data.metrics[f"test.{name}.harrell_c"] <= 1.0
    from medmm.cohort.manifest import Manifest

    assert r.data.tags["manifest_sha256"] == Manifest.load(root).content_hash()  # the cohort's manifest
    assert client.get_model_version_by_alias("medmm-survival-cmta", "newest").run_id == outcome.run_id


def test_cli_config_errors_exit_2(tmp_path, capsys):
    assert main(["--config", str(TINY_SURVIVAL), "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert main(["--config", str(TINY_SURVIVAL), "models=[cmta]"]) == 2  # CMTA needs slides
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "eval.n_bootstrap" in capsys.readouterr().out
