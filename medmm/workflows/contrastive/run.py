"""Contrastive pretraining run (``python -m medmm.pipelines.pretrain``): train on a cohort,
evaluate on its held-out split beside chance and oracle, track and register in MLflow."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

from medmm.data.datamodule import PretrainDataModule
from medmm.data.tokenizer import load_tokenizer
from medmm.io.findings import FINDINGS
from medmm.tracking.figures import (
    metric_curves_figure,
    retrieval_examples_figure,
    roc_curves_figure,
    show_cohort_examples,
)
from medmm.tracking.pipeline_run import finish, log_context, log_figure, register_with_aliases
from medmm.tracking.run_context import log_json_artifact
from medmm.training.lightning_run import (
    PretrainOutcome,
    WorkerOutcome,
    checkpointing_trainer,
    from_first_process,
    join_launched_processes,
    start_or_resume_run,
)
from medmm.training.precision import (
    StepFn,
    choose_precision,
    step_fingerprint,
    training_step_probe,
)
from medmm.workflows.contrastive.config import PretrainConfig, preflight
from medmm.workflows.contrastive.evaluation import (
    cohort_reference_levels,
    evaluate_contrastive,
    format_table,
)
from medmm.workflows.contrastive.module import ContrastivePretrainTask
from medmm.workflows.contrastive.served import log_and_register
from medmm.workflows.preflight import PAIRED_TRAINING_MINIMUM


def _training_loss(task: ContrastivePretrainTask, batch: dict):
    return task._loss(task.model(batch, task.modalities), batch, "train")[0]


def precision_probe_step(task: ContrastivePretrainTask, dm: PretrainDataModule) -> StepFn:
    """The step the precision probe times: the task's training loss, backward and AdamW on
    the training split's first batch (unaugmented)."""
    return training_step_probe(task, _training_loss, next(iter(dm.loader("train"))))


def precision_fingerprint(cfg: PretrainConfig) -> str:
    """What shapes the probed step: a probe cached for another model or batch does not apply."""
    return step_fingerprint(cfg.model, cfg.loss, cfg.data.batch_size, cfg.data.image_size, cfg.data.ecg_fs)


def run(cfg: PretrainConfig, resume: bool = False) -> PretrainOutcome | WorkerOutcome:
    """Train, evaluate and register; the modalities are the cohort's (``PretrainConfig.modalities``).
    Every input is checked first (:func:`preflight`): a wrong one fails before a run is opened.

    Started as several processes (torchrun, srun) the run is one MLflow run: the first process
    opens it, decodes the cohort before the others read its cache, picks the precision, logs,
    checkpoints, evaluates on the test split and reports; every process trains its share of
    each global batch, and the others return a :class:`WorkerOutcome` after training."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = preflight(cfg)
    # The text encoder's frozen, cached lower layers stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    clock = {"start": time.perf_counter()}
    logger, tracking_uri, ckpt_path, run_dir = start_or_resume_run(cfg, resume)
    processes = join_launched_processes(cfg.trainer)  # joined by start_or_resume_run
    first = processes.global_rank == 0
    run_id = logger.run_id
    ckpt_dir = run_dir / "checkpoints"

    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=cfg.model.text.model_path, min_studies=PAIRED_TRAINING_MINIMUM)
    with processes.rank_zero_first():  # one process writes the decoded-cohort cache
        dm.setup()
    clock["data"] = time.perf_counter()
    task = ContrastivePretrainTask(cfg)
    precision = from_first_process(choose_precision(cfg.trainer.precision, lambda: precision_probe_step(task, dm),
                                                    precision_fingerprint(cfg)) if first else None)
    trainer = checkpointing_trainer(cfg, logger, ckpt_dir, precision)
    if first:
        _log_data(logger.experiment, run_id, cfg, dm)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    clock["train"] = time.perf_counter()
    if not first:
        return WorkerOutcome(run_id, processes.global_rank)
    client = logger.experiment  # logs each metric step once, also across a resume
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
    if show_cohort_examples(cfg.eval.examples_figure, dm.cfg.root) and "xray" in result.embeddings and "report" in result.embeddings:
        idx = result.indices
        fig = retrieval_examples_figure(dm.cohort.xray[idx[:4]].astype("float32"), result.labels,
                                        result.embeddings["xray"][:4] @ result.embeddings["report"].T,
                                        list(dm.cohort.report_text[idx]), result.labels)
        log_figure(client, run_id, fig, "retrieval_examples")
    for modality, scores in result.zero_shot_scores.items():
        log_figure(client, run_id, roc_curves_figure(result.labels, scores, FINDINGS,
                                                     f"zero-shot {modality} classification, held-out split"),
                   f"zeroshot_roc_{modality}")
    curves = metric_curves_figure(client, run_id)
    if curves is not None:
        log_figure(client, run_id, curves, "metric_curves")
    model_uri = None
    if cfg.tracking.register_model:
        # registered here (not by log_model) so that every pipeline's versions get the same aliases
        model_uri = log_and_register(run_id, task.model, cfg, None)
        register_with_aliases(client, model_uri, cfg.tracking.registered_name, run_id, "val/loss",
                              higher_is_better=False)
    finish(client, run_id)
    timing = ", ".join(f"{k[5:-2]} {v:.0f} s" for k, v in timings.items())
    return PretrainOutcome(run_id, tracking_uri, result.metrics, f"{table}\n\ntime: {timing}", model_uri,
                           len(dm.cohort.skipped), cfg.tracking.registered_name, rows=result.rows)


def _log_data(client, run_id: str, cfg: PretrainConfig, dm: PretrainDataModule) -> None:
    """The run's context and data counts (``data.train_batch_size``: studies per process and step)."""
    if dm.cohort.skipped:
        print(f"WARNING: skipped {len(dm.cohort.skipped)} stud(ies) with unreadable files:", file=sys.stderr)
        for s in dm.cohort.skipped:
            print(f"  {s['path']}: {s['problem']}", file=sys.stderr)
    log_context(client, run_id, "pretrain", cfg, dm.manifest, dm.cohort.skipped)
    client.log_metric(run_id, "data.n_skipped_studies", len(dm.cohort.skipped))
    client.log_metric(run_id, "data.train_batch_size", dm.train_batch_size)
    for split in ("train", "val", "test"):
        client.log_metric(run_id, f"data.n_{split}_studies", len(dm.cohort.indices(split)))
