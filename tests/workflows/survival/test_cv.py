"""The survival workflow's cross-validation (``cv``) on tiny configs into a temporary MLflow
store: the outer folds partition the patients in every repeat, no held-out patient reaches
the fitted scalers (the selection's inputs), the logged per-fold c-index equals
scikit-survival's on the logged fold predictions, and the aggregate is the folds' mean / sd."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medmm.config.core import ConfigError, build_config
from medmm.data.survival import Standardizer
from medmm.workflows.survival import fit as fit_module
from medmm.workflows.survival.config import SurvivalConfig
from medmm.workflows.survival.cv import cv_folds
from medmm.workflows.survival.run import load_data, run
from tests.conftest import REPO, load_benchmark
from tests.workflows.survival.conftest import TINY_SURVIVAL, survival_overrides

TINY_CV = REPO / "configs/survival/tiny_cv.yaml"
BENCH = load_benchmark("survival_cv")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module's runs (creating a store costs seconds)."""
    return tmp_path_factory.mktemp("survival_cv")


class _Recording(Standardizer):
    """A ``Standardizer`` that keeps every array it is fitted on (scaling and imputation are
    learnt from these rows only)."""

    seen: list[np.ndarray] = []

    def fit(self, x):
        self.seen.append(np.array(x, copy=True))
        return super().fit(x)


def _recorded_run(cfg: SurvivalConfig):
    with pytest.MonkeyPatch.context() as patch:
        seen: list[np.ndarray] = []
        patch.setattr(_Recording, "seen", seen)
        patch.setattr(fit_module, "Standardizer", _Recording)
        return run(cfg), seen


@pytest.fixture(scope="module")
def breast_cv(store):
    """The tiny breast-cancer CV run, named as benchmarks/survival_cv.py names its runs."""
    cfg = build_config(SurvivalConfig, TINY_CV, survival_overrides(
        store, f"tracking.experiment={BENCH.EXPERIMENT}", "tracking.run_name=survival-cv-breast_cancer"))
    outcome, seen = _recorded_run(cfg)
    return cfg, outcome, seen


def _rows_of(arrays: list[np.ndarray], x: np.ndarray) -> list[set[int]]:
    """The cohort rows behind each array fitted on ``x``'s features (other inputs skipped)."""
    index = {row.tobytes(): i for i, row in enumerate(np.asarray(x, np.float64))}
    assert len(index) == len(x)  # rows are distinct, so the lookup is exact
    return [{index[row.tobytes()] for row in np.asarray(a, np.float64)} for a in arrays if a.shape[1] == x.shape[1]]


def _check_folds(outcome, n: int, repeats: int, folds: int) -> None:
    assert len(outcome.folds) == repeats * folds
    for r in range(repeats):
        tests = [f.split.test for f in outcome.folds if f.repeat == r]
        assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(n))  # each patient held out exactly once
    for f in outcome.folds:
        s = f.split
        assert not (set(s.train) & set(s.val) or set(s.train_all) & set(s.test))
        assert len(s.train) + len(s.val) + len(s.test) == n


def _check_logged(outcome, tmp_path) -> pd.DataFrame:
    from sksurv.metrics import concordance_index_censored

    client = MlflowClient(outcome.tracking_uri)
    run_data = client.get_run(outcome.run_id).data
    preds = pd.read_csv(client.download_artifacts(outcome.run_id, "results/cv_predictions.csv", str(tmp_path)))
    assert not {"patient_id", "slide", "case_id"} & set(preds.columns)  # row numbers only
    for name, r in outcome.results.items():
        history = {m.step: m.value for m in client.get_metric_history(outcome.run_id, f"cv.{name}.harrell_c")}
        assert sorted(history) == [f.step for f in outcome.folds]
        for f in outcome.folds:
            fold = preds[(preds["repeat"] == f.repeat) & (preds["fold"] == f.fold)]
            assert np.array_equal(fold["row"].to_numpy(), f.split.test)
            c = concordance_index_censored(fold["event"].astype(bool).to_numpy(), fold["time"].to_numpy(),
                                           fold[f"risk.{name}"].to_numpy())[0]
            assert history[f.step] == pytest.approx(c, abs=1e-12)
        values = np.array([history[f.step] for f in outcome.folds])
        assert run_data.metrics[f"cv.{name}.harrell_c_mean"] == pytest.approx(values.mean())
        assert run_data.metrics[f"cv.{name}.harrell_c_sd"] == pytest.approx(values.std(ddof=1))
        ibs = [m.value for m in client.get_metric_history(outcome.run_id, f"cv.{name}.ibs")]
        assert len(ibs) == len(outcome.folds) and 0 < r["ibs_mean"] < 0.5
        assert r["ibs_mean"] == pytest.approx(np.mean(ibs)) and r["ibs_sd"] == pytest.approx(np.std(ibs, ddof=1))
    table = client.download_artifacts(outcome.run_id, "results/cv_metrics.md", str(tmp_path))
    assert "± " in open(table).read()
    return preds


