"""PTUnifier ablation on a cohort: prompt pool vs static prompts vs no prompts, and
PTUnifier vs the contrastive dual encoder ("more"), on every downstream task.

    python benchmarks/ptunifier_ablation.py --root data/demo --pretrain-steps 40 --finetune-steps 20

Each pretraining and each fine-tuning is its own MLflow run (experiments
``medmm-ptunifier-ablation`` / ``medmm-ptunifier-ablation-finetune``); a summary run holds
the table (results/ablation.md, results/ablation.json) and one metric per cell. Short runs:
``--pretrain-epochs`` epochs of at most ``--pretrain-steps`` optimiser steps each (an epoch
of the demo cohort is 86 steps of 32), ``--finetune-steps`` per fine-tuning
(at most one epoch of the labelled studies), evaluation on ``--max-test`` held-out studies.
The contrastive model is compared where it applies: retrieval, and classification through
a linear probe on its frozen encoders; it has no fusion, hence no VQA.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medmm.config.core import build_config  # noqa: E402
from medmm.pipelines.pretrain import COMMAND as PRETRAIN_COMMAND  # noqa: E402
from medmm.tracking.store import default_tracking_uri  # noqa: E402
from medmm.workflows.contrastive.run import run as contrastive_run  # noqa: E402
from medmm.workflows.ptunifier.run import run as ptunifier_run  # noqa: E402

# (column, task, label fraction, headline metric)
DOWNSTREAM = [
    ("image cls 1% (AUROC)", "image_classification", 0.01, "auroc.macro"),
    ("image cls 10% (AUROC)", "image_classification", 0.10, "auroc.macro"),
    ("image cls 100% (AUROC)", "image_classification", 1.0, "auroc.macro"),
    ("text cls (AUROC)", "text_classification", 1.0, "auroc.macro"),
    ("X-ray->report R@10", "retrieval", 1.0, "xray_to_report.R@10"),
    ("report->X-ray R@10", "retrieval", 1.0, "report_to_xray.R@10"),
    ("VQA closed bal. acc.", "vqa", 1.0, "closed_balanced_accuracy"),
    ("VQA abnormal AUROC", "vqa", 1.0, "abnormal_auroc"),
]


def pretrain(variant: str, args, common: list[str]) -> tuple[str, float]:
    if variant == "more":
        path = REPO / "configs/pretrain/default.yaml"
        extra = ["tracking.register_model=true", "tracking.registered_name=medmm-more-ablation",
                 "eval.examples_figure=false"]
    else:
        path = args.ptunifier_config
        extra = [f"model.prompts.mode={variant}"]
    overrides = [*common, f"trainer.max_epochs={args.pretrain_epochs}",
                 f"trainer.limit_train_batches={args.pretrain_steps}",
                 f"output_dir={args.work / 'pretrain' / variant}", "tracking.experiment=medmm-ptunifier-ablation",
                 f"tracking.run_name=ablation-{variant}", *extra]
    cfg = build_config(PRETRAIN_COMMAND.schema_for(path, overrides), path, overrides)
    run = ptunifier_run if cfg.kind == "ptunifier" else contrastive_run
    t0 = time.perf_counter()
    out = run(cfg)
    seconds = time.perf_counter() - t0
    if variant == "more":
        return f"runs:/{out.run_id}/model", seconds
    return str(next((args.work / "pretrain" / variant / out.run_id).glob("export"))), seconds


def finetune(variant: str, checkpoint: str, task: str, fraction: float, args, common: list[str]) -> dict:
    from medmm.workflows.finetune.config import FinetuneConfig
    from medmm.workflows.finetune.run import run

    overrides = [*common, f"checkpoint={checkpoint}", f"data.label_fraction={fraction}", "epochs=1",
                 f"limit_train_batches={args.finetune_steps}", f"data.max_test_studies={args.max_test}",
                 "tracking.experiment=medmm-ptunifier-ablation-finetune",
                 f"tracking.run_name={variant}-{task}-{fraction}", f"output_dir={args.work / 'finetune'}"]
    if variant == "more" and task != "retrieval":
        overrides += ["backbone=frozen", "head=linear", "head_lr=1e-2"]  # linear probe
    cfg = build_config(FinetuneConfig, REPO / f"configs/finetune/{task}.yaml", overrides)
    return run(cfg).metrics


def markdown(table: dict[str, dict[str, float | None]], variants: list[str]) -> str:
    cols = [c for c, *_ in DOWNSTREAM]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    names = {"pool": "PTUnifier, prompt pool", "static": "PTUnifier, static prompts",
             "none": "PTUnifier, no prompts", "more": "contrastive dual encoder (more)"}
    for v in variants:
        cells = [("not run" if c not in table[v] else "n/a" if table[v][c] is None else f"{table[v][c]:.3f}")
                 for c in cols]
        lines.append(f"| {names[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect(uris: list[str]) -> dict[str, dict]:
    """The table from the fine-tuning runs already in MLflow (runs named variant-task-fraction):
    joins ablations run in several processes / stores."""
    from mlflow.tracking import MlflowClient

    table: dict[str, dict] = {}
    for uri in uris:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("medmm-ptunifier-ablation-finetune")
        if exp is None:
            continue
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
            if run.info.status != "FINISHED":
                continue
            variant, task, fraction = run.data.tags["mlflow.runName"].split("-")
            for col, t, f, metric in DOWNSTREAM:
                if t == task and abs(f - float(fraction)) < 1e-9:
                    value = run.data.metrics.get("test." + metric.replace("@", "_at_"))
                    table.setdefault(variant, {})[col] = value
    for v in table:
        if v == "more":
            table[v].update({c: None for c, t, *_ in DOWNSTREAM if t == "vqa"})
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "data/demo")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded cache folder (default: <root>/.cache)")
    p.add_argument("--work", type=Path, default=REPO / "runs/ptunifier_ablation")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--variants", default="pool,static,none,more")
    p.add_argument("--ptunifier-config", type=Path, default=REPO / "configs/pretrain/ptunifier.yaml",
                   help="the PTUnifier variants' pretraining config (prompts.mode set per variant)")
    p.add_argument("--pretrain-steps", type=int, default=40, help="optimiser steps per pretraining epoch (at most "
                                                                   "the cohort's epoch)")
    p.add_argument("--pretrain-epochs", type=int, default=1, help="pretraining epochs")
    p.add_argument("--finetune-steps", type=int, default=20)
    p.add_argument("--max-test", type=int, default=300)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ptunifier_ablation.json")
    p.add_argument("--collect", nargs="+", default=None, metavar="URI",
                   help="no runs: build the table from the fine-tuning runs in these MLflow stores")
    args = p.parse_args()
    uri = args.tracking_uri or default_tracking_uri()
    if args.collect:
        table = collect(args.collect)
        variants = [v for v in ("pool", "static", "none", "more") if v in table]
        sizes = {"pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
                 "max_test_studies": args.max_test, "root": str(args.root)}
        return _write(table, variants, sizes, {}, args, uri)
    common = [f"data.root={args.root}", f"tracking.uri={uri}"]
    if args.cache_dir:
        common.append(f"data.cache_dir={args.cache_dir}")
    variants = args.variants.split(",")
    table: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for v in variants:
        checkpoint, timings[f"pretrain.{v}"] = pretrain(v, args, common)
        table[v] = {}
        done: dict[tuple[str, float], dict] = {}
        for col, task, fraction, metric in DOWNSTREAM:
            if task == "vqa" and v == "more":
                table[v][col] = None
                continue
            if (task, fraction) not in done:
                t0 = time.perf_counter()
                done[(task, fraction)] = finetune(v, checkpoint, task, fraction, args, common)
                timings[f"finetune.{v}.{task}.{fraction}"] = time.perf_counter() - t0
            table[v][col] = done[(task, fraction)].get(metric)
        print(markdown(table, list(table)), flush=True)
    sizes = {"pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
             "max_test_studies": args.max_test, "root": str(args.root)}
    return _write(table, variants, sizes, timings, args, uri)


def _write(table, variants, sizes, timings, args, uri) -> int:
    import mlflow

    md = markdown(table, variants)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"table": table, "sizes": sizes, "timings_s": timings}, indent=2))
    args.out.with_suffix(".md").write_text(md + "\n")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("medmm-ptunifier-ablation")
    with mlflow.start_run(run_name="ablation-summary"):
        mlflow.log_params(sizes)
        for v, row in table.items():
            for col, value in row.items():
                if value is not None:
                    key = "".join(ch if ch.isalnum() or ch in "._-/ " else "_" for ch in f"{v}.{col}")
                    mlflow.log_metric(key.replace(" ", "_"), value)
        mlflow.log_text(md, "results/ablation.md")
        mlflow.log_dict({"table": table, "sizes": sizes, "timings_s": timings}, "results/ablation.json")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
