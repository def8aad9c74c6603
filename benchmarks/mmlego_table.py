"""MM-Lego results table: both tasks of ``python -m medmm.pipelines.mmlego`` on the demo
cohorts for several seeds, mean +- sd per variant, written to docs/results/mmlego.md.

    python benchmarks/mmlego_table.py                      # 3 seeds, the CPU budget below
    python benchmarks/mmlego_table.py --seeds 0 1 2 3 4 train.epochs=40

Each seed is one MLflow run per task (store under --work); key=value overrides apply to
both tasks' configs after the budget's. Needs data/demo (make_demo) and data/demo_pathology
(make_demo_pathology).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from medmm.tracking.run_context import commit_label
from medmm.training.precision import cpu_identity
from medmm.workflows.mmlego.config import MMLegoConfig
from medmm.workflows.mmlego.run import METRIC_NAMES, run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"pathology_genomics": REPO / "configs/mmlego/pathology_genomics.yaml",
           "xray_ecg": REPO / "configs/mmlego/xray_ecg.yaml"}
# Settings that keep 3 seeds x 2 tasks x 5 variants within ~15 minutes of a 2-core CPU
# (the configs' own settings train longer and on more X-ray / ECG studies).
BUDGET = {"pathology_genomics": ["train.epochs=30", "train.patience=8", "train.fuse_epochs=3"],
          "xray_ecg": ["train.epochs=10", "train.patience=4", "train.fuse_epochs=3",
                       "xray_ecg.max_studies={train: 800, val: 200, test: 600}"]}


def machine() -> str:
    cpu = cpu_identity()["cpu_model"]
    return f"{os.cpu_count()}-core {cpu}, no GPU, torch threads {os.environ.get('MEDMM_THREADS', 1)}"


def summarise(scores: dict[str, dict[str, list[float]]], metrics: dict[str, str]) -> list[str]:
    lines = ["| task | variant | metric | mean | sd | seeds |", "|---|---|---|---|---|---|"]
    for task, variants in scores.items():
        for variant, values in variants.items():
            v = np.asarray(values, float)
            lines.append(f"| {task} | {variant} | {METRIC_NAMES[metrics[task]]} | {np.nanmean(v):.3f} | "
                         f"{np.nanstd(v, ddof=1) if len(v) > 1 else float('nan'):.3f} | {int(np.isfinite(v).sum())} |")
    return lines


def verdicts(scores: dict[str, dict[str, list[float]]]) -> list[str]:
    out = []
    for task, variants in scores.items():
        mean = {k: float(np.nanmean(v)) for k, v in variants.items()}
        sd = {k: float(np.nanstd(v, ddof=1)) if len(v) > 1 else float("nan") for k, v in variants.items()}
        best_uni = max((k for k in mean if k.startswith("unimodal_")), key=mean.get)
        for variant in ("merge", "fuse"):
            for ref in ("end_to_end", best_uni):
                diff = mean[variant] - mean[ref]
                spread = max(sd[variant], sd[ref])
                noise = " (within the seed spread)" if abs(diff) <= spread else ""
                out.append(f"- {task}: {variant} {'beats' if diff > 0 else 'loses to'} {ref} by {abs(diff):.3f}"
                           f"{noise}: {mean[variant]:.3f} +- {sd[variant]:.3f} vs {mean[ref]:.3f} +- {sd[ref]:.3f}")
    return out


def from_store(work: Path, seeds: list[int], tasks: list[str]) -> tuple[dict, dict, float, str]:
    """The scores of runs already made (``--from-store``): each run's ``results/mmlego.json``,
    their wall-clock minutes and the commit they ran at (their ``git_commit`` tag)."""
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medmm-mmlego-bench")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])} if experiment else {}
    scores: dict[str, dict[str, list[float]]] = {}
    metrics: dict[str, str] = {}
    seconds, commits = 0.0, set()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for task in tasks:
                run = runs[f"mmlego-bench-{task}-seed{seed}"]
                seconds += (run.info.end_time - run.info.start_time) / 1000
                dirty = " (with uncommitted changes)" if run.data.tags.get("git_dirty") == "true" else ""
                commits.add(run.data.tags.get("git_commit", "unknown")[:7] + dirty)
                path = client.download_artifacts(run.info.run_id, "results/mmlego.json", f"{tmp}/{task}{seed}")
                for variant, r in json.loads(Path(path).read_text())[task].items():
                    scores.setdefault(task, {}).setdefault(variant, []).append(r["score"])
                    metrics[task] = r["metric_name"]
    return scores, metrics, seconds / 60, " / ".join(sorted(commits))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", type=Path, default=REPO / "runs/mmlego_bench", help="MLflow store and bag cache")
    parser.add_argument("--out", type=Path, default=REPO / "docs/results/mmlego.md")
    parser.add_argument("--from-store", action="store_true", help="write the page from the runs already in --work "
                                                                   "(same seeds, tasks and overrides)")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every config")
    args = parser.parse_args(argv)
    # one thread: on a loaded 2-core machine two OpenMP threads spin against each other (an
    # X-ray epoch took 23 s with two threads, 3 s with one)
    threads = int(os.environ.get("MEDMM_THREADS", 1))
    scores: dict[str, dict[str, list[float]]] = {}
    metrics: dict[str, str] = {}
    start = time.perf_counter()
    if args.from_store:
        scores, metrics, minutes, commit = from_store(args.work, args.seeds, args.tasks)
    for seed in [] if args.from_store else args.seeds:
        for task in args.tasks:
            overrides = [*BUDGET[task], *args.overrides, f"seed={seed}", f"train.threads={threads}",
                         f"output_dir={args.work / 'runs'}", f"tracking.uri=sqlite:///{args.work / 'mlflow.db'}",
                         f"tracking.run_name=mmlego-bench-{task}-seed{seed}", "tracking.experiment=medmm-mmlego-bench"]
            outcome = run(build_config(MMLegoConfig, CONFIGS[task], overrides))
            for variant, r in outcome.results[task].items():
                scores.setdefault(task, {}).setdefault(variant, []).append(r["score"])
                metrics[task] = r["metric_name"]
            print(f"seed {seed} {task} done ({time.perf_counter() - start:.0f} s)", flush=True)
    if not args.from_store:
        minutes, commit = (time.perf_counter() - start) / 60, commit_label()
    command = "python benchmarks/mmlego_table.py " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", *(["--tasks", *args.tasks] if args.tasks != list(CONFIGS)
                                                          else []), *args.overrides])
    page = [
        "# MM-Lego: unimodal blocks, merge, fuse and end-to-end",
        "",
        "Per task, one LegoBlock per modality trained alone (`unimodal_*`), LegoMerge of those blocks "
        "(no paired data, no training after merging), LegoFuse (the blocks stacked and fine-tuned on paired "
        "data for a few epochs) and an end-to-end model of the same architecture and parameter count trained "
        "from scratch on paired data. Every variant is scored on the same held-out paired test rows of the "
        "cohort's patient-level split: Harrell's C (scikit-survival) for pathology + genomics survival on "
        "the pathology demo cohort, macro AUROC over the report findings for X-ray + ECG on the demo cohort.",
        "",
        *summarise(scores, metrics),
        "",
        "Mean and sample sd over seeds (model initialisation, batch order, tile draws and, for X-ray + ECG, "
        "the subset of studies); the split is the cohort's own.",
        "",
        "## Reading",
        "",
        *verdicts(scores),
        "",
        "## How it was measured",
        "",
        f"- Command: `{command}` ({minutes:.1f} min wall clock, the runs' own times, on a machine shared with "
        "other jobs).",
        "- Settings: the task configs `configs/mmlego/pathology_genomics.yaml` and `configs/mmlego/xray_ecg.yaml` "
        "with this CPU budget (shorter training, fewer X-ray / ECG studies than the configs): "
        + "; ".join(f"{t}: `{' '.join(o)}`" for t, o in BUDGET.items() if t in args.tasks) + ".",
        f"- Machine: {machine()}.",
        f"- Commit: {commit}.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(page) + "\n")
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
