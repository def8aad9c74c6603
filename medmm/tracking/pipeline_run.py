"""The one shape every medmm pipeline leaves in MLflow, so runs of different pipelines
read alike in the dashboard and in notebooks:

* the run: named ``<workflow>-<cohort>-<YYYYmmdd-HHMMSS>`` unless ``tracking.run_name``
  names it (:func:`run_name`), in an experiment tagged ``mlflow.experimentKind`` =
  ``custom_model_development``, which the MLflow UI opens on its runs (:func:`ensure_experiment`);
* tags: ``medmm.pipeline`` (the command: pretrain - both families, ``model.name`` tells
  them apart -, finetune, survival, segment, report, retrieve, ...), ``git_commit``,
  ``git_dirty``, ``manifest_sha256`` (a cohort without a manifest, survival's bundled
  tables, gives its content hash); params: the flattened resolved config;
* artifacts: ``run/`` (config.yaml, pseudonymised manifest, its hash, git.json, skipped
  files: :func:`medmm.tracking.run_context.log_run_context`), ``results/`` (JSON / text
  tables), ``figures/`` (PNG);
* metrics: ``<split>.<name>`` for evaluations (``test.bleu4``), ``train/...`` and
  ``val/...`` for curves, ``time.<phase>_s`` for phase timings, ``data.n_<split>_studies``;
* the model: a pyfunc logged from code under ``model``
  (:func:`medmm.tracking.saved_model.log_saved_model`; weights as safetensors, no pickle)
  and, when the config's ``tracking.register_model`` says so, registered with two aliases:
  ``newest`` (this run) and ``champion`` (moved only when this run's *validation*
  selection metric beats the current champion's; a pipeline that selects nothing on
  validation data -- finetune, segment -- sets ``newest`` only). Selection metrics: ``val/loss`` (pretrain, both
  families), ``best_val_loss`` (report; survival: the registered model's early-stopping
  loss), the task's headline test metric (finetune: no validation split), ``test.mean_dice``
  (segment: a fixed step budget, no validation-based selection).
"""

from __future__ import annotations

import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from medmm.cohort.manifest import COHORT_NAME_KEY, MANIFEST_NAME
from medmm.console import adopt_library_loggers
from medmm.io.findings import FINDINGS
from medmm.metrics.reference_levels import REFERENCE_MODEL_FILE
from medmm.tracking.run_context import (
    artifact_location,
    log_json_artifact,
    log_run_context,
)
from medmm.tracking.store import default_tracking_uri, prepare_store

# "latest" is reserved by MLflow (models:/name/latest), hence "newest"
LATEST, CHAMPION = "newest", "champion"
FAILURE_TAG = "medmm.failure"
# the experiment tag MLflow's UI reads to choose an experiment's page: without it a new
# experiment opens on the GenAI traces page; "custom_model_development" opens it on its runs
EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
RUN_TIME_FORMAT = "%Y%m%d-%H%M%S"
REASON_MAX = 250
# runs this process opened and has not finished: (tracking URI, run id); a failing command ends them FAILED
_open_runs: list[tuple[str, str]] = []
# a token with a path separator (absolute or relative path), or a file name with a file-like extension:
# cohort paths and file names embed subject IDs
_PATH_LIKE = re.compile(
    r"[^\s'\"(),;\[\]]*[/\\][^\s'\"(),;\[\]]*"
    r"|[^\s'\"(),;\[\]]+\.(?:dcm|dicom|hea|dat|nii|gz|zip|tif|tiff|svs|ndpi|mrxs|png|jpe?g|csv|tsv|txt|json|"
    r"ya?ml|parquet|npy|npz|ckpt|pt|db|xml|h5|edf|safetensors)\b", re.IGNORECASE)


