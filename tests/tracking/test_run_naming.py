"""Runs are named from the workflow, the cohort and the time (not by MLflow's random names,
which a seeded run would repeat), and experiments open on their runs in the MLflow UI."""

from __future__ import annotations

import random
import re
from datetime import datetime

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from medmm.cohort.manifest import COHORT_NAME_KEY
from medmm.config.core import build_config
from medmm.tracking.pipeline_run import (
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    cohort_label,
    default_run_name,
    finish,
    lightning_logger,
    run_name,
    start_run,
)
from medmm.training.lightning_run import start_or_resume_run
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.survival.config import SurvivalConfig
from tests.conftest import TINY_CONFIG, tiny_overrides

STAMP = r"\d{8}-\d{6}"


def test_a_default_name_is_workflow_cohort_and_time():
    when = datetime(2026, 12, 7, 7, 12, 33)
    assert default_run_name("pretrain", "demo", when) == "pretrain-demo-20261207-071233"
    assert default_run_name("retrieve", None, when) == "retrieve-20261207-071233"


def test_the_cohort_is_named_by_what_its_manifest_records_never_by_its_folder(tmp_path, tiny_cohort):
    assert cohort_label(tiny_cohort) == "demo"  # the synthetic demo cohort (its ideal observer beside it)
    export = tmp_path / "ward7_MRN99812"
    export.mkdir()
    table = pa.table({"patient_id": ["p"], "study_id": ["s"]})
    pq.write_table(table, export / "manifest.parquet")
    assert cohort_label(export) is None  # no name recorded: the folder's name is not used
    pq.write_table(table.replace_schema_metadata({COHORT_NAME_KEY: "Hospital export (CR) v2".encode()}),
                   export / "manifest.parquet")
    assert cohort_label(export) == "Hospital-export-CR-v2"
    assert cohort_label(tmp_path / "missing") is None


def test_the_config_names_the_run_or_its_workflow_and_cohort_do(tmp_path, tiny_cohort):
    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(tiny_cohort, tmp_path))
    assert re.fullmatch(rf"pretrain-demo-{STAMP}", run_name(cfg, "pretrain"))
    named = build_config(PretrainConfig, TINY_CONFIG, [*tiny_overrides(tmp_path, tmp_path), "tracking.run_name=mine"])
    assert run_name(named, "pretrain") == "mine"
    # a bundled survival table is the cohort
    assert re.fullmatch(rf"survival-gbsg2-{STAMP}", run_name(SurvivalConfig(data={"dataset": "gbsg2"}), "survival"))


def test_experiments_are_created_to_open_on_their_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run_id, _ = start_run(uri, "fresh", None, "segment")
    assert re.fullmatch(rf"segment-{STAMP}", client.get_run(run_id).info.run_name)
    experiment = client.get_experiment_by_name("fresh")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT == "custom_model_development"
    # an experiment made before (without the tag) gets it; one whose kind the user chose keeps it
    plain = client.create_experiment("made-before")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("made-before", "chosen"):
        finish(client, start_run(uri, name, "r", "test")[1])
    assert client.get_experiment(plain).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    finish(client, run_id)


def test_seeded_training_runs_get_our_names_not_mlflows_seeded_random_ones(tmp_path, tiny_cohort):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    names = []
    for attempt in range(2):
        cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(tiny_cohort, tmp_path / str(attempt)))
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": uri})})
        logger = start_or_resume_run(cfg, resume=False)[0]
        names.append(client.get_run(logger.run_id).info.run_name)
        finish(client, logger.run_id)
        random.seed(0)  # the seed a workflow sets before it opens its run
        L.seed_everything(0, verbose=False)
        other = lightning_logger("medmm-finetune", None, uri)
        names.append(client.get_run(other.run_id).info.run_name)
        finish(client, other.run_id)
    assert all(re.fullmatch(rf"pretrain-demo-{STAMP}", n) for n in names[::2]), names
    assert all(re.fullmatch(rf"medmm-finetune-{STAMP}", n) for n in names[1::2]), names
    for name in ("medmm-tiny", "medmm-finetune"):
        assert client.get_experiment_by_name(name).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
