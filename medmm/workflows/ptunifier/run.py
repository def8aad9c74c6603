"""PTUnifier pretraining run (``python -m medmm.pipelines.ptunifier_pretrain``, or
``python -m medmm.pipelines.pretrain`` with a ``kind: ptunifier`` config).

Same cohort, DataModule, MLflow logging and checkpointing as the contrastive run; then
the model is exported (safetensors + config.yaml, the input of
``python -m medmm.pipelines.finetune``) and evaluated zero-shot on the held-out split
by ITC retrieval in both directions. The run leaves the shape of
:mod:`medmm.tracking.pipeline_run` (tag ``medmm.pipeline=pretrain``); with
``tracking.register_model`` the export is registered as a pyfunc (``models:/<registered_name>@champion``
is a valid ``checkpoint=`` of the finetune pipeline).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from medmm.console import progress
from medmm.data.datamodule import PretrainDataModule
from medmm.data.prompts import ZERO_SHOT_PROMPTS
from medmm.data.tokenizer import load_tokenizer
from medmm.io.findings import FINDINGS
from medmm.metrics.retrieval import retrieval_metrics
from medmm.metrics.zeroshot import per_finding_auroc, zero_shot_scores
from medmm.models.ptunifier import itc_embeddings, itc_text_embeddings
from medmm.tracking.figures import (
    metric_curves_figure,
    retrieval_examples_figure,
    roc_curves_figure,
    show_cohort_examples,
)
from medmm.tracking.pipeline_run import (
    finish,
    log_context,
    log_figure,
    log_json,
    log_metrics,
    register_with_aliases,
)
from medmm.training.lightning_run import (
    PretrainOutcome,
    WorkerOutcome,
    checkpointing_trainer,
    join_launched_processes,
    start_or_resume_run,
)
from medmm.workflows.preflight import PAIRED_TRAINING_MINIMUM
from medmm.workflows.pretrained import save_pretrained_folder
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig, preflight
from medmm.workflows.ptunifier.module import PTUnifierPretrainTask
from medmm.workflows.ptunifier.served import log_pretrained_embedder

EXPORT_DIR = "export"


def export_model(model, cfg, folder: Path) -> Path:
    """Weights as safetensors (never pickle) + the resolved config as YAML."""
    return save_pretrained_folder(model, cfg, folder)


def prompt_itc_embeddings(model, tokenizer, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive / negative zero-shot prompt embeddings [findings, prompts, d] on the ITC text
    side, in FINDINGS order (the prompts of the contrastive evaluation)."""
    device = next(model.parameters()).device

    def embed(texts: list[str]) -> np.ndarray:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.no_grad():
            out = itc_text_embeddings(model, enc["input_ids"].to(device), enc["attention_mask"].to(device))
        return out.float().cpu().numpy()

    return (np.stack([embed(ZERO_SHOT_PROMPTS[f]["pos"]) for f in FINDINGS]),
            np.stack([embed(ZERO_SHOT_PROMPTS[f]["neg"]) for f in FINDINGS]))


def itc_retrieval(model, loader, ks=(1, 5, 10), label_ks=(1, 5)):
    """Held-out retrieval from ITC embeddings: X-ray -> report and report -> X-ray. Returns
    (metrics, image embeddings, text embeddings, labels, cohort indices of the rows)."""
    model.eval()
    imgs, txts, labels, indices = [], [], [], []
    with torch.no_grad():
        for batch in progress(loader, "evaluate"):
            i, t = itc_embeddings(model, batch["xray"], batch["report_ids"], batch["report_mask"])
            imgs.append(i.numpy())
            txts.append(t.numpy())
            labels.append(batch["labels"].numpy())
            indices.append(batch["index"].numpy())
    img, txt, lab = np.concatenate(imgs), np.concatenate(txts), np.concatenate(labels)
    sim = img @ txt.T
    metrics = {f"xray_to_report.{k}": v for k, v in retrieval_metrics(sim, lab, lab, ks, label_ks).items()}
    metrics.update({f"report_to_xray.{k}": v for k, v in retrieval_metrics(sim.T, lab, lab, ks, label_ks).items()})
    return metrics, img, txt, lab, np.concatenate(indices)


