"""MM-Lego run (``python -m medmm.pipelines.mmlego``): per task, one LegoBlock per modality
trained alone, their LegoMerge (no training), their LegoFuse (fine-tuned briefly on paired
data) and an end-to-end model of the same architecture and size trained from scratch on
paired data, all scored on the same held-out paired test rows, tracked in one MLflow run.

Metrics: ``test.<task>.<variant>.<metric>`` (c-index for survival, macro AUROC for findings),
each variant's training record ``train.<task>.<variant>.*``, rows per split ``data.<task>.*``;
``results/mmlego_table.md``, ``results/mmlego.json`` and a bar figure of the test scores.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time as clock
from dataclasses import dataclass

import numpy as np
import torch

from medmm.console import Number, headline
from medmm.models import create_model
from medmm.models.mmlego import LegoBlock, LegoConfig, LegoFuse, LegoMerge, build_blocks
from medmm.tracking.figures import grouped_bars_figure
from medmm.tracking.pipeline_run import finish, log_context, log_figure, log_json, log_metrics, run_name, start_run
from medmm.workflows.mmlego.config import MMLegoConfig
from medmm.workflows.mmlego.fit import block_forward, fit, n_parameters, paired_forward, predict
from medmm.workflows.mmlego.tasks import Task, load_task
from medmm.workflows.preflight import CohortNeeds, check_before_run

METRIC_NAMES = {"harrell_c": "Harrell C", "macro_auroc": "macro AUROC"}
TABLE = "results/mmlego_table.md"


@dataclass
class MMLegoOutcome:
    run_id: str
    tracking_uri: str
    results: dict[str, dict[str, dict[str, float]]]  # task -> variant -> metric / record
    table: str

    def __str__(self) -> str:  # what the command prints
        numbers = []
        for task, variants in self.results.items():
            unimodal = {v: r["score"] for v, r in variants.items() if v.startswith("unimodal_")}
            best = max(unimodal, key=lambda v: unimodal[v] if np.isfinite(unimodal[v]) else -1.0)
            for variant in ("merge", "fuse", "end_to_end"):
                r = variants[variant]
                numbers.append(Number(f"{task} {variant} {METRIC_NAMES[r['metric_name']]}", r["score"],
                                      (("chance", 0.5), (f"best unimodal ({best.removeprefix('unimodal_')})",
                                                         unimodal[best]))))
        return headline("held-out paired test split", numbers, run_id=self.run_id, tracking_uri=self.tracking_uri,
                        table=TABLE)


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| task | variant | metric | test score | trained on (rows) | epochs | parameters |",
             "|---|---|---|---|---|---|---|"]
    for task, variants in results.items():
        for variant, r in variants.items():
            lines.append(f"| {task} | {variant} | {METRIC_NAMES[r['metric_name']]} | {r['score']:.3f} | "
                         f"{int(r['n_train'])} | {int(r['epochs_run'])} | {int(r['parameters'])} |")
    return "\n".join(lines)


def _record(task: Task, model, forward, info: dict, n_train: int) -> dict:
    test = task.paired["test"]
    score = task.score(predict(model, forward, test, 64), test)
    return {"score": score, "metric_name": task.metric, "n_train": n_train, "n_test": len(test),
            "parameters": n_parameters(model), **{k: float(v) for k, v in info.items()}}


def run_task(task: Task, cfg: MMLegoConfig) -> dict[str, dict]:
    """Every variant of one task, on the same rows (module docstring)."""
    t = cfg.train
    model_cfg = LegoConfig(**{**cfg.model.model_dump(), "n_outputs": task.n_outputs})
    train_kw = dict(weight_decay=t.weight_decay, batch_size=t.batch_size, patience=t.patience, seed=cfg.seed)
    results: dict[str, dict] = {}
    torch.manual_seed(cfg.seed)
    encoders = task.encoders()
    blocks: list[LegoBlock] = build_blocks(model_cfg, [d for d, _ in encoders], [e for _, e in encoders])
    for m, (modality, block) in enumerate(zip(task.modalities, blocks)):
        t0 = clock.perf_counter()
        rows = task.alone[modality]
        info = fit(block, task, block_forward(task, m), rows["train"], rows["val"], epochs=t.epochs, lr=t.lr,
                   **train_kw)
        results[f"unimodal_{modality}"] = {**_record(task, block, block_forward(task, m), info, len(rows["train"])),
                                           "fit_s": clock.perf_counter() - t0}
    paired = paired_forward(task)
    merge = LegoMerge(blocks, cfg.model.merge_weights)  # no training: the blocks as trained alone
    results["merge"] = {**_record(task, merge, paired, {"epochs_run": 0, "steps": 0}, 0), "fit_s": 0.0}

    t0 = clock.perf_counter()
    fuse = LegoFuse([copy.deepcopy(b) for b in blocks], cfg.model.fuse, cfg.model.merge_weights)
    info = fit(fuse, task, paired, task.paired["train"], task.paired["val"], epochs=t.fuse_epochs, lr=t.fuse_lr,
               **train_kw)
    results["fuse"] = {**_record(task, fuse, paired, info, len(task.paired["train"])),
                       "fit_s": clock.perf_counter() - t0}

    t0 = clock.perf_counter()
    torch.manual_seed(cfg.seed + 1)  # fresh weights, not the blocks' starting ones
    encoders = task.encoders()
    scratch = create_model("mmlego", model_cfg, in_dims=[d for d, _ in encoders], encoders=[e for _, e in encoders])
    info = fit(scratch, task, paired, task.paired["train"], task.paired["val"], epochs=t.epochs, lr=t.lr, **train_kw)
    results["end_to_end"] = {**_record(task, scratch, paired, info, len(task.paired["train"])),
                             "fit_s": clock.perf_counter() - t0}
    return results


def _cohort_root(cfg: MMLegoConfig, task: str):
    return cfg.pathology_genomics.root if task == "pathology_genomics" else cfg.xray_ecg.root


def run(cfg: MMLegoConfig) -> MMLegoOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in cfg.tasks:
        check_before_run(cfg.tracking.uri, output_dirs={"output_dir": cfg.output_dir},
                         cohort=CohortNeeds(_cohort_root(cfg, name), study_modality=None, why=f"MM-Lego {name}"))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    start = clock.perf_counter()
    tasks = {name: load_task(name, cfg) for name in cfg.tasks}
    client, run_id, tracking_uri = start_run(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg, "mmlego"),
                                             "mmlego")
    digest = hashlib.sha256("".join(t.manifest.content_hash() for t in tasks.values()).encode()).hexdigest()
    skipped = [s for t in tasks.values() for s in t.skipped]
    only = next(iter(tasks.values())).manifest if len(tasks) == 1 else None
    log_context(client, run_id, "mmlego", cfg, only, skipped, content_hash=digest)
    results = {}
    for name, task in tasks.items():
        client.set_tag(run_id, f"{name}.manifest_sha256", task.manifest.content_hash())
        log_metrics(client, run_id, task.counts(), prefix=f"data.{name}.")
        results[name] = run_task(task, cfg)
        for variant, r in results[name].items():
            log_metrics(client, run_id, {task.metric: r["score"]}, prefix=f"test.{name}.{variant}.")
            log_metrics(client, run_id, {k: v for k, v in r.items() if k not in ("score", "metric_name")},
                        prefix=f"train.{name}.{variant}.")
            print(f"  {name:18s} {variant:18s} {METRIC_NAMES[task.metric]} {r['score']:.3f}  ({r['fit_s']:.1f} s)",
                  flush=True)
    table = format_table(results)
    for name, variants in results.items():
        metric = METRIC_NAMES[tasks[name].metric]
        figure = grouped_bars_figure({v: {metric: r["score"]} for v, r in variants.items()}, [metric],
                                     f"MM-Lego, {name}: paired test rows")
        log_figure(client, run_id, figure, f"scores_{name}")
    log_json(client, run_id, "mmlego.json", results)
    client.log_text(run_id, table, TABLE)
    log_metrics(client, run_id, {"time.total_s": clock.perf_counter() - start})
    finish(client, run_id)
    return MMLegoOutcome(run_id, tracking_uri, results, table)
