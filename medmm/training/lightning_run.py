"""Trainer, checkpoints and resume of a Lightning training run tracked in MLflow.

A run writes ``<output_dir>/run_state.json`` naming its MLflow run, checkpoint folder and
resolved config, so that ``--resume`` continues the same MLflow run from the newest readable
checkpoint. Every epoch overwrites ``last.ckpt`` with that epoch (atomically: temp file,
fsync, rename), besides the best epoch by ``val/loss``; each epoch's randomness and data order
derive from (seed, epoch) (:mod:`medmm.training.epoch_seeding`), so a resumed run trains as an
uninterrupted one would.
Metric steps that the run already logged before it was killed are not logged again.
A FINISHED run is not resumed (``--resume-new`` continues it in a new run); a resume whose
config differs from the stored one, or that finds no readable checkpoint, is an error.
The config needs ``seed``, ``output_dir``, ``trainer`` (:class:`medmm.training.config.TrainerConfig`)
and ``tracking`` (:class:`medmm.tracking.config.RunTrackingConfig`).

Several processes (torchrun, srun: :func:`join_launched_processes`) make one run: the first
opens the MLflow run, writes the run state, checkpoints and logs; the others get the run's id
from it and log nothing. Each draws its share of the training studies from the permutation a
single process draws (:class:`SingleProcessOrder`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.tracking import MlflowClient
from torch.utils.data import DistributedSampler

from medmm.config.core import ConfigError, flatten
from medmm.console import Number, adopt_library_loggers, headline, progress_enabled
from medmm.tracking.pipeline_run import ensure_experiment, remember_open_run, run_name
from medmm.tracking.run_context import artifact_location
from medmm.tracking.store import default_tracking_uri, prepare_store
from medmm.training.epoch_seeding import EpochSeededRandomness, epoch_seed
from medmm.training.global_batchnorm import GlobalBatchNormSync, several_processes
from medmm.training.precision import PrecisionChoice, rule_choice

RUN_STATE = "run_state.json"
LAST = "last"  # last.ckpt: the newest complete epoch
CONTINUES_TAG = "medmm.continues_run"
PRECISION_TAG = "medmm.precision"


MODALITY_NAMES = {"xray": "X-ray", "ecg": "ECG", "report": "report", "labs": "labs"}
HEADLINE_K = 5  # the headline's retrieval number: label-match precision at 5 (P@5)


@dataclass
class PretrainOutcome:
    """What a pretraining run leaves: its MLflow run, held-out metrics and their table.
    ``rows`` (metric, value, chance, oracle: the contrastive evaluation's) put the headline's
    numbers beside chance and oracle; ``table`` ends with notes after its last blank line
    (timings, the exported model's folder), which the headline repeats."""

    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    table: str
    model_uri: str | None
    n_skipped: int
    registered_name: str | None = None
    rows: list[dict] = field(default_factory=list)

    def numbers(self) -> list[Number]:
        """Label-match P@5 of each direction into the report (of every direction where no
        modality is a report) by plain similarity, the figure other papers report, and beside
        it the re-ranked one that validation chose (where the run fitted re-rankers); and each
        modality's mean zero-shot AUROC."""
        levels = {r["metric"]: r for r in self.rows}
        directions = [key.removesuffix(f".P@{HEADLINE_K}") for key in self.metrics
                      if key.endswith(f".P@{HEADLINE_K}") and key.count(".") == 1]
        into_report = [d for d in directions if d.endswith("_to_report")]
        out = []
        for direction in into_report or directions:
            query, _, candidate = direction.partition("_to_")
            row = levels.get(f"{query}->{candidate} P@{HEADLINE_K}", {})
            # the oracle's expected value and the upper edge of its spread on this test split
            against = (("chance", row.get("chance")), ("oracle", row.get("oracle")), ("band", row.get("oracle_upper")))
            names = f"{MODALITY_NAMES.get(query, query)} -> {MODALITY_NAMES.get(candidate, candidate)}"
            out.append(Number(f"{names} P@{HEADLINE_K} (findings match, plain similarity)",
                              self.metrics[f"{direction}.P@{HEADLINE_K}"], against))
            reranked = self.metrics.get(f"{direction}.val_chosen.P@{HEADLINE_K}")
            # the evaluation's row of that figure names the method: "<q>-><c> P@5 val-chosen: <method>"
            chosen = f"{query}->{candidate} P@{HEADLINE_K} val-chosen: "
            method = next((r["metric"].removeprefix(chosen) for r in self.rows if r["metric"].startswith(chosen)),
                          "re-ranked")
            if reranked is not None and self.metrics.get(f"{direction}.val_chosen_method"):  # 0: plain, shown
                out.append(Number(f"{names} P@{HEADLINE_K} ({method}, chosen on validation)", reranked, against))
        for modality in MODALITY_NAMES:
            planted = self.metrics.get(f"zeroshot_{modality}.planted_mean")
            findings = [v for k, v in self.metrics.items() if k.startswith(f"zeroshot_{modality}.")
                        and not k.endswith("planted_mean")]
            if planted is not None:
                out.append(Number(f"zero-shot {MODALITY_NAMES[modality]} AUROC (planted findings)", planted,
                                  (("chance", 0.5),)))
            elif findings:
                out.append(Number(f"zero-shot {MODALITY_NAMES[modality]} AUROC (mean of {len(findings)} findings)",
                                  float(np.mean(findings)), (("chance", 0.5),)))
        return out

    def __str__(self) -> str:  # what the command prints
        notes = self.table.rsplit("\n\n", 1)[1].splitlines() if "\n\n" in self.table else []
        if self.model_uri:
            notes.append(f"registered model: {self.registered_name} ({self.model_uri})")
        if self.n_skipped:
            notes.append(f"skipped studies with unreadable files: {self.n_skipped}")
        return headline("test split (held-out patients)", self.numbers(), run_id=self.run_id,
                        tracking_uri=self.tracking_uri, table="results/test_metrics.json", notes=notes)


@dataclass
class WorkerOutcome:
    """What a process other than the first of a multi-process run returns: the first one
    evaluates, logs and reports the run, so this one has nothing to print (``str`` is empty)."""

    run_id: str
    rank: int

    def __str__(self) -> str:
        return ""


class TrainingBar(RichProgressBar):
    """Lightning's rich bar on stderr (stdout carries the command's results), without the
    logger's version number (the run id's tail) among the metrics."""

    def __init__(self):
        super().__init__(refresh_rate=1, console_kwargs={"stderr": True})

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def progress_callbacks(callbacks: Sequence[Callback] = ()) -> dict:
    """The trainer arguments of the training bar: ``callbacks`` plus :class:`TrainingBar`
    where bars are on (:func:`medmm.console.progress_enabled`: a terminal, or
    ``MEDMM_PROGRESS=1``), else no bar (Lightning draws its own even into a log file).
    ``L.Trainer(..., **progress_callbacks([checkpoint]))``."""
    shown = progress_enabled()
    return {"callbacks": [*callbacks, TrainingBar()] if shown else list(callbacks), "enable_progress_bar": shown}


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(global step, epoch) of a readable checkpoint, None for an unreadable one (a kill
    mid-write). Loaded with ``weights_only=True``: a checkpoint is data, never code."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("global_step", -1)), int(ckpt.get("epoch", -1))
    except Exception as exc:  # noqa: BLE001 - any unreadable file: try the next one
        print(f"WARNING: checkpoint {path.name} is unreadable ({type(exc).__name__}); trying an older one",
              file=sys.stderr)
        return None


def latest_readable_checkpoint(ckpt_dir: Path) -> str | None:
    """The readable checkpoint of ``ckpt_dir`` furthest into training (``last.ckpt`` unless a
    kill left it unreadable); None when there is none."""
    positions = {path: checkpoint_position(path) for path in sorted(ckpt_dir.glob("*.ckpt"))}
    readable = {path: pos for path, pos in positions.items() if pos is not None}
    if not readable:
        return None
    # furthest first; among equals last.ckpt (it is written after the best-epoch copy)
    return str(max(readable, key=lambda path: (*readable[path], path.stem == LAST)))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temp file in its folder, fsyncs it and renames it into place:
    a kill mid-write leaves the previous checkpoint whole."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)


class NoRepeatClient(MlflowClient):
    """An MLflow client that logs each (metric, step) of a run once: a resumed run re-runs the
    steps between its checkpoint and the kill, whose metrics the run already holds."""

    def __init__(self, tracking_uri: str, run_id: str | None = None):
        super().__init__(tracking_uri)
        self._logged: set[tuple[str, int]] = set()
        if run_id is not None:
            for key in self.get_run(run_id).data.metrics:
                self._logged.update((key, m.step) for m in self.get_metric_history(run_id, key))

    def _fresh(self, key: str, step: int | None) -> bool:
        entry = (key, int(step or 0))
        if entry in self._logged:
            return False
        self._logged.add(entry)
        return True

    def log_metric(self, run_id, key, value, timestamp=None, step=None, *args, **kwargs):
        if self._fresh(key, step):
            return super().log_metric(run_id, key, value, timestamp, step, *args, **kwargs)
        return None

    def log_batch(self, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
        metrics = [m for m in metrics if self._fresh(m.key, m.step)]
        return super().log_batch(run_id, metrics, params, tags, *args, **kwargs)


class TrackedRunLogger(MLFlowLogger):
    """Lightning's MLflow logger through a :class:`NoRepeatClient`, which leaves the run open
    when training ends: the workflow evaluates and then finishes it (or a failure ends it
    FAILED), so a kill during evaluation leaves a run that ``--resume`` continues. In a
    process other than the first of a multi-process run it never touches the store (Lightning
    logs from the first process only) and ``run_id`` names the first process's run."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None = None,
                 run_id: str | None = None):
        adopt_library_loggers()  # Lightning, imported by now, added its own log handlers
        first = rank_zero_only.rank == 0
        if first:
            ensure_experiment(MlflowClient(tracking_uri), experiment, tracking_uri)
        super().__init__(experiment_name=experiment, run_name=run_name, tracking_uri=tracking_uri,
                         run_id=run_id, artifact_location=artifact_location(tracking_uri))
        self._mlflow_client = NoRepeatClient(tracking_uri, run_id if first else None)

    def finalize(self, status: str = "success") -> None:
        pass  # the workflow ends the run


class SingleProcessOrder(Callback):
    """Under DDP Lightning replaces the training sampler by a ``DistributedSampler``, which
    draws a permutation of its own (seeded with seed + epoch); this has it draw the one a single
    process draws in that epoch (``randperm`` seeded with :func:`epoch_seed`, as
    :class:`EpochSeededRandomness` seeds the single process's sampler), of which process r of W
    takes every W-th study from the r-th on. A step's global batch then holds the same studies
    whatever the number of processes: W processes with ``data.batch_size`` B / W train on the
    batches of one process with B."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, DistributedSampler) and sampler.shuffle:
                # its permutation's seed is seed + epoch, the epoch set by Lightning before this hook
                sampler.seed = epoch_seed(self.seed, trainer.current_epoch) - sampler.epoch


def log_precision_choice(logger, choice: PrecisionChoice) -> None:
    """The run's precision and its source as tags (a resume on another machine may choose
    differently, and params cannot change), the probe's medians as metrics."""
    client = logger.experiment
    client.set_tag(logger.run_id, PRECISION_TAG, choice.precision)
    client.set_tag(logger.run_id, f"{PRECISION_TAG}_source", choice.source)
    for name, value in choice.figures.items():
        client.log_metric(logger.run_id, f"precision_probe.{name}", value)


def checkpointing_trainer(cfg, logger, ckpt_dir: Path, precision: PrecisionChoice | None = None) -> L.Trainer:
    """The Lightning trainer of ``cfg.trainer``: every epoch checkpointed as ``last.ckpt`` and
    the one with the lowest ``val/loss`` as ``epochNNN.ckpt`` in ``ckpt_dir``; randomness seeded
    per epoch, so a resume repeats what an uninterrupted run draws. ``precision``: a measured
    choice (:func:`medmm.training.precision.choose_precision`); without one the config's, else
    the rule's. The choice is logged to the run. In a run of several processes BatchNorm
    layers normalise by the global batch (:mod:`medmm.training.global_batchnorm`)."""
    choice = precision or rule_choice(cfg.trainer.precision)
    log_precision_choice(logger, choice)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           save_top_k=1, monitor="val/loss", mode="min")
    newest = ModelCheckpoint(dirpath=ckpt_dir, filename=LAST, save_top_k=1, every_n_epochs=1,
                             enable_version_counter=False)
    return L.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes, precision=choice.precision, logger=logger,
        **progress_callbacks([best, newest, EpochSeededRandomness(cfg.seed), SingleProcessOrder(cfg.seed)]),
        # several processes: BatchNorm over the global batch, as one process would train
        plugins=[AtomicCheckpointIO(), *([GlobalBatchNormSync()] if several_processes() else [])],
        log_every_n_steps=cfg.trainer.log_every_n_steps, limit_train_batches=cfg.trainer.limit_train_batches,
        # with GradCache the task clips itself (Lightning forbids the option under manual optimisation)
        gradient_clip_val=None if cfg.trainer.grad_cache_chunk else cfg.trainer.gradient_clip_val,
        enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=False,
    )


def stored_config(cfg) -> dict[str, str]:
    """The flattened resolved config as strings: what a resume must match."""
    return {k: "None" if v is None else str(v) for k, v in flatten(cfg).items()}


def _resume_point(cfg, state: dict, tracking_uri: str, new_run: bool) -> str:
    """The checkpoint a resume starts from, after the checks that refuse it."""
    client = MlflowClient(tracking_uri)
    if not new_run and client.get_run(state["run_id"]).info.status == "FINISHED":
        raise ConfigError(f"--resume: MLflow run {state['run_id']} is FINISHED; "
                          "--resume-new continues it in a new run")
    if "config" in state:
        stored, current = state["config"], stored_config(cfg)
        differ = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
        if differ:
            raise ConfigError(f"--resume: the config differs from the stored run's in {', '.join(differ)}")
    ckpt_dir = Path(state["ckpt_dir"])
    for leftover in ckpt_dir.glob(".*.tmp"):  # a checkpoint write that a kill interrupted
        leftover.unlink(missing_ok=True)
    ckpt_path = latest_readable_checkpoint(ckpt_dir)
    if ckpt_path is None:
        raise ConfigError(f"--resume: no readable checkpoint of run {state['run_id']} in {ckpt_dir}; "
                          "start a new run without --resume")
    return ckpt_path


def join_launched_processes(trainer_cfg) -> Fabric:
    """This process's place among the run's processes (``.global_rank``, ``.world_size``) for
    the trainer config's accelerator, devices and nodes. Where a launcher started every process
    (torchrun, or srun under SLURM: Lightning's TorchElastic and SLURM environments), the process
    group is joined here rather than at ``trainer.fit``, so that the first process alone opens
    the MLflow run and decodes the cohort before the others read it
    (``.rank_zero_first()``); the trainer's strategy then finds the group joined and uses it.
    The other processes print errors only: their warnings and log lines repeat the first's.
    More processes than one without such a launcher is a config error: Lightning would start
    the others itself, after the first had opened its run."""
    processes = Fabric(accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices,
                       num_nodes=trainer_cfg.num_nodes)
    if processes.world_size == 1 or (dist.is_available() and dist.is_initialized()):
        return processes
    if not processes.strategy.cluster_environment.creates_processes_externally:
        raise ConfigError(f"trainer.devices={trainer_cfg.devices} with trainer.num_nodes={trainer_cfg.num_nodes} "
                          f"makes {processes.world_size} processes: start them with pipelines/torchrun_pretrain.sh "
                          "(torchrun) or pipelines/slurm_pretrain.sbatch (srun), or set trainer.devices=1")
    if processes.global_rank != 0:
        logging.disable(logging.WARNING)
        warnings.simplefilter("ignore")
    adopt_library_loggers()  # Lightning's notes on joining print once, through medmm's handler
    processes.launch()
    return processes


def from_first_process(value):
    """``value`` as the first process has it; every process of the run calls this (the
    others' ``value`` is not read). Outside a multi-process run, ``value``."""
    if not several_processes():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _open_run(cfg, name: str, resume: bool | str) -> tuple[TrackedRunLogger, str, str | None]:
    """The first process's part of :func:`start_or_resume_run`: the MLflow run and the run state."""
    tracking_uri = prepare_store(cfg.tracking.uri or default_tracking_uri())
    mlflow.set_tracking_uri(tracking_uri)
    output_dir = Path(cfg.output_dir)
    state_path = output_dir / RUN_STATE
    ckpt_path = None
    if resume:
        if not state_path.exists():
            raise ConfigError(f"--resume: no run to resume in {output_dir} ({RUN_STATE} missing)")
        state = json.loads(state_path.read_text())
        ckpt_path = _resume_point(cfg, state, tracking_uri, new_run=resume == "new")
        if resume == "new":
            logger = TrackedRunLogger(tracking_uri, cfg.tracking.experiment, name)
            MlflowClient(tracking_uri).set_tag(logger.run_id, CONTINUES_TAG, state["run_id"])
            print(f"continuing MLflow run {state['run_id']} in a new run {logger.run_id} from {ckpt_path}")
        else:
            logger = TrackedRunLogger(tracking_uri, cfg.tracking.experiment, run_id=state["run_id"])
            MlflowClient(tracking_uri).update_run(state["run_id"], status="RUNNING")
            print(f"resuming MLflow run {state['run_id']} from {ckpt_path}")
    else:
        logger = TrackedRunLogger(tracking_uri, cfg.tracking.experiment, name)
    remember_open_run(tracking_uri, logger.run_id)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = {"run_id": logger.run_id, "ckpt_dir": str(output_dir / logger.run_id / "checkpoints"),
             "config": stored_config(cfg)}
    state_path.write_text(json.dumps(state))
    return logger, tracking_uri, ckpt_path


def start_or_resume_run(cfg, resume: bool | str):
    """Seed, threads and the MLflow run of a training run: a new run, or with ``resume`` the
    run and newest readable checkpoint that ``output_dir``'s run state names (``resume="new"``:
    that checkpoint in a new MLflow run). A new run is named ``tracking.run_name``, else after
    the workflow (``pretrain``, or ``ptunifier`` for a ``kind: ptunifier`` config), the cohort
    and the time (:func:`medmm.tracking.pipeline_run.run_name`). Returns (logger, tracking_uri,
    checkpoint to resume from or None, run folder)."""
    name = run_name(cfg, "ptunifier" if getattr(cfg, "kind", None) == "ptunifier" else "pretrain")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    first = join_launched_processes(cfg.trainer).global_rank == 0
    opened = None
    if first:
        try:
            logger, tracking_uri, ckpt_path = _open_run(cfg, name, resume)
            opened = (logger.run_id, tracking_uri, ckpt_path)
        finally:
            opened = from_first_process(opened)  # the others learn of a failure too, and stop
    else:
        opened = from_first_process(None)
        if opened is None:
            # the first process failed: it reports why and exits with the failure's status; this one
            # ends quietly, so that the launcher (torchrun, srun) names the first as the failure
            raise SystemExit(0)
        run_id, tracking_uri, ckpt_path = opened
        logger = TrackedRunLogger(tracking_uri, cfg.tracking.experiment, run_id=run_id)
        remember_open_run(tracking_uri, run_id)  # a failure in this process ends the run FAILED too
    return logger, tracking_uri, ckpt_path, Path(cfg.output_dir) / logger.run_id
