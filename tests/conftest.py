"""Shared fixtures: offline mode, the IU report source, and a tiny demo cohort built once."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from medmm.config.core import build_config
from medmm.data.tokenizer import load_tokenizer
from medmm.demo.pathology import build_pathology_cohort, he_wheel_path
from medmm.models.registry import create_model
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig
from tests.cohort import replicas

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module: tests rerun a results page's generator on tiny data."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MEDMM_IU_REPORTS", str(REPO / "data/cache/torchxrayvision-1.5.7-py3-none-any.whl"))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TINY_CONFIG = REPO / "configs/pretrain/tiny.yaml"


@pytest.fixture(autouse=True, scope="session")
def pseudonym_key_for_tests():
    """A test key for patient / study pseudonyms (subprocesses inherit it), so that no test
    run generates a key into the real ~/.config/medmm."""
    saved = os.environ.get("MEDMM_PSEUDONYM_KEY")
    os.environ["MEDMM_PSEUDONYM_KEY"] = saved or "medmm-test-pseudonym-key"
    yield
    if saved is None:
        os.environ.pop("MEDMM_PSEUDONYM_KEY", None)


@pytest.fixture(autouse=True, scope="session")
def user_cache_for_tests(tmp_path_factory):
    """A temporary user cache folder (subprocesses inherit it), so that no test run writes the
    precision probe's per-machine cache into the real ~/.cache/medmm."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


def iu_source() -> Path:
    path = Path(os.environ["MEDMM_IU_REPORTS"])
    if not path.exists():
        pytest.skip(f"IU reports not found at {path}: run `make data-cache` (make test does it)")
    return path


@pytest.fixture
def hospital_export(tmp_path) -> Path:
    """The hospital-style PACS export replica (tests/cohort/replicas.py), written afresh."""
    root = tmp_path / "export"
    root.mkdir()
    replicas.hospital_export(root)
    return root


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 60-study demo cohort in real formats (DICOM, WFDB, text), built once per session."""
    from medmm.demo.generator import build_demo_cohort

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


# --- report generation / retrieval / MLflow server: one live MLflow server per
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
    from medmm.workflows.contrastive.config import PretrainConfig
    from medmm.workflows.contrastive.run import run
    from medmm.workflows.report import run as report
    from medmm.workflows.report.config import ReportConfig
    from medmm.workflows.retrieve import run as retrieve
    from medmm.workflows.retrieve.config import RetrieveConfig

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


# --- the tiny tracked runs of the PTUnifier pretraining, finetune, survival and segment
# pipelines (every pipeline leaves one shape), each run once per session and shared
# by the pipeline's own tests and tests/tracking/test_pipeline_shape.py.
FINETUNE_TASKS = ("image_classification", "text_classification", "retrieval", "vqa")


@pytest.fixture(scope="session")
def ptunifier_pretrained(tiny_cohort, tmp_path_factory):
    """A tiny PTUnifier pretraining run through the pretrain CLI, its export registered as
    ``ptunifier-tiny``."""
    from mlflow.tracking import MlflowClient

    from medmm.pipelines.pretrain import main
    from tests.conftest import PTU_TINY

    tmp = tmp_path_factory.mktemp("ptu")
    overrides = tiny_overrides(tiny_cohort, tmp)
    assert main(["--config", str(PTU_TINY), *overrides, "trainer.limit_train_batches=3",
                 "tracking.register_model=true", "tracking.registered_name=ptunifier-tiny"]) == 0
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("medmm-tiny").experiment_id])[0]
    export = next(Path(tmp / "runs" / run.info.run_id).glob("export"))
    return {"tmp": tmp, "uri": uri, "run": run, "export": export, "overrides": overrides,
            "registered": "ptunifier-tiny"}


def finetune_cli(pretrained: dict, checkpoint, task: str, *extra: str) -> int:
    """``python -m medmm.pipelines.finetune`` (in process) on the tiny cohort, into the
    PTUnifier run's store, run name = task."""
    from medmm.pipelines.finetune import main

    tmp = pretrained["tmp"]
    over = [f"checkpoint={checkpoint}", f"data.root={pretrained['overrides'][0].split('=', 1)[1]}",
            f"data.cache_dir={tmp / 'cache'}", f"tracking.uri={pretrained['uri']}", f"output_dir={tmp / 'ft'}",
            "epochs=1", "limit_train_batches=2", "data.batch_size=8", f"tracking.run_name={task}", *extra]
    return main(["--config", str(REPO / f"configs/finetune/{task}.yaml"), *over])


