"""The PTUnifier pretraining, finetune, survival and segment pipelines leave the one
shape of :mod:`medmm.tracking.pipeline_run` (the contrastive pretrain, report and retrieve
runs are checked against a live server in test_mlflow_server.py): the ``medmm.pipeline``
tag, git commit, manifest hash (survival's bundled table: the cohort's content hash),
params = the flattened resolved config, ``test.`` metrics, figures under ``figures/``,
and the run's model registered with the aliases ``newest`` and ``champion``, loadable as
a pyfunc that reproduces what the run logged.

Nothing trains here: the runs are the session's tiny runs of tests/conftest.py, which the
pipelines' own tests (tests/ptunifier, tests/survival, tests/segmentation) use too."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config, flatten

CASES = ("pretrain-ptunifier", "finetune", "survival", "segment")


def _paths(client, run_id, path=""):
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _case(name: str, request):
    """-> (tracking URI, run id, pipeline tag, config class, registered model name)."""
    if name == "pretrain-ptunifier":
        from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig

        pre = request.getfixturevalue("ptunifier_pretrained")
        return pre["uri"], pre["run"].info.run_id, "pretrain", PTUnifierPretrainConfig, pre["registered"]
    if name == "finetune":
        from medmm.workflows.finetune.config import FinetuneConfig

        run = request.getfixturevalue("ptunifier_finetunes")["image_classification"]
        uri = request.getfixturevalue("ptunifier_pretrained")["uri"]
        return uri, run.info.run_id, "finetune", FinetuneConfig, "medmm-finetune-image_classification"
    if name == "survival":
        from medmm.workflows.survival.config import SurvivalConfig

        out = request.getfixturevalue("tiny_survival_run")
        return out.tracking_uri, out.run_id, "survival", SurvivalConfig, "medmm-survival-cox"
    from medmm.workflows.segment.config import SegmentConfig

    out, _ = request.getfixturevalue("tiny_segment_run")
    return out.tracking_uri, out.run_id, "segment", SegmentConfig, "medmm-segment"


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_every_pipeline_leaves_the_same_shape(name, request, tmp_path):
    uri, run_id, tag, config_class, registered = _case(name, request)
    mlflow.set_tracking_uri(uri)  # mlflow 3.17 resolves a run's logged model (artifacts under model/) there
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # artifacts live beside the run's SQLite store, never under the working folder's ./mlruns
    store = Path(uri.removeprefix("sqlite:///")).resolve().parent
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(store / "mlartifacts")
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["medmm.pipeline"] == tag
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
    assert len(tags["manifest_sha256"]) == 64
    # params are the flattened resolved config, which run/config.yaml holds
    artifacts = _paths(client, run_id)
    assert {"run/config.yaml", "run/git.json", "run/manifest_sha256.txt", "run/skipped_files.json"} <= artifacts
    cfg = build_config(config_class, Path(client.download_artifacts(run_id, "run/config.yaml", str(tmp_path))))
    flat = {k: ("None" if v is None else str(v)) for k, v in flatten(cfg).items()}
    assert {k: params.get(k) for k in flat} == flat
    assert Path(client.download_artifacts(run_id, "run/manifest_sha256.txt", str(tmp_path))).read_text().strip() \
        == tags["manifest_sha256"]
    assert json.loads(Path(client.download_artifacts(run_id, "run/git.json", str(tmp_path))).read_text())[
        "git_commit"] == tags["git_commit"]
    assert [k for k in metrics if k.startswith("test.")]
    figures = {p for p in artifacts if p.endswith(".png")}
    assert figures and all(p.startswith("figures/") for p in figures), figures
    # the run's model: a registered version aliased newest; champion (the first version of its
    # name) only where the pipeline selects on a validation metric, never on a test metric
    newest = client.get_model_version_by_alias(registered, "newest")
    assert newest.run_id == run_id
    selection = newest.tags["selection_metric"]
    if name in ("finetune", "segment"):
        assert selection.startswith("none")
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias(registered, "champion")
    else:
        assert client.get_model_version_by_alias(registered, "champion").run_id == run_id
        metric = selection.split("=")[0]
        assert metric in metrics and not metric.startswith("test."), selection


@pytest.fixture
def registered_model(request):
    def load(name: str):
        uri, _, _, _, registered = _case(name, request)
        mlflow.set_tracking_uri(uri)
        return mlflow.pyfunc.load_model(f"models:/{registered}@newest")

    return load


@pytest.mark.slow
def test_registered_ptunifier_and_finetuned_models_predict(registered_model, tiny_cohort):
    xray = str(sorted(tiny_cohort.glob("patients/*/*/xray.dcm"))[0])
    embedder = registered_model("pretrain-ptunifier")
    reports = embedder.predict(pd.DataFrame({"report": ["No pleural effusion.", "Cardiomegaly."]}))
    image = embedder.predict(pd.DataFrame({"xray": [xray]}))
    assert reports.shape == (2, 16) and image.shape == (1, 16)  # itc_dim of the tiny config
    np.testing.assert_allclose(np.linalg.norm(reports, axis=1), 1.0, atol=1e-5)
    probs = registered_model("finetune").predict(pd.DataFrame({"xray": [xray, xray]}))
    from medmm.io.findings import FINDINGS

    assert list(probs.columns) == list(FINDINGS) and probs.shape == (2, len(FINDINGS))
    assert ((probs.to_numpy() >= 0) & (probs.to_numpy() <= 1)).all()


@pytest.mark.slow
def test_registered_survival_model_reproduces_the_logged_test_risks(registered_model, tiny_survival_run, tmp_path):
    from medmm.workflows.survival.config import SurvivalConfig
    from medmm.workflows.survival.run import load_data

    client = MlflowClient(tiny_survival_run.tracking_uri)
    run_id = tiny_survival_run.run_id
    cfg = build_config(SurvivalConfig, Path(client.download_artifacts(run_id, "run/config.yaml", str(tmp_path))))
    data = load_data(cfg)
    assert client.get_run(run_id).data.tags["manifest_sha256"] == data.content_hash
    logged = pd.read_csv(client.download_artifacts(run_id, "results/test_predictions.csv", str(tmp_path)))
    risk = registered_model("survival").predict(pd.DataFrame(data.x[logged["row"]], columns=data.feature_names))
    np.testing.assert_allclose(risk["risk"].to_numpy(), logged["risk.cox"].to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_registered_segmenter_reproduces_the_logged_test_mask(registered_model, tiny_segment_run, tiny_volume_cohort):
    import nibabel as nib

    outcome, tmp = tiny_segment_run
    client = MlflowClient(outcome.tracking_uri)
    case = json.loads(Path(client.download_artifacts(outcome.run_id, "results/test_cases.json", str(tmp)))
                      .read_text())["test_cases"][0]
    logged = nib.load(client.download_artifacts(outcome.run_id, f"masks/text/{case['case']}.nii.gz", str(tmp)))
    masks = registered_model("segment").predict(pd.DataFrame({"image": [str(tiny_volume_cohort / case["source"])],
                                                              "modality": [case["modality"]]}))
    assert masks[0].dtype == np.uint8
    np.testing.assert_array_equal(masks[0], np.asarray(logged.dataobj))
