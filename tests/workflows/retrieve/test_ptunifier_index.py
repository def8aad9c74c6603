"""A retrieval index from a PTUnifier pretraining model: its ITC embeddings index the X-rays
and reports (it has no ECG encoder, so no ECG index); a study's own X-ray,
queried through the index, finds that study first; a report query ranks reports."""

from __future__ import annotations

import json

import pytest

from medmm.config.core import build_config
from medmm.workflows.retrieve.config import RetrieveConfig
from medmm.workflows.retrieve.run import build, query
from tests.conftest import TINY_RETRIEVE_CONFIG


@pytest.mark.slow
def test_a_ptunifier_model_indexes_xrays_and_reports(ptunifier_pretrained, tiny_cohort):
    tmp = ptunifier_pretrained["tmp"]
    cfg = build_config(RetrieveConfig, TINY_RETRIEVE_CONFIG, [
        f"data.root={tiny_cohort}", f"data.cache_dir={tmp / 'cache'}", f"tracking.uri={ptunifier_pretrained['uri']}",
        f"index.path={tmp / 'ptu-index'}", "pretrained.kind=ptunifier",
        f"pretrained.source=models:/{ptunifier_pretrained['registered']}@champion"])
    outcome = build(cfg)
    meta = json.loads((tmp / "ptu-index" / "index.json").read_text())
    assert set(meta["modalities"]) == {"xray", "report"} and meta["pretrained_kind"] == "ptunifier"
    assert 0 <= outcome.metrics["test.xray_to_report.R_at_5"] <= 1
    study = sorted(tiny_cohort.glob("patients/*/*"))[3]
    hits = query(cfg, "xray", str(study / "xray.dcm"), 3, "xray")
    assert hits[0]["study_id"] == study.name and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    hits = query(cfg, "text", (study / "report.txt").read_text(), 3, "report")
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
