"""A run's command ends with its headline: the numbers that matter beside chance or the
baselines, where the full table is, and how to open the run; every workflow's outcome uses
the one helper."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medmm.console import Number, headline
from medmm.console.headline import serve_command
from medmm.tracking.pipeline_run import finish, start_run
from medmm.training.lightning_run import PretrainOutcome
from medmm.workflows.finetune.run import FinetuneOutcome
from medmm.workflows.report.run import ReportOutcome
from medmm.workflows.retrieve.run import BuildOutcome
from medmm.workflows.segment.run import SegmentOutcome
from medmm.workflows.survival.run import SurvivalOutcome
from tests.conftest import REPO


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run in a SQLite store: (tracking URI, run id, experiment id, run name)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('headline') / 'mlflow.db'}"
    client, run_id, _ = start_run(uri, "headline", None, "pretrain")
    finish(client, run_id)
    info = client.get_run(run_id).info
    return uri, run_id, info.experiment_id, info.run_name


def lines_of(text: str) -> dict[str, str]:
    """Headline lines by their first words (the number's name, or 'Full table:' ...)."""
    return {re.split(r"\s{2,}", line.strip())[0]: line for line in text.splitlines() if line.strip()}


def test_the_headline_gives_numbers_against_references_the_table_and_how_to_open_the_run(run):
    uri, run_id, experiment_id, name = run
    text = headline("test split", [Number("P@5", 0.6184, (("chance", 0.57), ("oracle", None))),
                                   Number("AUROC", 0.8)], run_id=run_id, tracking_uri=uri,
                    table="results/test_metrics.json", notes=["registered model: m (models:/m/1)"])
    lines = lines_of(text)
    assert text.splitlines()[1] == f"Run {name} - test split:"
    assert re.fullmatch(r"\s+P@5\s+0\.618\s+chance 0\.570", lines["P@5"])  # no reference where it is unknown
    assert re.fullmatch(r"\s+AUROC\s+0\.800", lines["AUROC"])
    assert "registered model: m (models:/m/1)" in lines
    assert "results/test_metrics.json" in lines["Full table:"]
    assert lines["Open the run:"].endswith(
        f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")
    assert lines[f"MLflow run id: {run_id} (store {uri})"]


def test_the_dashboard_command_fits_the_store():
    assert serve_command(f"sqlite:///{REPO / 'mlflow.db'}") == "make mlflow"
    elsewhere = "sqlite:////elsewhere/mlflow.db"
    assert serve_command(elsewhere) == f"mlflow ui --backend-store-uri {elsewhere}"
    assert serve_command("http://tracking:5000") is None
    # a run on a server is opened on that server; a store that cannot be read still gives the run id
    text = headline("x", [], run_id="abc", tracking_uri="sqlite:////no/such/folder/mlflow.db")
    assert "Open the run:  mlflow ui --backend-store-uri sqlite:////no/such/folder/mlflow.db, then " \
           "http://127.0.0.1:5000/#/runs/abc" in text


def test_every_workflow_outcome_ends_with_the_shared_headline(run):
    uri, run_id, experiment_id, name = run
    common = {"run_id": run_id, "tracking_uri": uri}
    contrastive = PretrainOutcome(
        metrics={"xray_to_report.P@5": 0.62, "xray_to_report.prior_corrected.P@5": 0.7, "report_to_xray.P@5": 0.5,
                 "xray_to_report.val_chosen.P@5": 0.7, "xray_to_report.val_chosen_method": 1.0,
                 "zeroshot_xray.cardiomegaly": 0.7, "zeroshot_xray.edema": 0.9},
        table="long table\n\ntime: data 2 s, train 4 s", model_uri=None, n_skipped=2,
        rows=[{"metric": "xray->report P@5", "value": 0.62, "chance": 0.57, "oracle": 0.82},
              {"metric": "xray->report P@5 val-chosen: prior-corrected", "value": 0.7, "chance": 0.57,
               "oracle": 0.82}], **common)
    ptunifier = PretrainOutcome(metrics={"xray_to_report.P@5": 0.56, "report_to_xray.P@5": 0.55},
                                table="rows\n\nexported model: /runs/x/export", model_uri="models:/m-1", n_skipped=0,
                                registered_name="medmm-ptunifier", **common)
    finetune = FinetuneOutcome(metrics={"auroc.macro": 0.71, "auroc.edema": 0.6}, family="ptunifier",
                               task="image_classification", **common)
    report = ReportOutcome(metrics={"model_greedy": {"bleu4": 0.02, "rouge_l": 0.2, "ce_f1": 0.3},
                                    "model_beam2": {"bleu4": 0.03, "rouge_l": 0.21, "ce_f1": 0.1},
                                    "nearest_neighbour": {"bleu4": 0.05, "rouge_l": 0.25, "ce_f1": 0.2},
                                    "most_frequent": {"bleu4": 0.07, "rouge_l": 0.36, "ce_f1": 0.0}},
                           table="t", model_uri=None, version=None, **common)
    survival = SurvivalOutcome(results={"cox": {"harrell_c": 0.706, "harrell_c_lo": 0.545, "harrell_c_hi": 0.807},
                                        "coxnet": {"harrell_c": 0.575}, "rsf": {"harrell_c": 0.667}},
                               table="t", **common)
    segment = SegmentOutcome(summary=[{"variant": v, "modality": m, "class": c, "dice": d}
                                      for v, m, c, d in [("text", "ct", "mean", 0.8), ("none", "ct", "mean", 0.7),
                                                         ("text", "ct", "liver", 0.9), ("text", "mr", "mean", 0.6),
                                                         ("none", "mr", "mean", 0.65)]],
                             table="t", n_skipped=0, **common)
    built = BuildOutcome(index_path=Path("/runs/index"), metrics={"index.n_studies": 60.0, "time.embed_s": 9.0,
                                                                  "test.xray_to_report.R_at_5": 0.45}, **common)
    expected = [  # (outcome, lines its headline holds, its full table)
        (contrastive, ["X-ray -> report P@5 (findings match, plain similarity)        0.620   chance 0.570   "
                       "oracle 0.820",
                       "X-ray -> report P@5 (prior-corrected, chosen on validation)   0.700   chance 0.570   "
                       "oracle 0.820",
                       "zero-shot X-ray AUROC (mean of 2 findings)                    0.800   chance 0.500",
                       "time: data 2 s, train 4 s", "skipped studies with unreadable files: 2"],
         "results/test_metrics.json"),
        (ptunifier, ["X-ray -> report P@5 (findings match, plain similarity)   0.560", "exported model: /runs/x/export",
                     "registered model: medmm-ptunifier (models:/m-1)"], "results/test_metrics.json"),
        (finetune, ["macro AUROC over findings   0.710   chance 0.500"], "results/test_metrics.json"),
        (report, ["BLEU-4 (greedy)        0.020   nearest-report baseline 0.050   most-frequent baseline 0.070",
                  "findings F1 (greedy)   0.300   nearest-report baseline 0.200   most-frequent baseline 0.000"],
         "results/report_metrics.txt"),
        (survival, ["cox Harrell C (95% CI 0.545-0.807)   0.706   chance 0.500   best baseline, rsf 0.667"],
         "results/test_metrics.md"),
        (segment, ["CT mean Dice, MulModSeg (text-conditioned)  0.800   plain head 0.700",
                   "MR mean Dice, MulModSeg (text-conditioned)  0.600   plain head 0.650"], "results/test_table.md"),
        (built, ["test xray -> report R@5 (through the index)   0.450", "index of 60 studies written to /runs/index"],
         "results/index_meta.json"),
    ]
    for outcome, wanted, table in expected:
        text = str(outcome)
        assert text.splitlines()[1].startswith(f"Run {name} - "), text
        words = [" ".join(line.split()) for line in text.splitlines()]  # columns aligned with any spacing
        for line in wanted:
            assert any(" ".join(line.split()) in w for w in words), f"{type(outcome).__name__}: {line!r} not in\n{text}"
        assert f"Full table:    {table}" in text
        assert text.rstrip().endswith(f"MLflow run id: {run_id} (store {uri})")
        assert f"/#/experiments/{experiment_id}/runs/{run_id}" in text
        assert "long table" not in text  # the full table stays in MLflow
        # of the re-rankers, only the one validation chose, beside plain similarity
        assert text.count("prior-corrected") == (outcome is contrastive) and "memory" not in text
    # only the directions into the report where there are some; no baseline's own line; class means only
    assert "report -> X-ray" not in str(contrastive)
    assert "coxnet" not in str(survival) and "beam" not in str(report) and "liver" not in str(segment)
