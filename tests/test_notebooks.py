"""Every notebook runs top to bottom (nbclient) against the session's tiny tracked runs on a
live MLflow server, failing on any error; the notebooks named here must also show their key
output."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# a string each notebook's outputs must contain (notebooks not listed: no error is enough)
KEY_OUTPUT = {
    "pretraining_results.ipynb": "xray->report P@5",
    "cohort_overview.ipynb": "studies per split",
    "report_generation.ipynb": "best per metric",
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
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


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
    assert set(KEY_OUTPUT) <= {p.name for p in NOTEBOOKS}
