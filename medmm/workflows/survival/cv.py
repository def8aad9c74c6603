"""Repeated stratified K-fold cross-validation of the survival models (``cv`` in the config).

The patients are partitioned ``cv.repeats`` times into ``cv.folds`` folds stratified by
event; each fold is held out once. Every model is refitted on the other folds, and all of
its selection happens inside them: an inner validation split carved from the training part
(stratified by event) drives early stopping, and scaling, imputation, discrete-time bins,
Coxnet's alpha (inner K-fold) and the Breslow baseline hazard are fitted on the training
part only (see ``fit.py``). The held-out fold is used for scoring alone.

Per fold and model: Harrell's and Uno's c-index, integrated Brier score and mean
time-dependent AUC (scikit-survival) on a time grid inside the fold's follow-up
(``evaluation_times``: between the 10th and 80th percentiles of the held-out fold's event
times, below the largest training and held-out follow-up time, where the IPCW weights are
defined). The summary is mean ± sd over all folds of all repeats.
"""

from __future__ import annotations

import tempfile
import time as clock
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmm.console import Number, headline, progress
from medmm.data.survival import SurvivalData
from medmm.io.errors import MedmmInputError
from medmm.metrics.survival import evaluation_times, harrell_c, structured, survival_scores
from medmm.tracking.pipeline_run import finish, log_json, log_metrics
from medmm.workflows.survival.config import BASELINES, SurvivalConfig
from medmm.workflows.survival.fit import Split, fit_predict_baseline, fit_predict_torch

METRICS = ("harrell_c", "uno_c", "ibs", "mean_auc")


@dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    split: Split  # train (fitting) / val (inner selection) / test (the held-out fold)
    step: int  # repeat * folds + fold: the MLflow step of this fold's metrics


def cv_folds(data: SurvivalData, cfg: SurvivalConfig) -> list[Fold]:
    """The outer folds of every repeat, each with its inner validation split taken from the
    training part (stratified by event, seeded by cfg.seed as the single split's)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    cv = cfg.cv
    idx = np.arange(len(data))
    n_events = int(data.event.sum())
    if min(n_events, len(data) - n_events) < cv.folds:
        raise ValueError(f"{cv.folds}-fold cross-validation stratified by event needs at least {cv.folds} events "
                         f"and {cv.folds} censored patients; the cohort has {n_events} of {len(data)} with an event")
    folds = []
    for repeat in range(cv.repeats):
        outer = StratifiedKFold(cv.folds, shuffle=True, random_state=cv.seed + repeat)
        for k, (rest, test) in enumerate(outer.split(idx, data.event)):
            train, val = train_test_split(rest, test_size=cfg.data.val_fraction, stratify=data.event[rest],
                                          random_state=cfg.seed + 1)
            folds.append(Fold(repeat, k, Split(np.sort(train), np.sort(val), np.sort(test)), len(folds)))
    return folds


@dataclass
class SurvivalCVOutcome:
    run_id: str
    tracking_uri: str
    results: dict[str, dict[str, float]]  # model -> <metric>_mean / <metric>_sd
    per_fold: pd.DataFrame  # one row per (repeat, fold, model): the four metrics, fit time, selection info
    folds: list[Fold]
    table: str

    def __str__(self) -> str:  # what the command prints
        n = len(self.folds)
        baselines = {m: r["harrell_c_mean"] for m, r in self.results.items() if m in BASELINES}
        best = max(baselines, key=baselines.get, default=None)
        numbers = [Number(f"{m} Harrell C (sd {r['harrell_c_sd']:.3f}), IBS {r['ibs_mean']:.3f}", r["harrell_c_mean"],
                          (("chance", 0.5), (f"best baseline, {best}", None if m in BASELINES else baselines.get(best))))
                   for m, r in self.results.items()]
        return headline(f"cross-validation, mean over {n} held-out folds", numbers, run_id=self.run_id,
                        tracking_uri=self.tracking_uri, table="results/cv_metrics.md")


def aggregate(per_fold: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean and sample sd (ddof 1) of each metric over all folds of all repeats, per model;
    with several repeats also the sd of the repeats' means (``<metric>_sd_repeats``)."""
    results = {}
    for name, rows in per_fold.groupby("model", sort=False):
        r = {}
        for m in METRICS:
            r[f"{m}_mean"] = float(rows[m].mean())
            r[f"{m}_sd"] = float(rows[m].std(ddof=1)) if len(rows) > 1 else float("nan")
            if rows["repeat"].nunique() > 1:
                r[f"{m}_sd_repeats"] = float(rows.groupby("repeat")[m].mean().std(ddof=1))
        r["n_folds"] = float(len(rows))
        results[name] = r
    return results


