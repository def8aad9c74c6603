"""Every shipped image / ECG / report cohort spec, end to end on a generated replica of its
dataset's layout: ingested by the real command with the shipped spec, then pretrained by the
real pretraining command with the tiny config and no edit, the run's modalities taken from
the cohort (X-ray <-> report for the chest X-ray datasets, ECG <-> report for the ECG ones,
all three under Symile for Symile-MIMIC). The survival and segmentation specs are trained in
test_replica_heads.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medmm.cohort.spec import load_cohort_spec
from medmm.pipelines import ingest, pretrain
from medmm.workflows.preflight import read_cohort
from tests.cohort import replicas
from tests.conftest import TINY_CONFIG, tiny_overrides

REPO = Path(__file__).resolve().parents[2]

# cohort spec -> (modalities the run trains, extra overrides)
PRETRAINED = {
    "mimic_cxr": (["xray", "report"], []),
    "mimic_cxr_jpg": (["xray", "report"], []),
    "chexpert": (["xray", "report"], []),
    "hospital_export_example": (["xray", "report"], []),  # its one ECG is too few to pair: left out
    "mimic_iv_ecg": (["ecg", "report"], []),
    "ptbxl": (["ecg", "report"], []),
    "symile_mimic": (["xray", "ecg", "report"], ["loss.name=symile", "loss.modalities=[xray,ecg,report]"]),
}


def test_every_image_ecg_or_report_replica_is_trained_here_or_beside():
    heads = {"tcga", "amos", "btcv"}  # survival and segmentation: test_replica_heads.py
    assert set(PRETRAINED) | heads == set(replicas.REPLICAS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_replica_ingests_and_pretrains_end_to_end(name, tmp_path, capsys):
    modalities, extra = PRETRAINED[name]
    root = tmp_path / name
    root.mkdir()
    replicas.REPLICAS[name](root)
    assert ingest.main(["--spec", str(REPO / "cohorts" / f"{name}.yaml"), "--root", str(root), "--workers", "1"]) == 0
    facts = read_cohort(root)
    assert set(modalities) <= set(facts.modalities)

    code = pretrain.main(["--config", str(TINY_CONFIG), *tiny_overrides(root, tmp_path), "trainer.max_epochs=1",
                          "trainer.precision=32-true", "eval.memory_retrieval=false", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    # named from the workflow and the cohort name ingest recorded in the manifest, never its folder
    assert run.info.run_name.startswith(f"pretrain-{load_cohort_spec(REPO / 'cohorts' / f'{name}.yaml').name}-")
    assert sorted(json.loads(run.data.params["model.modalities"])) == sorted(modalities)
    metrics = run.data.metrics
    directions = [f"test.{a}_to_{b}.R_at_1" for a in modalities for b in modalities if a != b]
    missing = [key for key in directions if key not in metrics]
    assert not missing, (missing, sorted(metrics))
    assert all(0.0 <= metrics[key] <= 1.0 for key in directions)
    absent = {"xray", "ecg", "report"} - set(modalities)
    assert not [key for key in metrics if any(f"{m}_to" in key or f"to_{m}" in key for m in absent)]
    # every study the cohort reads was decoded, none skipped
    assert metrics["data.n_skipped_studies"] == 0
    assert {split: int(metrics[f"data.n_{split}_studies"]) for split in ("train", "val", "test")} == facts.studies
