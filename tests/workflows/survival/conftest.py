"""Fixtures of the survival tests: the real H&E source and a tiny pathology cohort. The tiny
tracked breast-cancer run (``tiny_survival_run``) is a session fixture of tests/conftest.py,
shared with tests/tracking/test_pipeline_shape.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

TINY_SURVIVAL = REPO / "configs/survival/tiny.yaml"


def he_source() -> Path:
    from medmm.demo.pathology import he_wheel_path

    path = he_wheel_path()
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        pytest.skip(f"H&E source not found at {path}: run `make data-cache` (make test does it)")
    return path


@pytest.fixture(scope="session")
def tiny_pathology_cohort(tmp_path_factory) -> Path:
    """24 patients, 256-px slides cut from the real H&E image, built once per session."""
    from medmm.demo.pathology import build_pathology_cohort

    root = tmp_path_factory.mktemp("pathology") / "demo_pathology"
    build_pathology_cohort(root, n_patients=24, seed=3, slide_side=256, he_source=he_source(),
                           split_fractions=(0.5, 0.15, 0.35))
    return root


def survival_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"output_dir={tmp_path / 'runs'}", *extra]
