"""PTUnifier ablation on a cohort: prompt pool vs static prompts vs no prompts, and
PTUnifier vs the contrastive dual encoder ("more"), on every downstream task.

    python benchmarks/ptunifier_ablation.py --root data/demo --pretrain-steps 40 --finetune-steps 20
    python benchmarks/ptunifier_ablation.py --seeds 0 1 2 --pretrain-steps 86 --finetune-steps 80 --max-test 778

Each variant is pretrained and fine-tuned once per ``--seeds`` seed (the seed of the pretraining
and of its fine-tunings, which also draws the labelled fraction and the ``--max-test`` subset).
Each pretraining (``ablation-<variant>-seed<N>``) and each fine-tuning
(``<variant>-<task>-<fraction>-seed<N>``) is its own MLflow run (experiments
``medmm-ptunifier-ablation`` / ``medmm-ptunifier-ablation-finetune``); a summary run holds
the table (results/ablation.md, results/ablation.json) and one metric per cell (the mean over
seeds). A cell is ``mean ± sd`` over the seeds (sample sd), the plain value with one seed; the
JSON keeps every seed's value. Short runs:
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

import numpy as np

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


def pretrain(variant: str, seed: int, args, common: list[str]) -> tuple[str, float]:
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
                 f"tracking.run_name=ablation-{variant}-seed{seed}", f"seed={seed}", *extra]
    cfg = build_config(PRETRAIN_COMMAND.schema_for(path, overrides), path, overrides)
    run = ptunifier_run if cfg.kind == "ptunifier" else contrastive_run
    t0 = time.perf_counter()
    out = run(cfg)
    seconds = time.perf_counter() - t0
    if variant == "more":
        return f"runs:/{out.run_id}/model", seconds
    return str(next((args.work / "pretrain" / variant / out.run_id).glob("export"))), seconds


def finetune(variant: str, seed: int, checkpoint: str, task: str, fraction: float, args, common: list[str]) -> dict:
    from medmm.workflows.finetune.config import FinetuneConfig
    from medmm.workflows.finetune.run import run

    overrides = [*common, f"checkpoint={checkpoint}", f"data.label_fraction={fraction}", "epochs=1",
                 f"limit_train_batches={args.finetune_steps}", f"data.max_test_studies={args.max_test}",
                 "tracking.experiment=medmm-ptunifier-ablation-finetune",
                 f"tracking.run_name={variant}-{task}-{fraction}-seed{seed}", f"seed={seed}",
                 f"output_dir={args.work / 'finetune'}"]
    if variant == "more" and task != "retrieval":
        overrides += ["backbone=frozen", "head=linear", "head_lr=1e-2"]  # linear probe
    cfg = build_config(FinetuneConfig, REPO / f"configs/finetune/{task}.yaml", overrides)
    return run(cfg).metrics


def mean(values: list[float | None]) -> float | None:
    present = [x for x in values if x is not None]
    return float(np.mean(present)) if present else None


def cell(values: list[float | None]) -> str:
    """``mean ± sd`` over the seeds (sample sd), the plain value with one seed, n/a where none applies."""
    present = [x for x in values if x is not None]
    if len(present) > 1:
        return f"{np.mean(present):.3f} ± {np.std(present, ddof=1):.3f}"
    return f"{present[0]:.3f}" if present else "n/a"


def markdown(per_seed: dict[str, dict[str, list[float | None]]], variants: list[str]) -> str:
    cols = [c for c, *_ in DOWNSTREAM]
    n = max((len(xs) for v in variants for xs in per_seed[v].values()), default=1)
    lines = [f"| {'model' if n == 1 else f'model, {n} seeds'} | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    names = {"pool": "PTUnifier, prompt pool", "static": "PTUnifier, static prompts",
             "none": "PTUnifier, no prompts", "more": "contrastive dual encoder (more)"}
    for v in variants:
        cells = ["not run" if c not in per_seed[v] else cell(per_seed[v][c]) for c in cols]
        lines.append(f"| {names[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect(uris: list[str]) -> tuple[dict[str, dict[str, list[float | None]]], list[int]]:
    """Per-seed values (variant -> column -> values in seed order) and the seeds, from the
    fine-tuning runs already in MLflow (runs named variant-task-fraction-seedN, or
    variant-task-fraction for seed 0): joins ablations run in several processes / stores.
    Of several finished runs of one setting and seed, the latest counts."""
    from mlflow.tracking import MlflowClient

    found: dict[str, dict[str, dict[int, float | None]]] = {}
    for uri in uris:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("medmm-ptunifier-ablation-finetune")
        if exp is None:
            continue
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
            if run.info.status != "FINISHED":
                continue
            variant, task, fraction, *rest = run.data.tags["mlflow.runName"].split("-")
            seed = int(rest[0].removeprefix("seed")) if rest else 0
            for col, t, f, metric in DOWNSTREAM:
                if t == task and abs(f - float(fraction)) < 1e-9:
                    value = run.data.metrics.get("test." + metric.replace("@", "_at_"))
                    found.setdefault(variant, {}).setdefault(col, {})[seed] = value
    seeds = sorted({s for row in found.values() for by_seed in row.values() for s in by_seed})
    per_seed = {v: {c: [by_seed[s] for s in sorted(by_seed)] for c, by_seed in row.items()}
                for v, row in found.items()}
    if "more" in per_seed:
        per_seed["more"].update({c: [None] * len(seeds) for c, t, *_ in DOWNSTREAM if t == "vqa"})
    return per_seed, seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "data/demo")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded cache folder (default: <root>/.cache)")
    p.add_argument("--work", type=Path, default=REPO / "runs/ptunifier_ablation")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--variants", default="pool,static,none,more")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretrain and fine-tune every variant once "
                                                                     "per seed")
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
    args = p.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    sizes = {"pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
             "max_test_studies": args.max_test, "root": str(args.root)}
    if args.collect:
        per_seed, seeds = collect(args.collect)
        variants = [v for v in ("pool", "static", "none", "more") if v in per_seed]
        return _write(per_seed, seeds, variants, sizes, {}, args, uri)
    common = [f"data.root={args.root}", f"tracking.uri={uri}"]
    if args.cache_dir:
        common.append(f"data.cache_dir={args.cache_dir}")
    variants = args.variants.split(",")
    per_seed: dict[str, dict[str, list[float | None]]] = {v: {} for v in variants}
    timings: dict[str, float] = {}
    for seed in args.seeds:
        for v in variants:
            checkpoint, timings[f"pretrain.{v}.seed{seed}"] = pretrain(v, seed, args, common)
            done: dict[tuple[str, float], dict] = {}
            for col, task, fraction, metric in DOWNSTREAM:
                value = None  # the contrastive model has no VQA
                if not (task == "vqa" and v == "more"):
                    if (task, fraction) not in done:
                        t0 = time.perf_counter()
                        done[(task, fraction)] = finetune(v, seed, checkpoint, task, fraction, args, common)
                        timings[f"finetune.{v}.{task}.{fraction}.seed{seed}"] = time.perf_counter() - t0
                    value = done[(task, fraction)].get(metric)
                per_seed[v].setdefault(col, []).append(value)
            print(markdown(per_seed, [x for x in variants if per_seed[x]]), flush=True)
    return _write(per_seed, args.seeds, variants, sizes, timings, args, uri)


def _write(per_seed, seeds, variants, sizes, timings, args, uri) -> int:
    from mlflow.tracking import MlflowClient

    table = {v: {c: mean(xs) for c, xs in row.items()} for v, row in per_seed.items()}
    result = {"seeds": seeds, "table": table, "per_seed": per_seed, "sizes": sizes, "timings_s": timings}
    md = markdown(per_seed, variants)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(md + "\n")
    # a client, not mlflow's global active experiment, which would outlive this call
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("medmm-ptunifier-ablation")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("medmm-ptunifier-ablation")
    run_id = client.create_run(experiment_id, run_name="ablation-summary").info.run_id
    for key, value in {**sizes, "seeds": " ".join(map(str, seeds))}.items():
        client.log_param(run_id, key, value)
    for v, row in table.items():
        for col, value in row.items():
            if value is not None:
                key = "".join(ch if ch.isalnum() or ch in "._-/ " else "_" for ch in f"{v}.{col}")
                client.log_metric(run_id, key.replace(" ", "_"), value)
    client.log_text(run_id, md, "results/ablation.md")
    client.log_dict(run_id, result, "results/ablation.json")
    client.set_terminated(run_id)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
