"""Report generation end to end on the tiny cohort (the session's tracked run), the CLI
generate / evaluate commands and config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_REPORT_CONFIG

PY = sys.executable


def run_cli(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([PY, "-m", "medmm.pipelines.report", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_main(capsys, *args):
    """The CLI in-process (the command-line module's own main; a subprocess costs the imports again)."""
    from medmm.pipelines.report import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_and_config_errors(capsys):
    out = run_cli("--help", timeout=120)
    assert out.returncode == 0 and "decoder.use_ecg" in out.stdout and "generation.beams" in out.stdout
    code, _, err = run_main(capsys, "train", "--config", str(TINY_REPORT_CONFIG), "decoder.num_layer=2")
    assert code == 2 and "unknown config key 'decoder.num_layer'" in err
    code, _, err = run_main(capsys, "train", "--config", str(TINY_REPORT_CONFIG))  # no pretrained.source
    assert code == 2 and "pretrained.source is required" in err


@pytest.mark.slow
def test_tiny_training_scores_model_and_both_baselines(tracked_runs):
    metrics = tracked_runs.report.metrics
    assert set(metrics) == {"model_greedy", "model_beam2", "nearest_neighbour", "most_frequent"}
    for system, values in metrics.items():
        assert set(values) >= {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "ce_precision", "ce_recall",
                               "ce_f1"}, system
        assert all(0.0 <= values[k] <= 1.0 for k in values if k != "cider"), system
    assert "best per metric" in tracked_runs.report.table


@pytest.mark.slow
def test_generate_cli_writes_json_reports_and_names_a_bad_file(tracked_runs, tmp_path, capsys):
    xray = sorted(tracked_runs.cohort.glob("patients/*/*/xray.dcm"))[0]
    common = ["--config", str(TINY_REPORT_CONFIG), f"tracking.uri={tracked_runs.uri}"]
    code, out, err = run_main(capsys, "generate", "--model", "models:/medmm-report-tiny@champion", "--xray", str(xray),
                              "--ecg", str(xray.with_name("ecg.hea")), "--json", *common)
    assert code == 0, err[-2000:]
    rows = json.loads(out[out.index("["):])
    assert len(rows) == 1 and isinstance(rows[0]["report"], str) and rows[0]["xray"] == str(xray)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(xray.read_bytes()[:600])
    code, out, err = run_main(capsys, "generate", "--model", "models:/medmm-report-tiny@champion", "--xray", str(bad),
                              "--ecg", str(xray.with_name("ecg.hea")), *common)
    assert code == 2 and "bad.dcm" in err
