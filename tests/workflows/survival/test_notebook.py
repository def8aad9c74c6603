"""notebooks/survival.ipynb runs top to bottom against a tiny tracked run (nbclient)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO


@pytest.mark.slow
def test_survival_notebook_executes(tiny_survival_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_survival_run.tracking_uri)
    monkeypatch.setenv("MEDMM_EXPERIMENT", "medmm-survival-tiny")
    nb = nbformat.read(REPO / "notebooks/survival.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = " ".join(str(o) for o in outputs)
    assert "calibration at t0" in text and "deepsurv" in text and tiny_survival_run.run_id in text
    assert sum(o.output_type == "display_data" for o in outputs) >= 2  # KM and calibration figures
