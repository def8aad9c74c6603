"""medmm.demo.generator: the cohort carries its ideal observer (reference_model.json) and
the levels of its test split (reference_levels.json); nothing in the library imports the
demo package."""

from __future__ import annotations

import json
import re
from pathlib import Path

from medmm.cohort.manifest import Manifest
from medmm.demo.generator import DIRECTIONS, labels_of_split, observable_findings, reference_model
from medmm.io.findings import FINDINGS
from medmm.metrics.reference_levels import (
    REFERENCE_LEVELS_FILE,
    REFERENCE_MODEL_FILE,
    ReferenceModel,
    levels_from_model,
)

MEDMM = Path(__file__).resolve().parents[2] / "medmm"


def test_cohort_carries_its_reference_model_and_test_levels(tiny_cohort):
    model = ReferenceModel.load(tiny_cohort / REFERENCE_MODEL_FILE)
    assert model == reference_model()
    assert model.findings == FINDINGS
    assert model.observable == observable_findings()
    assert model.directions == DIRECTIONS
    levels = json.loads((tiny_cohort / REFERENCE_LEVELS_FILE).read_text())
    labels = labels_of_split(Manifest.load(tiny_cohort), "test")
    assert levels["n_test_studies"] == len(labels)
    assert levels == json.loads(json.dumps(levels_from_model(labels, model)))
    assert set(levels["retrieval"]) == {f"{q}->{c}" for q, c in DIRECTIONS}
    assert set(levels["zero_shot"]) == {"xray", "ecg"}


def test_library_and_workflows_do_not_import_the_demo_package():
    importer = re.compile(r"^\s*(?:from|import)\s+medmm\.demo\b", re.MULTILINE)
    offenders = [str(p.relative_to(MEDMM)) for p in sorted(MEDMM.rglob("*.py"))
                 if p.relative_to(MEDMM).parts[0] not in ("demo", "pipelines") and importer.search(p.read_text())]
    assert offenders == []
