"""Every notebook runs top to bottom against a tiny tracked run (nbclient), failing on any error."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, TINY_CONFIG, tiny_overrides

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Notebooks that read another pipeline's runs are executed by that pipeline's tests.
OWN_TESTS = {"survival.ipynb": "tests/survival/test_notebook.py",
             "segmentation.ipynb": "tests/segmentation/test_notebook.py"}
PRETRAIN_NOTEBOOKS = [p for p in NOTEBOOKS if p.name not in OWN_TESTS]


@pytest.fixture(scope="module")
def tracked_run(tiny_cohort, tmp_path_factory):
    from medmm.config.core import build_config
    from medmm.config.pretrain import PretrainConfig
    from medmm.pipelines.pretrain import run

    tmp = tmp_path_factory.mktemp("nb")
    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(tiny_cohort, tmp, "eval.examples_figure=true",
                                                                  "trainer.max_epochs=1"))
    return run(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("path", PRETRAIN_NOTEBOOKS, ids=[p.name for p in PRETRAIN_NOTEBOOKS])
def test_notebook_executes(path: Path, tracked_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked_run.tracking_uri)
    monkeypatch.setenv("MEDMM_EXPERIMENT", "medmm-tiny")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any("xray->report P@5" in str(o) for c in nb.cells for o in c.get("outputs", []))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


def test_every_notebook_with_its_own_test_has_that_test():
    for name, test in OWN_TESTS.items():
        assert (REPO / "notebooks" / name).exists(), name
        assert (REPO / test).exists() and name in (REPO / test).read_text(), f"{test} does not execute {name}"
