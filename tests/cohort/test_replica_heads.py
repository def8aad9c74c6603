"""The TCGA, AMOS and BTCV cohort specs end to end: each dataset's replica
(tests/cohort/replicas.py) ingested by ``python -m medmm.pipelines.ingest`` with its shipped
spec, then trained and scored by the command it is for (survival; segmentation) into a
SQLite MLflow store. Every planted patient or case is used, and the logged scores are
recomputed from the run's own predictions and masks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from sksurv.metrics import concordance_index_censored

from medmm.config.core import build_config
from medmm.data.segmentation import cohort_classes
from medmm.data.survival import load_pathology_cohort
from medmm.io.errors import InconsistentDataError
from medmm.pipelines.ingest import main as ingest
from medmm.pipelines.segment import main as segment
from medmm.pipelines.survival import main as survival
from medmm.workflows.segment.config import SegmentConfig
from medmm.workflows.survival.config import SurvivalConfig
from tests.cohort import replicas

REPO = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")
# labelled cases each segmentation replica plants, by modality (AMOS: imagesTs has no label)
PLANTED_CASES = {"amos": {"ct": 10, "mr": 3}, "btcv": {"ct": 12}}
ORGANS = {1: "spleen", 6: "liver"}  # the label values the replicas paint (replicas._ORGANS)


def ingested(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    root.mkdir()
    replicas.REPLICAS[name](root)
    assert ingest(["--spec", str(REPO / f"cohorts/{name}.yaml"), "--root", str(root), "--workers", "1"]) == 0
    return root


def only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_tcga_trains_cmta_and_the_baselines_on_every_planted_case(tmp_path):
    root = ingested("tcga", tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = REPO / "configs/survival/tcga.yaml"
    assert build_config(SurvivalConfig, config, []).data.root == Path("data/tcga")  # the spec's root
    assert survival(["--config", str(config), f"data.root={root}", f"output_dir={tmp_path / 'runs'}",
                     f"tracking.uri={uri}", "data.tile_size=16", "data.bag_size=8", "train.epochs=2",
                     "train.dim=16", "train.n_bins=2", "eval.n_bootstrap=5", "baselines.inner_folds=2",
                     "baselines.rsf_trees=10", "baselines.rsf_min_samples_leaf=2"]) == 0
    client, run = only_run(uri, "medmm-survival")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    wsi = pd.read_parquet(root / "manifest.parquet").query("modality == 'wsi'")
    split_of = dict(zip(wsi["patient_id"], wsi["split"]))
    # every case with a slide or feature bag (8 .svs + 4 .pt), none skipped; the split is the manifest's
    assert sorted(split_of) == sorted(replicas.tcga_cases())
    assert metrics["data.n_skipped"] == 0
    # (the manifest's train and val patients fit the models; early stopping holds out some of them)
    assert metrics["data.n_train"] + metrics["data.n_val"] == sum(s != "test" for s in split_of.values())
    assert metrics["data.n_test"] == sum(s == "test" for s in split_of.values()) == 4

    # the outcome is the clinical table's (months; censorship 1 = censored), test patients in id order
    clinical = pd.read_csv(root / "clinical.csv").set_index("case_submitter_id")
    test_cases = sorted(p for p, s in split_of.items() if s == "test")
    preds = pd.read_csv(client.download_artifacts(run.info.run_id, "results/test_predictions.csv", str(tmp_path)))
    np.testing.assert_array_equal(preds["time"], clinical.loc[test_cases, "survival_months"])
    np.testing.assert_array_equal(preds["event"], 1 - clinical.loc[test_cases, "censorship"])
    for name in ("cmta", "concat", "pathology", "genomics", "coxnet", "rsf"):
        c = concordance_index_censored(preds["event"].astype(bool), preds["time"], preds[f"risk.{name}"])[0]
        assert 0.0 <= metrics[f"test.{name}.harrell_c"] <= 1.0
        assert metrics[f"test.{name}.harrell_c"] == pytest.approx(c)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLANTED_CASES))
def test_abdominal_segmentation_on_every_planted_case_with_the_datasets_classes(name, tmp_path):
    root = ingested(name, tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shipped = build_config(SegmentConfig, REPO / f"configs/segment/{name}.yaml", [])
    assert shipped.data.root == Path(f"data/{name}") and shipped.data.modalities is None  # the cohort's
    assert segment(["train", "--config", str(REPO / "configs/segment/tiny.yaml"), f"data.root={root}",
                    f"output_dir={tmp_path / 'runs'}", f"tracking.uri={uri}", "trainer.max_steps=20", "optim.lr=0.01",
                    "trainer.log_every_n_steps=10"]) == 0
    client, run = only_run(uri, "medmm-segment-tiny")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics

    # the classes are dataset.json's (AMOS 15 organs, BTCV 13), in label-value order
    labels = json.loads((root / "dataset.json").read_text())["labels"]
    assert json.loads(run.data.tags["classes"]) == [labels[str(v)] for v in range(len(labels))]
    assert len(labels) == {"amos": 16, "btcv": 14}[name]

    # the modalities are the cohort's; every labelled case used, in the manifest's split
    manifest = pd.read_parquet(root / "manifest.parquet")
    planted = PLANTED_CASES[name]
    assert {k.split(".")[-1] for k in metrics if k.startswith("data.n_train.")} == set(planted)
    for modality, n in planted.items():
        counts = manifest.query("modality == @modality")["split"].value_counts()
        assert {s: metrics[f"data.n_{s}.{modality}"] for s in SPLITS} == {s: counts.get(s, 0) for s in SPLITS}
        assert sum(counts) == n

    # Dice per class and modality recomputed from the logged test masks against the label maps
    label_of = manifest.query("modality == 'label'").set_index("study_id")["path"]
    cases = json.loads(open(client.download_artifacts(run.info.run_id, "results/test_cases.json",
                                                      str(tmp_path))).read())["test_cases"]
    assert {c["modality"] for c in cases} == set(planted)
    logged_dice = []
    for variant in ("text", "none"):
        scores: dict[tuple[str, int], list[float]] = {}
        for case in cases:
            mask = nib.load(client.download_artifacts(run.info.run_id, f"masks/{variant}/{case['case']}.nii.gz",
                                                      str(tmp_path)))
            truth = nib.load(root / label_of[case["case"]])
            np.testing.assert_array_equal(mask.affine, truth.affine)
            pred, gt = np.asarray(mask.dataobj), np.asarray(truth.dataobj)
            for value in ORGANS:
                scores.setdefault((case["modality"], value), []).append(dice(pred == value, gt == value))
        for (modality, value), per_case in scores.items():
            logged = metrics[f"test.{variant}.{modality}.{ORGANS[value]}.dice"]
            assert 0.0 <= logged <= 1.0 and logged == pytest.approx(np.mean(per_case), abs=1e-6)
            logged_dice.append(logged)
    assert max(logged_dice) > 0.2  # 20 steps find the organs: the recomputation compares real overlaps


@pytest.mark.slow
def test_bad_class_lists_and_feature_bags_are_one_line_errors_naming_the_file(tmp_path, capsys):
    root = ingested("btcv", tmp_path)
    dataset = root / "dataset.json"
    info = json.loads(dataset.read_text())
    info["labels"] = {"0": "background", "1": "spleen", "3": "lkid"}
    dataset.write_text(json.dumps(info))
    with pytest.raises(InconsistentDataError, match="not 0, 1, 2, ... without gaps") as bad:
        cohort_classes(root)
    assert bad.value.path == str(dataset)
    dataset.unlink()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert segment(["train", "--config", str(REPO / "configs/segment/tiny.yaml"), f"data.root={root}",
                    f"output_dir={tmp_path / 'runs'}", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels.json or dataset.json" in err[0]
    client = MlflowClient(uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])  # checked before any run

    tcga = ingested("tcga", tmp_path)
    bag = sorted((tcga / "features").glob("*.pt"))[0]
    torch.save(torch.zeros(5, 1024), bag)  # another encoder's features than the other bags'
    with pytest.raises(InconsistentDataError, match="1024 features per tile") as bad:
        load_pathology_cohort(tcga, tmp_path / "cache", tile_size=16)
    assert bad.value.path == f"features/{bag.name}"
