"""Helpers of the segmentation tests. The tiny CT + MR phantom cohort (``tiny_volume_cohort``)
and its tracked run (``tiny_segment_run``) are session fixtures of tests/conftest.py, shared
with tests/tracking/test_pipeline_shape.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

TINY_SEG_CONFIG = REPO / "configs/segment/tiny.yaml"


def seg_overrides(cohort: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [f"data.root={cohort}", f"output_dir={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]


@pytest.fixture(scope="session")
def trained(tiny_segment_run):
    """One tiny tracked run (both variants, 4 steps): (SegmentOutcome, its folder)."""
    return tiny_segment_run