def metric_name(name: str) -> str:
    """MLflow-safe metric key (``P@5`` -> ``P_at_5``; only [A-Za-z0-9_-./ ] kept)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name.replace("@", "_at_"))


def cohort_label(root: str | Path | None) -> str | None:
    """The cohort's name as a run-name part, never read from its path (folder names of real
    cohorts embed subject IDs and user names): the name ingest recorded in the manifest (its
    Parquet key-value metadata ``medmm.cohort``, the cohort spec's ``name``), ``demo`` for the
    synthetic demo cohort (its folder carries the ideal observer, ``reference_model.json``),
    else None. Kept to letters, digits, ``.``, ``_`` and ``-``, at most 32 characters."""
    if root is None:
        return None
    root = Path(root)
    manifest = root / MANIFEST_NAME
    name = None
    if manifest.is_file():
        try:
            recorded = pq.read_schema(manifest).metadata or {}
        except (OSError, ValueError):  # an unreadable manifest is reported where the data are read
            recorded = {}
        name = recorded.get(COHORT_NAME_KEY.encode(), b"").decode("utf-8", "replace") or None
    if name is None and (root / REFERENCE_MODEL_FILE).is_file():
        name = "demo"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip("-.")[:32]
    return name or None


def default_run_name(workflow: str, cohort: str | None = None, when: datetime | None = None) -> str:
    """``<workflow>-<cohort>-<YYYYmmdd-HHMMSS>`` (``pretrain-demo-20261207-071233``); without a
    cohort name, ``<workflow>-<YYYYmmdd-HHMMSS>``."""
    parts = [workflow, cohort, (when or datetime.now()).strftime(RUN_TIME_FORMAT)]
    return "-".join(p for p in parts if p)


def run_name(config, workflow: str) -> str:
    """The name of a run of ``config``: ``tracking.run_name`` when set, else named from the
    workflow, the cohort (the data section's bundled ``dataset``, else the name of the cohort
    under its ``root``: :func:`cohort_label`) and the time. Named here, not by MLflow: MLflow
    draws its random names from Python's ``random``, which the run's seed has already fixed,
    so every run would be named alike."""
    given = getattr(getattr(config, "tracking", None), "run_name", None)
    if given:
        return given
    data = getattr(config, "data", None)
    dataset = getattr(data, "dataset", None)
    bundled = isinstance(dataset, str) and dataset != "pathology"
    return default_run_name(workflow, dataset if bundled else cohort_label(getattr(data, "root", None)))


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created where missing (its artifacts beside a SQLite
    store: :func:`medmm.tracking.run_context.artifact_location`) and tagged as a model-development
    experiment, so that the MLflow UI opens it on its runs, not on GenAI traces. An existing
    experiment without the tag gets it; an experiment whose kind the user set keeps it."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(tracking_uri),
                                            tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
        except MlflowException:  # another process created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    return experiment.experiment_id


def start_run(tracking_uri: str | None, experiment: str, run_name: str | None, pipeline: str):
    """Create a run (named ``run_name``, else :func:`default_run_name` of ``pipeline``);
    returns (client, run_id, tracking_uri)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = prepare_store(tracking_uri or default_tracking_uri())
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, experiment, uri)
    run = client.create_run(exp_id, run_name=run_name or default_run_name(pipeline),
                            tags={"medmm.pipeline": pipeline})
    remember_open_run(uri, run.info.run_id)
    return client, run.info.run_id, uri


def lightning_logger(experiment: str, run_name: str | None, tracking_uri: str):
    """Lightning's MLflow logger for a new run (named ``run_name``, else after the experiment
    and the time), in an experiment made by :func:`ensure_experiment`."""
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    adopt_library_loggers()  # Lightning, imported by now, added its own log handlers
    prepare_store(tracking_uri)
    ensure_experiment(MlflowClient(tracking_uri), experiment, tracking_uri)
    logger = MLFlowLogger(experiment_name=experiment, run_name=run_name or default_run_name(experiment),
                          tracking_uri=tracking_uri, artifact_location=artifact_location(tracking_uri))
    remember_open_run(tracking_uri, logger.run_id)
    return logger


def remember_open_run(tracking_uri: str, run_id: str) -> None:
    """Note a run this process opened, so that a failing command can end it FAILED."""
    if (tracking_uri, run_id) not in _open_runs:
        _open_runs.append((tracking_uri, run_id))


def failure_reason(exc: BaseException) -> str:
    """``"<ExceptionType>: <first line of the message>"`` with paths and file names cut out
    (they embed subject IDs in real cohorts), at most ``REASON_MAX`` characters."""
    lines = str(exc).strip().splitlines()
    message = _PATH_LIKE.sub("<path>", lines[0] if lines else "")
    return f"{type(exc).__name__}: {message}".rstrip(": ")[:REASON_MAX]