def test_breast_cancer_cv_folds_selection_and_scores(breast_cv, tmp_path):
    cfg, outcome, recorded_fits = breast_cv
    data = load_data(cfg)
    _check_folds(outcome, len(data), repeats=2, folds=3)
    # the torch head scales on the fold's fitting rows, the baselines on its whole training part
    # (their alpha is chosen by inner CV inside it): never on a held-out patient
    fitted = _rows_of(recorded_fits, data.x)
    assert len(fitted) == len(outcome.folds) * len(cfg.models)
    for f, rows in zip(outcome.folds, [fitted[i:i + 3] for i in range(0, len(fitted), 3)]):
        assert rows == [set(f.split.train), set(f.split.train_all), set(f.split.train_all)]
        assert not any(r & set(f.split.test) for r in rows)
    _check_logged(outcome, tmp_path)
    per_fold = outcome.per_fold
    assert (per_fold["grid_end"] > per_fold["grid_start"]).all()
    for f in outcome.folds:  # the IBS grid lies inside the held-out fold's follow-up
        grid = per_fold[(per_fold["repeat"] == f.repeat) & (per_fold["fold"] == f.fold)]
        assert (grid["grid_end"] < data.time[f.split.test].max()).all()
    assert "harrell_c_sd_repeats" in outcome.results["coxnet"] and "coxnet Harrell C" in str(outcome)


def test_pathology_cv_pools_the_manifest_split(tiny_pathology_cohort, store, tmp_path):
    cfg = build_config(SurvivalConfig, TINY_CV, survival_overrides(
        store, "data.dataset=pathology", f"data.root={tiny_pathology_cohort}", "data.max_rows=null",
        "data.tile_size=64", "data.bag_size=8", "models=[cmta,coxnet]", "train.epochs=2", "train.dim=16",
        "train.n_bins=2", "cv.repeats=1"))
    outcome, recorded_fits = _recorded_run(cfg)
    data = load_data(cfg)
    assert data.split is not None  # the cohort has its own split; CV uses every patient instead
    _check_folds(outcome, len(data), repeats=1, folds=3)
    fitted = _rows_of(recorded_fits, data.x)
    assert len(fitted) == len(outcome.folds) * len(cfg.models)
    for f, rows in zip(outcome.folds, [fitted[i:i + 2] for i in range(0, len(fitted), 2)]):
        assert rows == [set(f.split.train), set(f.split.train_all)]  # CMTA on the fitting rows, Coxnet on all
        assert not any(r & set(f.split.test) for r in rows)
    preds = _check_logged(outcome, tmp_path)
    assert set(preds.columns) >= {"risk.cmta", "risk.coxnet"}


def test_cv_config_and_too_few_events():
    assert build_config(SurvivalConfig, TINY_SURVIVAL, []).cv is None  # default: one held-out split
    with pytest.raises(ConfigError):
        build_config(SurvivalConfig, TINY_CV, ["cv.folds=1"])
    cfg = build_config(SurvivalConfig, TINY_CV, ["cv.folds=60"])
    with pytest.raises(ValueError, match="needs at least 60 events"):
        cv_folds(load_data(cfg), cfg)


def test_results_section_is_written_from_the_runs(breast_cv, store, tmp_path):
    """benchmarks/survival_cv.py rebuilds the results page's section from the tracked runs."""
    _, outcome, _ = breast_cv
    page = tmp_path / "survival.md"
    page.write_text("# Survival\n\n## Breast cancer\n\nsingle split\n\n## Cross-validated\n\nstale\n")
    assert BENCH.main(["--from-store", "--work", str(store), "--out", str(page)]) == 0
    text = page.read_text()
    assert "stale" not in text and text.count("## Cross-validated") == 1 and "single split" in text
    r = outcome.results["coxnet"]
    assert f"| coxnet (baseline) | {r['harrell_c_mean']:.3f} ± {r['harrell_c_sd']:.3f}" in text.replace("**", "")
    assert outcome.run_id in text and "6 held-out folds" in text
