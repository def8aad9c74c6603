"""Survival run (``python -m medmm.pipelines.survival``): survival models and baselines trained
on the same patient-level splits, scored on a held-out test split, tracked in MLflow (with
``cv`` set: cross-validated instead, see ``cv.py``).

Per model: Harrell's and Uno's c-index, integrated Brier score, mean time-dependent AUC
(scikit-survival) with percentile-bootstrap CIs over test patients; a Kaplan-Meier figure
of the predicted risk groups (cut at training-risk quantiles) with the log-rank test;
test-patient predictions (row numbers only, no identifiers) for the notebook.
"""

from __future__ import annotations

import os
import tempfile
import time as clock
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmm.console import Number, headline
from medmm.data.survival import load_bundled, load_pathology_cohort, read_bag_index, tile_encoder_of
from medmm.io.errors import MedmmInputError
from medmm.metrics.survival import (
    bootstrap_ci,
    evaluation_times,
    kaplan_meier_figure,
    risk_groups,
    structured,
    survival_scores,
)
from medmm.tracking.pipeline_run import (
    finish,
    log_context,
    log_figure,
    log_json,
    log_metrics,
    register_with_aliases,
    run_name,
    start_run,
)
from medmm.workflows.preflight import CohortNeeds, check_before_run
from medmm.workflows.survival.config import BASELINES, SurvivalConfig
from medmm.workflows.survival.cv import SurvivalCVOutcome, run_cv
from medmm.workflows.survival.fit import (
    fit_predict_baseline,
    fit_predict_torch,
    make_split,
)
from medmm.workflows.survival.served import log_survival_model

METRICS = ("harrell_c", "uno_c", "ibs", "mean_auc")


@dataclass
class SurvivalOutcome:
    run_id: str
    tracking_uri: str
    results: dict[str, dict[str, float]]  # model -> metric (+ _lo / _hi)
    table: str
    model_uri: str | None = None  # the registered model (tracking.register_model)
    version: str | None = None
    registered_name: str | None = None

    def __str__(self) -> str:  # what the command prints
        # each model's Harrell C beside chance and the best scikit-survival baseline of the run
        baselines = {name: r["harrell_c"] for name, r in self.results.items() if name in BASELINES}
        best = max(baselines, key=baselines.get, default=None)
        models = [name for name in self.results if name not in BASELINES] or list(self.results)
        numbers = []
        for name in models:
            r = self.results[name]
            ci = f"95% CI {r.get('harrell_c_lo', float('nan')):.3f}-{r.get('harrell_c_hi', float('nan')):.3f}"
            versus = None if name in BASELINES else baselines.get(best)
            numbers.append(Number(f"{name} Harrell C ({ci})", r["harrell_c"],
                                  (("chance", 0.5), (f"best baseline, {best}", versus))))
        notes = [f"registered model: {self.registered_name} version {self.version} ({self.model_uri})"] \
            if self.model_uri else []
        return headline("held-out test split", numbers, run_id=self.run_id, tracking_uri=self.tracking_uri,
                        table="results/test_metrics.md", notes=notes)


def load_data(cfg: SurvivalConfig):
    if cfg.data.dataset == "pathology":
        return load_pathology_cohort(cfg.data.root, Path(cfg.output_dir) / "bag_cache", cfg.data.magnification,
                                     cfg.data.tile_size, cfg.data.max_tiles, cfg.seed, cfg.data.max_rows,
                                     cfg.data.gene_groups, cfg.data.feature_bags)
    data = load_bundled(cfg.data.dataset)
    if cfg.data.max_rows is not None and cfg.data.max_rows < len(data):
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(data), cfg.data.max_rows, replace=False))
        data.time, data.event, data.x = data.time[keep], data.event[keep], data.x[keep]
    return data