def fail_open_runs(exc: BaseException) -> list[str]:
    """End every run this process opened and did not finish as FAILED, tagged with
    :func:`failure_reason`; returns their ids. Never raises: the original error matters more."""
    from mlflow.tracking import MlflowClient

    failed = []
    reason = failure_reason(exc)
    while _open_runs:
        uri, run_id = _open_runs.pop()
        try:
            client = MlflowClient(uri)
            client.set_tag(run_id, FAILURE_TAG, reason)
            client.set_terminated(run_id, status="FAILED")
            failed.append(run_id)
        except Exception as tracking_error:  # noqa: BLE001 - report, and keep the command's own error
            print(f"WARNING: could not mark MLflow run {run_id} FAILED ({type(tracking_error).__name__})",
                  file=sys.stderr)
    return failed


def log_context(client, run_id: str, pipeline: str, config, manifest, skipped: list[dict],
                content_hash: str | None = None) -> None:
    """Params, git / manifest tags and the ``run/`` artifacts, plus the pipeline tag
    (``manifest=None`` with the cohort's ``content_hash`` for a cohort without a manifest)."""
    log_run_context(client, run_id, config, manifest, skipped, content_hash)
    client.set_tag(run_id, "medmm.pipeline", pipeline)


def log_metrics(client, run_id: str, metrics: dict[str, float], prefix: str = "", step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(metric_name(f"{prefix}{k}"), float(v), now, step) for k, v in metrics.items()
             if v is not None and math.isfinite(float(v))]
    for i in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[i : i + 500])


def log_figure(client, run_id: str, figure, name: str) -> None:
    import matplotlib.pyplot as plt

    client.log_figure(run_id, figure, f"figures/{name}.png")
    plt.close(figure)


def log_json(client, run_id: str, name: str, payload: Any) -> None:
    log_json_artifact(client, run_id, name, payload, artifact_path="results")


def register_with_aliases(client, model_uri: str, name: str, run_id: str, metric: str | None,
                          higher_is_better: bool = True) -> str:
    """Register ``model_uri`` as a new version of ``name``; alias it ``newest``, and
    ``champion`` when its run's ``metric`` (a validation metric) beats the current
    champion's. ``metric=None`` (a pipeline that selects nothing on validation data) sets
    ``newest`` only: a champion picked by a test metric would leak the test set into
    model selection. Returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    # a logged model's URI (models:/m-<id>) must name its model id, or a REST server refuses it
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id).version
    client.set_registered_model_alias(name, LATEST, version)
    if metric is None:
        client.set_model_version_tag(name, version, "selection_metric", "none: no validation metric")
        return str(version)
    mine = client.get_run(run_id).data.metrics.get(metric)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        theirs = client.get_run(current.run_id).data.metrics.get(metric)
    except MlflowException:
        theirs = None
    better = theirs is None or (mine is not None and (mine > theirs if higher_is_better else mine < theirs))
    if better:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "selection_metric", f"{metric}={mine}")
    return str(version)


def finish(client, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=status)
    for entry in [e for e in _open_runs if e[1] == run_id]:
        _open_runs.remove(entry)


def log_cohort_summary(client, run_id: str, cohort) -> None:
    """Aggregate counts only (no identifiers): studies and positive findings per split,
    report length in words; ``results/cohort_summary.json`` (the cohort-overview notebook reads it)."""
    summary = {"findings": list(FINDINGS), "skipped": len(cohort.skipped), "splits": {}}
    for split in ("train", "val", "test"):
        idx = cohort.indices(split)
        if not len(idx):
            continue
        words = np.array([len(str(t).split()) for t in cohort.report_text[idx]])
        summary["splits"][split] = {
            "studies": len(idx),
            "positives": {f: int(v) for f, v in zip(FINDINGS, cohort.labels[idx].sum(0))},
            "no_finding": int((cohort.labels[idx].sum(1) == 0).sum()),
            "report_words_median": float(np.median(words)), "report_words_p90": float(np.percentile(words, 90)),
            "xray_shape": list(cohort.xray.shape[1:]), "ecg_shape": list(cohort.ecg.shape[1:]),
        }
    log_json(client, run_id, "cohort_summary.json", summary)


def save_weights(module_or_state, path: Path) -> Path:
    """A module's state dict (or a dict of tensors) as safetensors."""
    from safetensors.torch import save_file

    state = module_or_state if isinstance(module_or_state, dict) else module_or_state.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    return path
