"""Survival metrics through scikit-survival: Harrell's and Uno's c-index, integrated
Brier score, time-dependent AUC; percentile-bootstrap confidence intervals; Kaplan-Meier
curves of predicted risk groups with a log-rank test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def structured(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event, bool), time=np.asarray(time, float))


def evaluation_times(train_time: np.ndarray, test_time: np.ndarray, test_event: np.ndarray,
                     n: int = 20, quantiles: tuple[float, float] = (0.1, 0.8)) -> np.ndarray:
    """Time grid for IBS / AUC: between quantiles of the test event times, inside the
    training follow-up (IPCW needs the censoring distribution there)."""
    events = np.asarray(test_time, float)[np.asarray(test_event, bool)]
    lo, hi = np.quantile(events, quantiles)
    hi = min(hi, float(np.max(train_time)) * 0.999, float(np.max(test_time)) * 0.999)
    if not hi > lo:
        raise ValueError("test events span no usable time range")
    return np.linspace(lo, hi, n)


@dataclass(frozen=True)
class SurvivalScores:
    harrell_c: float
    uno_c: float
    ibs: float
    mean_auc: float

    def as_dict(self) -> dict[str, float]:
        return {"harrell_c": self.harrell_c, "uno_c": self.uno_c, "ibs": self.ibs, "mean_auc": self.mean_auc}


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    from sksurv.metrics import concordance_index_censored

    return float(concordance_index_censored(np.asarray(event, bool), np.asarray(time, float),
                                            np.asarray(risk, float))[0])


def survival_scores(y_train: np.ndarray, y_test: np.ndarray, risk: np.ndarray, surv_at_times: np.ndarray,
                    times: np.ndarray) -> SurvivalScores:
    """All four scores for one model on one test set. ``surv_at_times``: [n, len(times)]."""
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score

    risk = np.asarray(risk, float)
    tau = float(times[-1])
    return SurvivalScores(
        harrell_c=harrell_c(y_test["time"], y_test["event"], risk),
        uno_c=float(concordance_index_ipcw(y_train, y_test, risk, tau=tau)[0]),
        ibs=float(integrated_brier_score(y_train, y_test, surv_at_times, times)),
        mean_auc=float(cumulative_dynamic_auc(y_train, y_test, risk, times)[1]),
    )


def bootstrap_ci(score: Callable[[np.ndarray], dict[str, float]], n: int, n_boot: int = 200, level: float = 0.95,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over test patients: ``score(indices)`` -> {name: value}.
    Resamples that a metric cannot score (e.g. no event inside the time grid) are skipped."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            values = score(idx)
        except ValueError:
            continue
        for k, v in values.items():
            if np.isfinite(v):
                draws.setdefault(k, []).append(v)
    alpha = (1 - level) / 2
    return {k: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) for k, v in draws.items()}


@dataclass(frozen=True)
class RiskGroups:
    group: np.ndarray  # [n] 0 = lowest risk
    cutoffs: np.ndarray
    chisq: float
    p_value: float


def risk_groups(train_risk: np.ndarray, test_risk: np.ndarray, test_time: np.ndarray, test_event: np.ndarray,
                n_groups: int = 2) -> RiskGroups:
    """Split test patients by quantiles of the TRAINING risk (the cut never sees the test
    set) and compare the groups' survival with the log-rank test."""
    from sksurv.compare import compare_survival

    cutoffs = np.quantile(np.asarray(train_risk, float), np.linspace(0, 1, n_groups + 1)[1:-1])
    group = np.searchsorted(cutoffs, np.asarray(test_risk, float), side="right")
    if len(np.unique(group)) < 2:
        return RiskGroups(group, cutoffs, float("nan"), float("nan"))
    chisq, p = compare_survival(structured(test_time, test_event), group)
    return RiskGroups(group, cutoffs, float(chisq), float(p))


def kaplan_meier_figure(time: np.ndarray, event: np.ndarray, groups: RiskGroups, title: str):
    """Kaplan-Meier curve per predicted risk group, log-rank p in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sksurv.nonparametric import kaplan_meier_estimator

    fig, ax = plt.subplots(figsize=(5, 3.6))
    names = ["low", "high"] if groups.cutoffs.size == 1 else [f"group {g + 1}" for g in range(groups.cutoffs.size + 1)]
    for g in np.unique(groups.group):
        sel = groups.group == g
        t, s = kaplan_meier_estimator(np.asarray(event, bool)[sel], np.asarray(time, float)[sel])
        ax.step(t, s, where="post", label=f"{names[g]} risk (n={int(sel.sum())})")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\nlog-rank chi2={groups.chisq:.2f}, p={groups.p_value:.3g}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