def format_table(results: dict[str, dict[str, float]], level: float) -> str:
    pct = int(round(level * 100))
    lines = [f"| model | Harrell C ({pct}% CI) | Uno C ({pct}% CI) | IBS ({pct}% CI) | mean AUC | log-rank p |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        cell = lambda m: f"{r[m]:.3f} ({r.get(m + '_lo', np.nan):.3f}-{r.get(m + '_hi', np.nan):.3f})"  # noqa: E731
        lines.append(f"| {name} | {cell('harrell_c')} | {cell('uno_c')} | {cell('ibs')} | {r['mean_auc']:.3f} | "
                     f"{r['logrank_p']:.3g} |")
    return "\n".join(lines)


def run(cfg: SurvivalConfig) -> SurvivalOutcome | SurvivalCVOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pathology = cfg.data.dataset == "pathology"
    check_before_run(cfg.tracking.uri, output_dirs={"output_dir": cfg.output_dir},
                     cohort=CohortNeeds(cfg.data.root, study_modality=None, why="pathology survival") if pathology
                     else None)
    if pathology and cfg.data.feature_bags is not None:
        read_bag_index(cfg.data.feature_bags)  # a missing or broken index fails before the run opens
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    client, run_id, tracking_uri = start_run(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg, "survival"),
                                             "survival")

    start = clock.perf_counter()
    data = load_data(cfg)
    # a pathology cohort's content hash is its manifest's; a bundled table's is the hash of its arrays
    log_context(client, run_id, "survival", cfg, data.manifest, data.skipped, content_hash=data.content_hash)
    client.set_tag(run_id, "dataset", cfg.data.dataset)
    if pathology:
        client.set_tag(run_id, "tile_encoder", "handmade" if cfg.data.feature_bags is None
                       else tile_encoder_of(cfg.data.feature_bags))
    if cfg.cv is not None:
        client.set_tag(run_id, "protocol", f"cv {cfg.cv.repeats}x{cfg.cv.folds}")
        log_metrics(client, run_id, {"data.n_skipped": len(data.skipped)})
        return run_cv(client, run_id, tracking_uri, data, cfg, str(cfg.data.root) if pathology else cfg.data.dataset)
    split = make_split(data, cfg)
    counts = {"data.n_skipped": len(data.skipped)}
    for name, rows in (("train", split.train), ("val", split.val), ("test", split.test)):
        counts[f"data.n_{name}"] = len(rows)
        counts[f"data.n_{name}_events"] = int(data.event[rows].sum())
    log_metrics(client, run_id, counts)

    train_all = split.train_all
    y_train = structured(data.time[train_all], data.event[train_all])
    t_test, e_test = data.time[split.test], data.event[split.test]
    try:
        times = evaluation_times(data.time[train_all], t_test, e_test, n=cfg.eval.n_times)
    except ValueError:
        raise MedmmInputError(cfg.data.root if pathology else cfg.data.dataset,
                              f"the test split's {int(e_test.sum())} event(s) span no time range inside the "
                              "training follow-up: IBS and time-dependent AUC cannot be scored") from None
    results: dict[str, dict[str, float]] = {}
    predictions = pd.DataFrame({"row": split.test, "time": t_test, "event": e_test.astype(int)})
    surv_curves = {}
    to_register, registered = cfg.model_to_register(), None
    for name in cfg.models:
        t0 = clock.perf_counter()
        fit = fit_predict_baseline if name in BASELINES else fit_predict_torch
        pred = fit(name, data, split, cfg, times)
        fit_s = clock.perf_counter() - t0

        def score(idx, pred=pred):
            y_b = structured(t_test[idx], e_test[idx])
            if not y_b["event"].any() or y_b["time"].max() <= times[-1]:
                raise ValueError("resample cannot be scored on the time grid")
            return survival_scores(y_train, y_b, pred.risk_test[idx], pred.surv_test[idx], times).as_dict()

        point = score(np.arange(len(split.test)))
        ci = bootstrap_ci(score, len(split.test), cfg.eval.n_bootstrap, cfg.eval.ci_level, cfg.seed)
        groups = risk_groups(pred.risk_train, pred.risk_test, t_test, e_test, cfg.eval.risk_groups)
        r = dict(point)
        for metric, (lo, hi) in ci.items():
            r[f"{metric}_lo"], r[f"{metric}_hi"] = lo, hi
        r.update({"logrank_chisq": groups.chisq, "logrank_p": groups.p_value, "fit_s": fit_s})
        r.update({f"info.{k}": float(v) for k, v in pred.info.items()})
        results[name] = r
        log_metrics(client, run_id, r, prefix=f"test.{name}.")
        fig = kaplan_meier_figure(t_test, e_test, groups, f"{name}: test patients by predicted risk")
        log_figure(client, run_id, fig, f"km_{name}")
        predictions[f"risk.{name}"] = pred.risk_test
        predictions[f"group.{name}"] = groups.group
        surv_curves[name] = pred.surv_test
        if name == to_register:
            registered = pred
        print(f"  {name:10s} Harrell C {r['harrell_c']:.3f}  IBS {r['ibs']:.3f}  ({fit_s:.1f} s)", flush=True)

    table = format_table(results, cfg.eval.ci_level)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_predictions.csv"
        predictions.to_csv(path, index=False)
        client.log_artifact(run_id, str(path), artifact_path="results")
        curves = Path(tmp) / "test_survival_curves.npz"
        np.savez(curves, times=times, **{f"surv_{k}": v for k, v in surv_curves.items()})
        client.log_artifact(run_id, str(curves), artifact_path="results")
    log_json(client, run_id, "test_metrics.json", results)
    client.log_text(run_id, table, "results/test_metrics.md")
    log_metrics(client, run_id, {"time.total_s": clock.perf_counter() - start})
    model_uri = version = None
    if registered is not None:
        # the champion metric is the early-stopping criterion of the registered model: its best
        # inner-validation loss (never a test-split score)
        log_metrics(client, run_id, {"best_val_loss": registered.info["val_loss"]})
        model_uri = log_survival_model(run_id, to_register, registered.model, cfg, registered.preprocess,
                                       {"feature_names": list(data.feature_names), "dims": registered.dims})
        version = register_with_aliases(client, model_uri, registered_name(cfg), run_id, "best_val_loss",
                                        higher_is_better=False)
    finish(client, run_id)
    return SurvivalOutcome(run_id, tracking_uri, results, table, model_uri, version, registered_name(cfg))


def registered_name(cfg: SurvivalConfig) -> str:
    return cfg.tracking.registered_name or f"medmm-survival-{cfg.model_to_register()}"
