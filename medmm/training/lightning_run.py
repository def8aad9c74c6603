"""Trainer, checkpoints and resume of a Lightning training run tracked in MLflow.

A run writes ``<output_dir>/run_state.json`` naming its MLflow run and checkpoint folder,
so that ``--resume`` continues the same MLflow run from the newest readable checkpoint.
The config needs ``seed``, ``output_dir``, ``trainer`` (:class:`medmm.training.config.TrainerConfig`)
and ``tracking`` (:class:`medmm.tracking.config.RunTrackingConfig`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import mlflow
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from medmm.config.core import ConfigError
from medmm.tracking.pipeline_run import lightning_logger
from medmm.tracking.run_context import default_tracking_uri
from medmm.training.precision import default_precision

RUN_STATE = "run_state.json"


@dataclass
class PretrainOutcome:
    """What a pretraining run leaves: its MLflow run, held-out metrics and their table."""

    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    table: str
    model_uri: str | None
    n_skipped: int
    registered_name: str | None = None

    def __str__(self) -> str:  # what the command prints
        lines = ["", "Test-split metrics (held-out patients) beside chance and oracle:", "", self.table, "",
                 f"MLflow run id: {self.run_id}", f"Tracking store: {self.tracking_uri}"]
        if self.model_uri:
            lines.append(f"Registered model: {self.registered_name} ({self.model_uri})")
        lines.append("Open the dashboard with `make mlflow` (http://127.0.0.1:5000).")
        return "\n".join(lines)


def latest_readable_checkpoint(ckpt_dir: Path) -> str | None:
    """``last.ckpt``, or the newest other checkpoint if a kill left it half-written.

    Loaded with ``weights_only=True``: a checkpoint is data, never code."""
    candidates = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    for path in candidates:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: try the next one
            print(f"WARNING: checkpoint {path} is unreadable ({type(exc).__name__}); trying an older one",
                  file=sys.stderr)
            continue
        return str(path)
    return None


def checkpointing_trainer(cfg, logger, ckpt_dir: Path) -> L.Trainer:
    """The Lightning trainer of ``cfg.trainer``: the last epoch and the one with the lowest
    ``val/loss`` checkpointed in ``ckpt_dir``."""
    precision = cfg.trainer.precision or default_precision()
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                 save_last=True, save_top_k=1, monitor="val/loss", mode="min")
    return L.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        precision=precision, logger=logger, callbacks=[checkpoint],
        log_every_n_steps=cfg.trainer.log_every_n_steps, limit_train_batches=cfg.trainer.limit_train_batches,
        # with GradCache the task clips itself (Lightning forbids the option under manual optimisation)
        gradient_clip_val=None if cfg.trainer.grad_cache_chunk else cfg.trainer.gradient_clip_val,
        enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=False,
    )


def start_or_resume_run(cfg, resume: bool):
    """Seed, threads and the MLflow run of a training run: a new run, or with ``resume`` the
    run and newest readable checkpoint that ``output_dir``'s run state names. Returns
    (logger, tracking_uri, checkpoint to resume from or None, run folder)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    output_dir = Path(cfg.output_dir)
    state_path = output_dir / RUN_STATE
    ckpt_path = None
    if resume:
        if not state_path.exists():
            raise ConfigError(f"--resume: no run to resume in {output_dir} ({RUN_STATE} missing)")
        state = json.loads(state_path.read_text())
        ckpt_path = latest_readable_checkpoint(Path(state["ckpt_dir"]))
        logger = MLFlowLogger(tracking_uri=tracking_uri, run_id=state["run_id"])
        print(f"resuming MLflow run {state['run_id']} from {ckpt_path or 'the start (no checkpoint yet)'}")
    else:
        logger = lightning_logger(cfg.tracking.experiment, cfg.tracking.run_name, tracking_uri)
    run_dir = output_dir / logger.run_id
    output_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps({"run_id": logger.run_id, "ckpt_dir": str(run_dir / "checkpoints")}))
    return logger, tracking_uri, ckpt_path, run_dir
