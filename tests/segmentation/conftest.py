"""Fixtures of the segmentation tests: a tiny CT + MR phantom cohort in real formats
(NIfTI, DICOM series, manifest), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

TINY_SEG_CONFIG = REPO / "configs/segment/tiny.yaml"


@pytest.fixture(scope="session")
def tiny_volume_cohort(tmp_path_factory) -> Path:
    from medmm.data.demo.volumes import write_volume_cohort

    root = tmp_path_factory.mktemp("volumes") / "demo_volumes"
    write_volume_cohort(root, n_per_modality=3, size=24, spacing_mm=12.0, seed=3)
    return root


def seg_overrides(cohort: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [f"data.root={cohort}", f"output_dir={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]


@pytest.fixture(scope="session")
def trained(tiny_volume_cohort, tmp_path_factory):
    """One tiny tracked run (both variants, 4 steps): (SegmentOutcome, its folder)."""
    from medmm.config.core import build_config
    from medmm.config.segment import SegmentConfig
    from medmm.pipelines.segment import train

    tmp = tmp_path_factory.mktemp("segrun")
    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, seg_overrides(tiny_volume_cohort, tmp))
    return train(cfg), tmp
