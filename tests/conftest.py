"""Shared fixtures: offline mode, the IU report source, and a tiny demo cohort built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MEDMM_IU_REPORTS", str(REPO / "data/cache/torchxrayvision-1.5.7-py3-none-any.whl"))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TINY_CONFIG = REPO / "configs/pretrain/tiny.yaml"


def iu_source() -> Path:
    path = Path(os.environ["MEDMM_IU_REPORTS"])
    if not path.exists():
        pytest.skip(f"IU reports not found at {path}: run `make data-cache` (make test does it)")
    return path


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 60-study demo cohort in real formats (DICOM, WFDB, text), built once per session."""
    from medmm.data.demo.generator import build_demo_cohort

    root = tmp_path_factory.mktemp("cohort") / "demo"
    build_demo_cohort(root, n_studies=60, seed=1, workers=1, iu_source=iu_source())
    return root


def tiny_overrides(cohort: Path, tmp_path: Path, *extra: str) -> list[str]:
    """Overrides that point the tiny config at a cohort and a private MLflow store."""
    return [
        f"data.root={cohort}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]
