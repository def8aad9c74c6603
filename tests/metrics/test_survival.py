"""Survival metrics and time bins against hand computations on fixed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medmm.data.survival_bins import discrete_survival_at, quantile_bins, time_to_bin
from medmm.metrics.survival import bootstrap_ci, evaluation_times, harrell_c, risk_groups, structured, survival_scores


@pytest.fixture
def cohort():
    rng = np.random.default_rng(4)
    n = 80
    x = rng.normal(size=n)
    t_event = rng.exponential(10 * np.exp(-0.8 * x))
    t_cens = rng.uniform(2, 25, n)
    time = np.minimum(t_event, t_cens).round(6)
    event = t_event <= t_cens
    return x, time, event


def hand_harrell(time, event, risk):
    concordant = comparable = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] and time[i] < time[j]:
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


def km(time, event):
    """Kaplan-Meier of (time, event) as a right-continuous step function."""
    order = np.unique(time[event])
    surv, s = [], 1.0
    for u in order:
        s *= 1 - ((time == u) & event).sum() / (time >= u).sum()
        surv.append(s)
    return lambda t: float(np.concatenate([[1.0], surv])[np.searchsorted(order, t, side="right")])


def hand_ibs(train_time, train_event, test_time, test_event, surv, times):
    """Graf et al. (1999) IPCW Brier score, censoring KM from the training set, trapezoid rule."""
    g = km(train_time, ~train_event)
    scores = []
    for k, t in enumerate(times):
        b = 0.0
        for i in range(len(test_time)):
            if test_time[i] <= t and test_event[i]:
                b += surv[i, k] ** 2 / g(test_time[i])
            elif test_time[i] > t:
                b += (1 - surv[i, k]) ** 2 / g(t)
        scores.append(b / len(test_time))
    return np.trapezoid(scores, times) / (times[-1] - times[0])


def test_scores_match_hand_computations(cohort):
    x, time, event = cohort
    risk = x + 0.3 * np.random.default_rng(0).normal(size=len(x))
    risk[:4] = risk[4]  # some tied risks
    train, test = slice(0, 50), slice(50, None)
    times = evaluation_times(time[train], time[test], event[test], n=12)
    surv = np.exp(-np.outer(np.exp(risk[test]), times) / 12)
    scores = survival_scores(structured(time[train], event[train]), structured(time[test], event[test]),
                             risk[test], surv, times)
    assert scores.harrell_c == pytest.approx(hand_harrell(time[test], event[test], risk[test]), abs=1e-12)
    assert harrell_c(time, event, risk) == pytest.approx(hand_harrell(time, event, risk), abs=1e-12)
    assert scores.ibs == pytest.approx(hand_ibs(time[train], event[train], time[test], event[test], surv, times),
                                       rel=1e-9)
    assert 0.6 < scores.uno_c < 0.95 and 0.6 < scores.mean_auc < 0.95


def test_bootstrap_ci_brackets_the_estimate(cohort):
    x, time, event = cohort
    full = hand_harrell(time, event, x)
    ci = bootstrap_ci(lambda idx: {"c": harrell_c(time[idx], event[idx], x[idx])}, len(x), n_boot=100)
    lo, hi = ci["c"]
    assert lo < full < hi and hi - lo < 0.3


def test_risk_groups_cut_on_training_risk(cohort):
    x, time, event = cohort
    groups = risk_groups(x[:50], x[50:], time[50:], event[50:])
    assert groups.cutoffs == pytest.approx([np.median(x[:50])])
    np.testing.assert_array_equal(groups.group, (x[50:] > np.median(x[:50])).astype(int))
    assert groups.p_value < 0.05  # x drives the hazard


def test_quantile_bins_and_step_survival():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 20.0])
    event = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    edges = quantile_bins(time, event, 4)
    np.testing.assert_allclose(edges, [1 - 1e-6, 3.0, 5.0, 7.0, 20 + 1e-6])  # quartiles of 1..9; outer widened
    np.testing.assert_array_equal(time_to_bin([1.0, 2.9, 3.0, 6.9, 7.0, 25.0, 0.0], edges), [0, 0, 1, 2, 3, 3, 0])
    surv = np.array([[0.9, 0.7, 0.4, 0.2]])
    np.testing.assert_allclose(discrete_survival_at(surv, edges, [0.5, 2.0, 3.0, 6.0, 8.0, 30.0]),
                               [[1.0, 1.0, 0.9, 0.7, 0.4, 0.2]])
