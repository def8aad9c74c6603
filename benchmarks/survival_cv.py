"""Cross-validated survival table: the ``cv`` protocol of ``python -m medmm.pipelines.survival``
on the pathology + genomics demo cohort (CMTA against its parts and the baselines, 5 folds)
and on scikit-survival's breast-cancer cohort (the tabular heads, 5 folds x 5 repeats),
written as the section "Cross-validated" of docs/results/survival.md.

    python benchmarks/survival_cv.py                         # both cohorts, the CPU budget below
    python benchmarks/survival_cv.py --tasks breast_cancer   # one cohort (the page keeps the other's last run)
    python benchmarks/survival_cv.py --from-store            # rewrite the section from the runs in --work

Every run is one MLflow run in the store under --work; the section is rebuilt from each
task's newest finished run there. Needs data/demo_pathology (make_demo_pathology).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from medmm.demo.pathology import oracle_c_index
from medmm.tracking.run_context import commit_label
from medmm.training.precision import cpu_identity
from medmm.workflows.survival.config import BASELINES, SurvivalConfig
from medmm.workflows.survival.run import run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"demo_pathology": REPO / "configs/survival/demo_pathology_cv.yaml",
           "breast_cancer": REPO / "configs/survival/breast_cancer_cv.yaml"}
# Extra settings per task (the configs' own settings fit the CPU: about 10 minutes for the demo
# cohort's 15 folds on a shared 2-core machine, 2 minutes for breast cancer's 25).
BUDGET: dict[str, list[str]] = {"demo_pathology": [], "breast_cancer": []}
EXPERIMENT = "medmm-survival-cv-bench"
SECTION = "## Cross-validated"
TITLES = {"demo_pathology": "Pathology + genomics demo cohort: CMTA against its parts and the baselines",
          "breast_cancer": "Breast cancer: the tabular heads"}


def machine() -> str:
    cpu = cpu_identity()["cpu_model"]
    return f"{os.cpu_count()}-core {cpu}, no GPU, torch threads {os.environ.get('MEDMM_THREADS', 1)}"


def run_task(task: str, work: Path, overrides: list[str]) -> str:
    threads = int(os.environ.get("MEDMM_THREADS", 1))
    cfg = build_config(SurvivalConfig, CONFIGS[task], [
        *BUDGET[task], f"output_dir={work / 'runs'}", *overrides, f"train.threads={threads}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"tracking.experiment={EXPERIMENT}",
        f"tracking.run_name=survival-cv-{task}"])
    return run(cfg).run_id


def newest_run(client: MlflowClient, task: str):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.runName = 'survival-cv-{task}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def task_section(client: MlflowClient, task: str, run, tmp: str) -> list[str]:
    results = json.loads(Path(client.download_artifacts(run.info.run_id, "results/cv_metrics.json", tmp))
                         .read_text())
    folds = pd.read_csv(client.download_artifacts(run.info.run_id, "results/cv_folds.csv", tmp))
    params = run.data.params
    n_folds, repeats = int(params["cv.folds"]), int(params["cv.repeats"])
    lines = [f"### {TITLES[task]}", "",
             f"{int(run.data.metrics['data.n_patients'])} patients, {int(run.data.metrics['data.n_events'])} events; "
             f"{n_folds}-fold CV stratified by event" + (f", repeated {repeats} times" if repeats > 1 else "")
             + f" (partition seed {params['cv.seed']}, model seed {params['seed']}). Mean ± sample sd over the "
               f"{len(folds) // folds['model'].nunique()} held-out folds.", "",
             "| model | Harrell C | IBS | Uno C | mean AUC | best epoch / alpha (median) |", "|---|---|---|---|---|---|"]
    best_c = max(r["harrell_c_mean"] for r in results.values())
    best_ibs = min(r["ibs_mean"] for r in results.values())
    for name, r in results.items():
        rows = folds[folds["model"] == name]
        c = f"{r['harrell_c_mean']:.3f} ± {r['harrell_c_sd']:.3f}"
        ibs = f"{r['ibs_mean']:.3f} ± {r['ibs_sd']:.3f}"
        selected = (f"alpha {rows['info.alpha'].median():.3g}" if "info.alpha" in rows and rows["info.alpha"].notna().any()
                    else f"epoch {rows['info.best_epoch'].median():.0f}" if "info.best_epoch" in rows
                    and rows["info.best_epoch"].notna().any() else "fixed")
        lines.append(f"| {name}{' (baseline)' if name in BASELINES else ''} | "
                     f"{f'**{c}**' if r['harrell_c_mean'] == best_c else c} | "
                     f"{f'**{ibs}**' if r['ibs_mean'] == best_ibs else ibs} | "
                     f"{r['uno_c_mean']:.3f} ± {r['uno_c_sd']:.3f} | {r['mean_auc_mean']:.3f} ± {r['mean_auc_sd']:.3f} | "
                     f"{selected} |")
    if repeats > 1:
        spread = ", ".join(f"{m} {r['harrell_c_sd_repeats']:.3f}" for m, r in results.items())
        lines += ["", f"Sd of the {repeats} repeats' mean Harrell C: {spread}."]
    if "cmta" in results:
        oracle = oracle_c_index(REPO / "data/demo_pathology")
        lines += ["", f"The planted hazard's own Harrell C on the cohort's test split (the generator's ceiling, "
                      f"`oracle_c_index`): {oracle:.3f}.", "", *paired(folds, "cmta")]
    lines += ["", f"- **MLflow run:** `{run.info.run_id}` (experiment `{EXPERIMENT}`), "
                  f"{run.data.metrics.get('time.total_s', float('nan')) / 60:.1f} min.",
              f"- **Settings:** `{CONFIGS[task].relative_to(REPO)}`: torch models up to {params['train.epochs']} "
              f"epochs, patience {params['train.patience']}, learning rate {params['train.lr']}; Coxnet "
              f"{params['baselines.inner_folds']}-fold inner CV; RSF {params['baselines.rsf_trees']} trees."]
    return lines


def paired(folds: pd.DataFrame, model: str) -> list[str]:
    """CMTA against each other model on the same folds: mean ± sd of the per-fold difference in
    Harrell C and the folds it wins."""
    wide = folds.pivot_table(index=["repeat", "fold"], columns="model", values="harrell_c")
    means = wide.mean()
    above = [m for m in means.index if m != model and means[m] >= means[model]]
    verdict = (f"**{model} has the highest mean Harrell C.**" if not above else
               f"**{model} does not beat {', '.join(above)}**: "
               f"{'their' if len(above) > 1 else 'its'} mean Harrell C is at or above {model}'s.")
    lines = [verdict, "", f"Per-fold difference in Harrell C, {model} minus each other model on the same folds "
                         "(above / below: the mean difference exceeds its sd):", ""]
    for other in wide.columns:
        if other == model:
            continue
        d = wide[model] - wide[other]
        sd = d.std(ddof=1)
        verdict = "above" if d.mean() > sd else "below" if -d.mean() > sd else "not separable from"
        lines.append(f"- vs {other}: {d.mean():+.3f} ± {d.std(ddof=1):.3f}, {model} higher on {int((d > 0).sum())} "
                     f"of {len(d)} folds: {verdict} {other}.")
    return lines


def write_section(path: Path, lines: list[str]) -> None:
    """Replace (or append) the section "Cross-validated" of the results page."""
    text = path.read_text()
    block = "\n".join(lines) + "\n"
    match = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    text = text[:match.start()] + block + ("\n" if match.end() < len(text) else "") + text[match.end():] if match \
        else text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", type=Path, default=REPO / "runs/survival_cv_bench", help="MLflow store, bag cache")
    parser.add_argument("--out", type=Path, default=REPO / "docs/results/survival.md")
    parser.add_argument("--from-store", action="store_true", help="only rewrite the section from the runs in --work")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every config after the budget")
    args = parser.parse_args(argv)
    for task in [] if args.from_store else args.tasks:
        start = time.perf_counter()
        run_id = run_task(task, args.work, args.overrides)
        print(f"{task}: run {run_id} ({time.perf_counter() - start:.0f} s)", flush=True)
    client = MlflowClient(f"sqlite:///{args.work / 'mlflow.db'}")
    lines = [SECTION, "",
             "Every model refitted on each training part of a stratified K-fold partition of all patients and "
             "scored on the held-out fold (`cv` in the survival config). Selection stays inside the training part: "
             "early stopping on an inner validation split carved from it, Coxnet's alpha by inner 5-fold CV on it, "
             "scaling, imputation, discrete-time bins and the Breslow baseline hazard fitted on it; RSF uses fixed "
             "settings; nothing is tuned per method on held-out folds. IBS: scikit-survival's "
             "`integrated_brier_score` on 20 times evenly spaced between the 10th and 80th percentiles of the "
             "held-out fold's event times, below the largest training and held-out follow-up time. The sd is the "
             "spread of the fold scores, not a standard error (folds share training patients): differences "
             "within about one sd are not resolved by this protocol.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for task in CONFIGS:
            found = newest_run(client, task)
            if found is not None:
                lines += task_section(client, task, found, tmp) + [""]
    lines += ["- **Command:** `python benchmarks/survival_cv.py` (after `python -m medmm.pipelines.make_demo_pathology "
              "--out data/demo_pathology`)" + (f", overrides `{' '.join(args.overrides)}`" if args.overrides else ""),
              f"- **Machine:** {machine()}, shared with other jobs.", f"- **Commit:** {commit_label()}."]
    write_section(args.out, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
