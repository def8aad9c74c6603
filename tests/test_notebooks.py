"""Every notebook runs top to bottom (nbclient) against the session's tiny tracked runs on a
live MLflow server, failing on any error; the notebooks named here must also show their key
output. Every notebook is also stored executed (`make notebooks`), so that a reader of the
repository sees its figures: stored outputs hold a figure, no error, no timing metadata and no
path or patient identifier."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Notebooks that read another pipeline's runs are executed by that pipeline's tests.
OWN_TESTS = {"survival.ipynb": "tests/workflows/survival/test_notebook.py",
             "segmentation.ipynb": "tests/workflows/segment/test_notebook.py"}
SHARED_RUN_NOTEBOOKS = [p for p in NOTEBOOKS if p.name not in OWN_TESTS]
# a string each notebook's outputs must contain (notebooks not listed: no error is enough)
KEY_OUTPUT = {
    "pretraining_results.ipynb": "xray->report P@5",
    "cohort_overview.ipynb": "studies per split",
    "report_generation.ipynb": "best per metric",
}


@pytest.mark.slow
@pytest.mark.parametrize("path", SHARED_RUN_NOTEBOOKS, ids=[p.name for p in SHARED_RUN_NOTEBOOKS])
def test_notebook_executes(path: Path, tracked_runs, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked_runs.uri)
    monkeypatch.setenv("MEDMM_EXPERIMENT", "medmm-tiny")
    monkeypatch.setenv("MEDMM_REPORT_EXPERIMENT", "medmm-report-tiny")
    monkeypatch.setenv("MEDMM_RETRIEVE_EXPERIMENT", "medmm-retrieve-tiny")
    monkeypatch.setenv("MEDMM_COHORT_EXPERIMENT", "medmm-retrieve-tiny")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    key = KEY_OUTPUT.get(path.name)
    if key is not None:
        assert any(key in str(o) for c in nb.cells for o in c.get("outputs", [])), key


# what stored outputs must not show: absolute paths, store URIs, demo patient / study ids
IDENTIFYING = re.compile(r"(?:/(?:tmp|work|home|root|Users)/|file:|sqlite:|DEMO-[PS]\d)")


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_executed(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "a code cell was not executed: run `make notebooks`"
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"], "a stored output is an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no stored figure"
    assert not [c for c in code if "execution" in c.metadata], "execution timing stored: strip it"
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     + str(o.get("data", {}).get("text/html", "")) for o in outputs)
    found = IDENTIFYING.findall(text)
    assert not found, f"stored outputs show a path or identifier: {found[:3]}"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
    assert set(KEY_OUTPUT) <= {p.name for p in SHARED_RUN_NOTEBOOKS}


def test_every_notebook_with_its_own_test_has_that_test():
    for name, test in OWN_TESTS.items():
        assert (REPO / "notebooks" / name).exists(), name
        assert (REPO / test).exists() and name in (REPO / test).read_text(), f"{test} does not execute {name}"
