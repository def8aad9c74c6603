"""Helpers of the survival pipeline tests. The real H&E source, the tiny pathology cohort and
the tiny tracked breast-cancer run (``tiny_survival_run``) are in tests/conftest.py, shared
with the demo, tracking and model tests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO

TINY_SURVIVAL = REPO / "configs/survival/tiny.yaml"


def survival_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"output_dir={tmp_path / 'runs'}", *extra]