def format_cv_table(results: dict[str, dict[str, float]], n_folds: int) -> str:
    lines = [f"| model | Harrell C (mean ± sd, {n_folds} folds) | Uno C | IBS (mean ± sd) | mean AUC |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        cell = lambda m: f"{r[m + '_mean']:.3f} ± {r[m + '_sd']:.3f}"  # noqa: E731
        label = f"{name} (baseline)" if name in BASELINES else name
        lines.append(f"| {label} | {cell('harrell_c')} | {cell('uno_c')} | {cell('ibs')} | {cell('mean_auc')} |")
    return "\n".join(lines)


def _score_fold(data: SurvivalData, fold: Fold, cfg: SurvivalConfig, where: str):
    split = fold.split
    train_all = split.train_all
    t_test, e_test = data.time[split.test], data.event[split.test]
    try:
        times = evaluation_times(data.time[train_all], t_test, e_test, n=cfg.eval.n_times)
    except ValueError:
        raise MedmmInputError(where, f"held-out fold {fold.fold} of repeat {fold.repeat}: its {int(e_test.sum())} "
                                     "event(s) span no time range inside the training follow-up, so the IBS "
                                     "cannot be scored; use fewer folds") from None
    y_train = structured(data.time[train_all], data.event[train_all])
    # IPCW metrics weight each test event by the training censoring survival at its time, which
    # is zero from the training follow-up's end when the last training patient is censored
    # (scikit-survival then refuses to score). Events past that end are scored as censored
    # there: every grid time lies before it, where both count alike (at risk, weight 1/G(t)).
    y_test = structured(t_test, e_test & (t_test < data.time[train_all].max()))
    rows, risks = [], {}
    for name in cfg.models:
        t0 = clock.perf_counter()
        fit = fit_predict_baseline if name in BASELINES else fit_predict_torch
        pred = fit(name, data, split, cfg, times)
        scores = survival_scores(y_train, y_test, pred.risk_test, pred.surv_test, times).as_dict()
        scores["harrell_c"] = harrell_c(t_test, e_test, pred.risk_test)  # no weights: every event as observed
        rows.append({"repeat": fold.repeat, "fold": fold.fold, "model": name, **scores,
                     "fit_s": clock.perf_counter() - t0, "grid_start": float(times[0]), "grid_end": float(times[-1]),
                     **{f"info.{k}": float(v) for k, v in pred.info.items()}})
        risks[f"risk.{name}"] = pred.risk_test
    predictions = pd.DataFrame({"repeat": fold.repeat, "fold": fold.fold, "row": split.test, "time": t_test,
                                "event": e_test.astype(int), **risks})
    return rows, predictions


def run_cv(client, run_id: str, tracking_uri: str, data: SurvivalData, cfg: SurvivalConfig,
           where: str) -> SurvivalCVOutcome:
    """The cross-validation of an open run (``where``: the cohort as named in errors)."""
    start = clock.perf_counter()
    try:
        folds = cv_folds(data, cfg)
    except ValueError as exc:
        raise MedmmInputError(where, str(exc)) from None
    log_metrics(client, run_id, {"data.n_patients": len(data), "data.n_events": int(data.event.sum()),
                                 "cv.n_folds": len(folds)})
    per_fold, predictions = [], []
    for fold in progress(folds, "cross-validation folds"):
        rows, pred = _score_fold(data, fold, cfg, where)
        per_fold += rows
        predictions.append(pred)
        split = fold.split
        log_metrics(client, run_id, {"data.n_train": len(split.train), "data.n_val": len(split.val),
                                     "data.n_test": len(split.test),
                                     "data.n_test_events": int(data.event[split.test].sum())},
                    prefix="cv.", step=fold.step)
        for r in rows:
            log_metrics(client, run_id, {k: v for k, v in r.items() if k in METRICS or k == "fit_s"
                                         or k.startswith("info.")}, prefix=f"cv.{r['model']}.", step=fold.step)
    per_fold = pd.DataFrame(per_fold)
    results = aggregate(per_fold)
    for name, r in results.items():
        log_metrics(client, run_id, r, prefix=f"cv.{name}.")
    table = format_cv_table(results, len(folds))
    with tempfile.TemporaryDirectory() as tmp:
        for frame, file in ((per_fold, "cv_folds.csv"), (pd.concat(predictions, ignore_index=True),
                                                         "cv_predictions.csv")):
            path = Path(tmp) / file
            frame.to_csv(path, index=False)
            client.log_artifact(run_id, str(path), artifact_path="results")
    log_json(client, run_id, "cv_metrics.json", results)
    client.log_text(run_id, table, "results/cv_metrics.md")
    log_metrics(client, run_id, {"time.total_s": clock.perf_counter() - start})
    finish(client, run_id)
    return SurvivalCVOutcome(run_id, tracking_uri, results, per_fold, folds, table)
