"""Retrieval index end to end: queries by DICOM, WFDB and text against the session's tiny
index (HNSW past exact_max=30 studies), JSON and table outputs, and a stale index refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_RETRIEVE_CONFIG

PY = sys.executable


def run_cli(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([PY, "-m", "medmm.pipelines.retrieve", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_main(capsys, *args):
    """The CLI in-process (a subprocess per call would cost the imports again)."""
    from medmm.pipelines.retrieve import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _query(tracked_runs, kind, value, against):
    from medmm.config.core import build_config
    from medmm.workflows.retrieve.config import RetrieveConfig
    from medmm.workflows.retrieve.run import query

    cfg = build_config(RetrieveConfig, TINY_RETRIEVE_CONFIG, [*tracked_runs.common, f"index.path={tracked_runs.tmp / 'index'}",
                                                              f"pretrained.source={tracked_runs.source}"])
    return query(cfg, kind, value, 3, against)


@pytest.mark.slow
def test_index_is_approximate_past_exact_max_and_queries_by_every_input(tracked_runs):
    meta = json.loads((tracked_runs.tmp / "index" / "index.json").read_text())
    assert meta["n_studies"] == 60 and meta["modalities"]["report"]["kind"] == "hnsw"
    study = sorted(tracked_runs.cohort.glob("patients/*/*"))[5]
    own_text = (study / "report.txt").read_text()
    # a study's own X-ray, searched in the X-ray index, finds that study first (same vector)
    hits = _query(tracked_runs, "xray", str(study / "xray.dcm"), "xray")
    assert hits[0]["study_id"] == study.name and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    hits = _query(tracked_runs, "ecg", str(study / "ecg.hea"), "ecg")
    assert hits[0]["study_id"] == study.name
    hits = _query(tracked_runs, "text", own_text, "report")
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


@pytest.mark.slow
def test_cli_json_table_and_stale_index(tracked_runs, tmp_path, capsys):
    common = ["--config", str(TINY_RETRIEVE_CONFIG), *tracked_runs.common, f"index.path={tracked_runs.tmp / 'index'}",
              f"pretrained.source={tracked_runs.source}"]
    out = run_cli("query", "--text", "small left pleural effusion", "-k", "2", "--json", *common)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    assert len(payload["hits"]) == 2 and {"study_id", "score", "report", "rank"} <= set(payload["hits"][0])
    code, out, err = run_main(capsys, "query", "--text", "cardiomegaly", *common)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["rank", "score", "study"]
    # another model (the report generator is no pretraining model) or other weights: refused
    stale = tmp_path / "stale"
    import shutil

    shutil.copytree(tracked_runs.tmp / "index", stale)
    meta = json.loads((stale / "index.json").read_text())
    meta["checkpoint_sha256"] = "0" * 64
    (stale / "index.json").write_text(json.dumps(meta))
    code, _, err = run_main(capsys, "query", "--text", "cardiomegaly", *common, f"index.path={stale}")
    assert code == 2 and "stale index" in err and str(stale) in err
