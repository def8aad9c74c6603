"""Every workflow's figures, as its tiny run logged them: each PNG under ``figures/`` is
downloaded from the run's MLflow store and opened as a real image (not empty, not one flat
colour), and the figures each workflow promises are there.

The runs are the session's tiny runs of tests/conftest.py (shared with the workflows' own
tests); only a segmentation run with overlays turned on is run here: the phantom cohort
carries no demo marker, so the shared run, like a run on a real cohort, draws none of its
images."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from tests.tracking.test_figures import assert_real_image

# the figures every run of a workflow logs (figures/<name>.png); a run may log more
# (metric_curves wherever it logged a metric at two steps or more)
EXPECTED = {
    "pretrain-contrastive": {"retrieval_examples", "zeroshot_roc_xray", "zeroshot_roc_ecg", "metric_curves"},
    "pretrain-ptunifier": {"retrieval_examples", "zeroshot_roc_xray", "metric_curves"},
    "finetune-image_classification": {"test_metrics", "confusion_matrices", "roc_curves"},
    "finetune-text_classification": {"test_metrics", "confusion_matrices", "roc_curves"},
    "finetune-vqa": {"test_metrics", "confusion_matrices"},
    "finetune-retrieval": {"test_metrics"},
    "survival": {"km_cox", "km_rsf"},
    "segment": {"test_dice", "segmentation_overlays", "metric_curves"},
    "report": {"report_metrics", "report_examples", "metric_curves"},
    "retrieve": {"embedding_map", "retrieval_examples"},
}


@pytest.fixture(scope="module")
def segment_run_with_overlays(tiny_volume_cohort, tmp_path_factory):
    from medmm.workflows.segment.config import SegmentConfig
    from medmm.workflows.segment.run import train
    from tests.workflows.segment.conftest import TINY_SEG_CONFIG, seg_overrides

    tmp = tmp_path_factory.mktemp("segment_figures")
    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, seg_overrides(tiny_volume_cohort, tmp, "variants=[text]"))
    return train(cfg.model_copy(update={"examples_figure": True}))


def _run(name: str, request) -> tuple[str, str]:
    """-> (tracking URI, run id) of the workflow's tiny run."""
    if name == "pretrain-ptunifier":
        pre = request.getfixturevalue("ptunifier_pretrained")
        return pre["uri"], pre["run"].info.run_id
    if name.startswith("finetune-"):
        run = request.getfixturevalue("ptunifier_finetunes")[name.removeprefix("finetune-")]
        return request.getfixturevalue("ptunifier_pretrained")["uri"], run.info.run_id
    if name == "survival":
        out = request.getfixturevalue("tiny_survival_run")
        return out.tracking_uri, out.run_id
    if name == "segment":
        out = request.getfixturevalue("segment_run_with_overlays")
        return out.tracking_uri, out.run_id
    runs = request.getfixturevalue("tracked_runs")
    return runs.uri, {"pretrain-contrastive": runs.pretrain, "report": runs.report, "retrieve": runs.index}[name].run_id


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_logged_figure_is_a_real_image(name, request, tmp_path):
    uri, run_id = _run(name, request)
    client = MlflowClient(uri)
    logged = {Path(a.path).stem: a.path for a in client.list_artifacts(run_id, "figures")}
    assert EXPECTED[name] <= set(logged), sorted(logged)
    assert all(path.endswith(".png") for path in logged.values()), logged
    for path in logged.values():
        assert_real_image(client.download_artifacts(run_id, path, str(tmp_path)))


@pytest.mark.slow
def test_a_cohort_without_the_demo_marker_gets_no_image_figure_unless_asked(tiny_segment_run):
    outcome, _ = tiny_segment_run  # examples_figure unset, a cohort without reference_model.json
    logged = {a.path for a in MlflowClient(outcome.tracking_uri).list_artifacts(outcome.run_id, "figures")}
    assert "figures/test_dice.png" in logged and "figures/segmentation_overlays.png" not in logged