def last_finetune_run(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("medmm-finetune")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'",
                              order_by=["attributes.start_time DESC"])[0]


@pytest.fixture(scope="session")
def ptunifier_finetunes(ptunifier_pretrained):
    """Every downstream task fine-tuned from the tiny PTUnifier run (half the labels): task ->
    its MLflow run. Retrieval starts from the registered export (``models:/ptunifier-tiny@champion``),
    the others from the export folder; image classification is registered (``medmm-finetune-
    image_classification``; the others are not, to keep the 60 MB copies of the tiny model off disk)."""
    runs = {}
    for task in FINETUNE_TASKS:
        checkpoint = (f"models:/{ptunifier_pretrained['registered']}@champion" if task == "retrieval"
                      else ptunifier_pretrained["export"])
        register = f"tracking.register_model={str(task == 'image_classification').lower()}"
        assert finetune_cli(ptunifier_pretrained, checkpoint, task, "data.label_fraction=0.5", register) == 0, task
        runs[task] = last_finetune_run(ptunifier_pretrained["uri"], task)
    return runs


@pytest.fixture(scope="session")
def tiny_survival_run(tmp_path_factory):
    """One tiny tracked run of every tabular head and both baselines (breast cancer), shared
    by the survival pipeline and notebook tests; the Cox head is registered."""
    from medmm.config.core import build_config
    from medmm.workflows.survival.config import SurvivalConfig
    from medmm.workflows.survival.run import run
    from tests.workflows.survival.conftest import TINY_SURVIVAL, survival_overrides

    tmp = tmp_path_factory.mktemp("survival_run")
    return run(build_config(SurvivalConfig, TINY_SURVIVAL, survival_overrides(tmp)))


@pytest.fixture(scope="session")
def tiny_volume_cohort(tmp_path_factory) -> Path:
    """A tiny CT + MR phantom cohort in real formats (NIfTI, DICOM series, manifest)."""
    from medmm.demo.volumes import write_volume_cohort

    root = tmp_path_factory.mktemp("volumes") / "demo_volumes"
    write_volume_cohort(root, n_per_modality=3, size=24, spacing_mm=12.0, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_segment_run(tiny_volume_cohort, tmp_path_factory):
    """One tiny tracked segmentation run (both variants, 4 steps): (SegmentOutcome, its folder)."""
    from medmm.config.core import build_config
    from medmm.workflows.segment.config import SegmentConfig
    from medmm.workflows.segment.run import train
    from tests.workflows.segment.conftest import TINY_SEG_CONFIG, seg_overrides

    tmp = tmp_path_factory.mktemp("segrun")
    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, seg_overrides(tiny_volume_cohort, tmp))
    return train(cfg), tmp


# --- PTUnifier: the tiny config and a tiny model built from it
PTU_TINY = REPO / "configs/pretrain/ptunifier_tiny.yaml"

REPORTS = ["No pleural effusion. The heart is normal.", "Cardiomegaly with a small left pleural effusion.",
           "Normal chest.", "Pacemaker in place; calcified granuloma in the right upper lobe."]


def ptu_cfg(*overrides: str) -> PTUnifierPretrainConfig:
    return build_config(PTUnifierPretrainConfig, PTU_TINY, list(overrides))


def make_model(*overrides: str):
    cfg = ptu_cfg(*overrides)
    torch.manual_seed(0)
    return create_model("ptunifier", cfg.model, image_size=cfg.data.image_size), cfg


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture
def text_batch(tokenizer):
    enc = tokenizer(REPORTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# --- pathology: the real H&E source and a tiny pathology cohort
def he_source() -> Path:
    path = he_wheel_path()
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        pytest.skip(f"H&E source not found at {path}: run `make data-cache` (make test does it)")
    return path


@pytest.fixture(scope="session")
def tiny_pathology_cohort(tmp_path_factory) -> Path:
    """24 patients, 256-px slides cut from the real H&E image, built once per session."""
    root = tmp_path_factory.mktemp("pathology") / "demo_pathology"
    build_pathology_cohort(root, n_patients=24, seed=3, slide_side=256, he_source=he_source(),
                           split_fractions=(0.5, 0.15, 0.35))
    return root
