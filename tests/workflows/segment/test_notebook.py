"""notebooks/segmentation.ipynb runs top to bottom on a tiny tracked run (nbclient)."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO


@pytest.mark.slow
def test_segmentation_notebook_executes(trained, tiny_volume_cohort, monkeypatch):
    outcome, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outcome.tracking_uri)
    monkeypatch.setenv("MEDMM_SEG_RUN_ID", outcome.run_id)
    monkeypatch.setenv("MEDMM_SEG_ROOT", str(tiny_volume_cohort))
    nb = nbformat.read(REPO / "notebooks/segmentation.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the overlay figure
    assert any("held-out test split" in str(o) for o in outputs)
