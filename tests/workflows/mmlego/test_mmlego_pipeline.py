"""``python -m medmm.pipelines.mmlego`` end to end on the tiny config, both tasks, into a
temporary MLflow store: every variant scored with a finite metric, the table logged, the
merge trained nothing, the end-to-end model as large as the fused one; config errors exit 2."""

from __future__ import annotations

import json
import math

from mlflow.tracking import MlflowClient

from medmm.pipelines.mmlego import main
from tests.conftest import REPO

TINY = REPO / "configs/mmlego/tiny.yaml"
VARIANTS = {
    "pathology_genomics": ["unimodal_pathology", "unimodal_genomics", "merge", "fuse", "end_to_end"],
    "xray_ecg": ["unimodal_xray", "unimodal_ecg", "merge", "fuse", "end_to_end"],
}


def test_both_tasks_every_variant_tracked(tiny_cohort, tiny_pathology_cohort, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["--config", str(TINY), f"pathology_genomics.root={tiny_pathology_cohort}",
                 f"xray_ecg.root={tiny_cohort}", f"xray_ecg.cache_dir={tmp_path / 'cache'}",
                 f"output_dir={tmp_path / 'runs'}", f"tracking.uri={uri}", "train.threads=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pathology_genomics merge Harrell C" in printed and "xray_ecg fuse macro AUROC" in printed
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("medmm-mmlego-tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["medmm.pipeline"] == "mmlego"
    metrics = run.data.metrics
    table = client.download_artifacts(run.info.run_id, "results/mmlego_table.md", str(tmp_path))
    rows = [line.split("|")[1:-1] for line in open(table).read().splitlines()[2:]]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [(t, v) for t, vs in VARIANTS.items() for v in vs]
    for task, metric in (("pathology_genomics", "harrell_c"), ("xray_ecg", "macro_auroc")):
        for variant in VARIANTS[task]:
            score = metrics[f"test.{task}.{variant}.{metric}"]
            assert math.isfinite(score) and 0.0 <= score <= 1.0, (task, variant)
        assert metrics[f"train.{task}.merge.steps"] == 0  # merging trains nothing
        assert metrics[f"train.{task}.fuse.steps"] > 0 and metrics[f"train.{task}.end_to_end.steps"] > 0
        # matched capacity: the end-to-end model is as large as the fused blocks
        assert metrics[f"train.{task}.end_to_end.parameters"] == metrics[f"train.{task}.fuse.parameters"]
        assert metrics[f"data.{task}.paired.n_test"] > 0
    figures = {f.path for f in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"figures/scores_{task}.png" for task in VARIANTS}
    logged = json.load(open(client.download_artifacts(run.info.run_id, "results/mmlego.json", str(tmp_path))))
    assert set(logged) == set(VARIANTS) and logged["xray_ecg"]["merge"]["n_train"] == 0


def test_config_errors_exit_2(tmp_path, capsys):
    assert main(["--config", str(TINY), "model.heads=3", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "config error" in capsys.readouterr().err
    assert main(["--config", str(TINY), "tasks=[xray_ecg]", f"xray_ecg.root={tmp_path / 'absent'}",
                 f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]) == 2
