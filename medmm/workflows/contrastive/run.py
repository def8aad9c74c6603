"""``python -m medmm.workflows.contrastive.run``: contrastive pretraining on a cohort, evaluated
on its held-out split and tracked in MLflow.

    python -m medmm.workflows.contrastive.run --config configs/pretrain/default.yaml trainer.max_epochs=3
    python -m medmm.workflows.contrastive.run --config ... --resume     # continue a killed run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from medmm.config.core import ConfigError, build_config, options_help
from medmm.workflows.contrastive.config import PretrainConfig

log = logging.getLogger("medmm.pretrain")
DEFAULT_CONFIG = Path("configs/pretrain/default.yaml")
RUN_STATE = "run_state.json"


@dataclass
class PretrainOutcome:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    table: str
    model_uri: str | None
    n_skipped: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m medmm.workflows.contrastive.run",
        description="Contrastive X-ray / ECG / report pretraining, evaluated and tracked in MLflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config options (override any with key=value):\n" + "\n".join(options_help(PretrainConfig)),
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None,
                        help="YAML config (default: configs/pretrain/default.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last run of output_dir from its last checkpoint (same MLflow run)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_epochs=3")
    return parser.parse_intermixed_args(argv)



def _latest_readable_checkpoint(ckpt_dir: Path) -> str | None:
    """``last.ckpt``, or the newest other checkpoint if a kill left it half-written.

    Loaded with ``weights_only=True``: a checkpoint is data, never code."""
    import torch

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


def _trainer(cfg: PretrainConfig, logger, ckpt_dir: Path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medmm.training.precision import default_precision

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
    """Seed, threads and the MLflow run of a pretraining pipeline: a new run, or with
    ``resume`` the run and newest readable checkpoint that ``output_dir``'s run state
    names. Returns (logger, tracking_uri, checkpoint to resume from or None, run folder)."""
    import lightning as L
    import mlflow
    import torch
    from lightning.pytorch.loggers import MLFlowLogger

    from medmm.tracking.pipeline_run import lightning_logger
    from medmm.tracking.run_context import default_tracking_uri

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
        ckpt_path = _latest_readable_checkpoint(Path(state["ckpt_dir"]))
        logger = MLFlowLogger(tracking_uri=tracking_uri, run_id=state["run_id"])
        print(f"resuming MLflow run {state['run_id']} from {ckpt_path or 'the start (no checkpoint yet)'}")
    else:
        logger = lightning_logger(cfg.tracking.experiment, cfg.tracking.run_name, tracking_uri)
    run_dir = output_dir / logger.run_id
    output_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps({"run_id": logger.run_id, "ckpt_dir": str(run_dir / "checkpoints")}))
    return logger, tracking_uri, ckpt_path, run_dir


def config_class(path: Path | None, overrides: list[str]) -> type:
    """The config schema of the model the YAML (or a ``model.name=`` override) names."""
    from medmm.config.core import apply_override, load_yaml

    data = load_yaml(path) if path is not None else {}
    for override in overrides:
        if override.split("=", 1)[0].strip() == "model.name":
            apply_override(data, override)
    model = data.get("model")
    if isinstance(model, dict) and model.get("name") == "ptunifier":
        from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig

        return PTUnifierPretrainConfig
    return PretrainConfig


def run(cfg: PretrainConfig, resume: bool = False) -> PretrainOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cfg.model.name == "ptunifier":  # a second pretraining family, its own task and evaluation
        from medmm.workflows.ptunifier.run import run as run_ptunifier

        return run_ptunifier(cfg, resume)
    # The text encoder's frozen, cached lower layers stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    from mlflow.tracking import MlflowClient

    from medmm.data.datamodule import PretrainDataModule
    from medmm.models.encoders.text import load_tokenizer
    from medmm.tracking.figures import retrieval_examples_figure
    from medmm.tracking.pipeline_run import log_context, register_with_aliases
    from medmm.tracking.run_context import log_json_artifact
    from medmm.workflows.contrastive.evaluation import cohort_reference_levels, evaluate_contrastive, format_table
    from medmm.workflows.contrastive.module import ContrastivePretrainTask
    from medmm.workflows.contrastive.served import log_and_register

    clock = {"start": time.perf_counter()}
    logger, tracking_uri, ckpt_path, run_dir = start_or_resume_run(cfg, resume)
    run_id = logger.run_id
    ckpt_dir = run_dir / "checkpoints"

    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=cfg.model.text.model_path)
    dm.setup()
    clock["data"] = time.perf_counter()
    if dm.cohort.skipped:
        print(f"WARNING: skipped {len(dm.cohort.skipped)} stud(ies) with unreadable files:", file=sys.stderr)
        for s in dm.cohort.skipped:
            print(f"  {s['path']}: {s['problem']}", file=sys.stderr)
    client = MlflowClient(tracking_uri)
    log_context(client, run_id, "pretrain", cfg, dm.manifest, dm.cohort.skipped)
    client.log_metric(run_id, "data.n_skipped_studies", len(dm.cohort.skipped))
    for split in ("train", "val", "test"):
        client.log_metric(run_id, f"data.n_{split}_studies", len(dm.cohort.indices(split)))

    task = ContrastivePretrainTask(cfg)
    trainer = _trainer(cfg, logger, ckpt_dir)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    clock["train"] = time.perf_counter()

    tokenizer = load_tokenizer(cfg.model.text.model_path)
    reference = cohort_reference_levels(Path(dm.cfg.root), dm.cohort.labels[dm.cohort.indices("test")])
    result = evaluate_contrastive(task.model, dm.test_dataloader(), tokenizer, reference,
                                  max_tokens=cfg.model.text.max_tokens, ks=tuple(cfg.eval.retrieval_ks),
                                  label_ks=tuple(cfg.eval.label_ks), scoring=cfg.loss.name,
                                  val_loader=dm.val_dataloader(),
                                  memory_loader=dm.loader("train") if cfg.eval.memory_retrieval else None)
    clock["eval"] = time.perf_counter()
    step = int(trainer.global_step)
    timings = {"time.data_s": clock["data"] - clock["start"], "time.train_s": clock["train"] - clock["data"],
               "time.eval_s": clock["eval"] - clock["train"]}
    for name, value in timings.items():
        client.log_metric(run_id, name, value)
    for name, value in result.metrics.items():
        client.log_metric(run_id, f"test.{name}".replace("@", "_at_"), value, step=step)
    table = format_table(result.rows)
    log_json_artifact(client, run_id, "test_metrics.json", result.rows)
    log_json_artifact(client, run_id, "reference_levels.json", reference)
    client.log_text(run_id, table, "results/test_metrics.txt")
    if cfg.eval.examples_figure and "xray" in result.embeddings and "report" in result.embeddings:
        idx = result.indices
        fig = retrieval_examples_figure(dm.cohort.xray[idx[:4]].astype("float32"), result.labels,
                                        result.embeddings["xray"][:4] @ result.embeddings["report"].T,
                                        list(dm.cohort.report_text[idx]), result.labels)
        client.log_figure(run_id, fig, "results/retrieval_examples.png")
    model_uri = None
    if cfg.tracking.register_model:
        # registered here (not by log_model) so that every pipeline's versions get the same aliases
        model_uri = log_and_register(run_id, task.model, cfg, None)
        register_with_aliases(client, model_uri, cfg.tracking.registered_name, run_id, "val/loss",
                              higher_is_better=False)
    client.set_terminated(run_id)
    timing = ", ".join(f"{k[5:-2]} {v:.0f} s" for k, v in timings.items())
    return PretrainOutcome(run_id, tracking_uri, result.metrics, f"{table}\n\ntime: {timing}", model_uri,
                           len(dm.cohort.skipped))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = build_config(config_class(args.config, args.overrides), args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        outcome = run(cfg, resume=args.resume)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\nTest-split metrics (held-out patients) beside chance and oracle:\n")
    print(outcome.table)
    print(f"\nMLflow run id: {outcome.run_id}")
    print(f"Tracking store: {outcome.tracking_uri}")
    if outcome.model_uri:
        print(f"Registered model: {cfg.tracking.registered_name} ({outcome.model_uri})")
    print("Open the dashboard with `make mlflow` (http://127.0.0.1:5000).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
