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


# --- report generation / retrieval / MLflow server (issue 7): one live MLflow server per
# session, and one tiny run of each pipeline against it over HTTP, shared by the pipeline,
# tracking and notebook tests.
TINY_REPORT_CONFIG = REPO / "configs/report/tiny.yaml"
TINY_RETRIEVE_CONFIG = REPO / "configs/retrieve/tiny.yaml"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from tests.live_mlflow import LiveServer

    server = LiveServer(tmp_path_factory.mktemp("mlflow_server"))
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
        assert server.proc.poll() is not None, "the mlflow server outlived its stop"
        assert code is not None


@pytest.fixture(scope="session")
def tracked_runs(tiny_cohort, mlflow_server, tmp_path_factory):
    """Tiny pretrain (registered as tiny-more), report (registered) and retrieval-index runs."""
    from types import SimpleNamespace

    from medmm.config.core import build_config
    from medmm.config.pretrain import PretrainConfig
    from medmm.config.report import ReportConfig
    from medmm.config.retrieve import RetrieveConfig
    from medmm.pipelines import report, retrieve
    from medmm.pipelines.pretrain import run

    tmp = tmp_path_factory.mktemp("tracked")
    uri = mlflow_server.uri
    common = [f"data.root={tiny_cohort}", f"data.cache_dir={tmp / 'cache'}", f"tracking.uri={uri}"]
    pre = run(build_config(PretrainConfig, TINY_CONFIG, [*common, f"output_dir={tmp / 'pre'}", "trainer.max_epochs=1",
                                                         "tracking.register_model=true",
                                                         "tracking.registered_name=tiny-more",
                                                         "eval.examples_figure=true"]))
    source = "models:/tiny-more@champion"
    rep = report.train(build_config(ReportConfig, TINY_REPORT_CONFIG, [*common, f"output_dir={tmp / 'rep'}",
                                                                       f"pretrained.source={source}"]))
    idx = retrieve.build(build_config(RetrieveConfig, TINY_RETRIEVE_CONFIG, [*common, f"index.path={tmp / 'index'}",
                                                                            f"pretrained.source={source}"]))
    return SimpleNamespace(uri=uri, cohort=tiny_cohort, tmp=tmp, pretrain=pre, report=rep, index=idx, source=source,
                           common=common)