def run(cfg: PTUnifierPretrainConfig, resume: bool = False) -> PretrainOutcome | WorkerOutcome:
    """Train, evaluate and register a PTUnifier model. Started as several processes
    (torchrun, srun) the run is one MLflow run: the first process opens it, decodes the cohort
    before the others read its cache, logs, checkpoints, evaluates and reports; the others
    train their share of each global batch and return a :class:`WorkerOutcome`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preflight(cfg)  # a wrong input fails here, in seconds, before a run is opened
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    start = time.perf_counter()
    logger, tracking_uri, ckpt_path, run_dir = start_or_resume_run(cfg, resume)
    processes = join_launched_processes(cfg.trainer)  # joined by start_or_resume_run
    first = processes.global_rank == 0
    run_id = logger.run_id

    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=cfg.model.text.model_path, min_studies=PAIRED_TRAINING_MINIMUM)
    with processes.rank_zero_first():  # one process writes the decoded-cohort cache
        dm.setup()
    data_s = time.perf_counter() - start
    client = logger.experiment  # logs each metric step once, also across a resume
    if first:
        for s in dm.cohort.skipped:
            print(f"WARNING: skipped {s['path']}: {s['problem']}", file=sys.stderr)
        log_context(client, run_id, "pretrain", cfg, dm.manifest, dm.cohort.skipped)
        log_metrics(client, run_id, {"data.n_skipped_studies": len(dm.cohort.skipped),
                                     "data.train_batch_size": dm.train_batch_size,
                                     **{f"data.n_{s}_studies": len(dm.cohort.indices(s))
                                        for s in ("train", "val", "test")}})

    task = PTUnifierPretrainTask(cfg)
    trainer = checkpointing_trainer(cfg, logger, run_dir / "checkpoints")
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    train_s = time.perf_counter() - start - data_s
    if not first:
        return WorkerOutcome(run_id, processes.global_rank)

    export = export_model(task.model, cfg, run_dir / EXPORT_DIR)
    client.log_artifacts(run_id, str(export), artifact_path="model_export")
    metrics, img, txt, labels, idx = itc_retrieval(task.model, dm.test_dataloader())
    pos, neg = prompt_itc_embeddings(task.model, load_tokenizer(cfg.model.text.model_path), cfg.model.text.max_tokens)
    zero_shot = zero_shot_scores(img, pos, neg)
    for finding, auroc in per_finding_auroc(zero_shot, labels, FINDINGS).items():
        if auroc is not None:
            metrics[f"zeroshot_xray.{finding}"] = auroc
    eval_s = time.perf_counter() - start - data_s - train_s
    step = int(trainer.global_step)
    log_metrics(client, run_id, {"time.data_s": data_s, "time.train_s": train_s, "time.eval_s": eval_s})
    log_metrics(client, run_id, metrics, prefix="test.", step=step)
    log_json(client, run_id, "test_metrics.json", metrics)
    if show_cohort_examples(cfg.examples_figure, dm.cfg.root):
        fig = retrieval_examples_figure(dm.cohort.xray[idx[:4]].astype("float32"), labels, img[:4] @ txt.T,
                                        list(dm.cohort.report_text[idx]), labels)
        log_figure(client, run_id, fig, "retrieval_examples")
    log_figure(client, run_id, roc_curves_figure(labels, zero_shot, FINDINGS,
                                                 "zero-shot X-ray classification (ITC prompts), held-out split"),
               "zeroshot_roc_xray")
    curves = metric_curves_figure(client, run_id)
    if curves is not None:
        log_figure(client, run_id, curves, "metric_curves")
    model_uri = None
    if cfg.tracking.register_model:
        # the exported (final) weights, as the contrastive pretraining registers its model; the
        # champion is the run with the lowest validation loss (the checkpoint monitor)
        model_uri = log_pretrained_embedder(run_id, task.model, cfg)
        register_with_aliases(client, model_uri, cfg.tracking.registered_name, run_id, "val/loss",
                              higher_is_better=False)
    finish(client, run_id)
    table = "\n".join(f"{k:32s} {v:.3f}" for k, v in metrics.items())
    table += f"\n\nexported model: {export}\ntime: data {data_s:.0f} s, train {train_s:.0f} s, eval {eval_s:.0f} s"
    return PretrainOutcome(run_id, tracking_uri, metrics, table, model_uri, len(dm.cohort.skipped),
                           cfg.tracking.registered_name)
