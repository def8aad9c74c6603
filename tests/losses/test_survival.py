"""Survival losses against independent computations: Efron / Breslow partial likelihood by
hand and by scikit-survival's Cox fit; the MCAT / CMTA discrete NLL by hand; the alignment
target carries no gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmm.losses.survival import alignment_l1, cox_partial_nll, discrete_time_nll

TIME = np.array([2.0, 3.0, 3.0, 3.0, 5.0, 6.0, 6.0, 8.0, 9.0])
EVENT = np.array([1, 1, 1, 0, 1, 1, 0, 1, 0], bool)
RISK = np.array([0.3, -0.2, 1.1, 0.4, -0.7, 0.9, 0.1, -1.3, 0.5])


def hand_log_partial_likelihood(risk, time, event, ties):
    total = 0.0
    for t in sorted(set(time[event])):
        dead = [i for i in range(len(time)) if time[i] == t and event[i]]
        at_risk = [k for k in range(len(time)) if time[k] >= t]
        total += sum(risk[i] for i in dead)
        s_risk = sum(math.exp(risk[k]) for k in at_risk)
        s_dead = sum(math.exp(risk[i]) for i in dead)
        for l in range(len(dead)):
            frac = l / len(dead) if ties == "efron" else 0.0
            total -= math.log(s_risk - frac * s_dead)
    return total


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_partial_likelihood_by_hand(ties):
    loss = cox_partial_nll(torch.tensor(RISK), torch.tensor(TIME), torch.tensor(EVENT), ties=ties)
    expected = -hand_log_partial_likelihood(RISK, TIME, EVENT, ties) / EVENT.sum()
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    shifted = cox_partial_nll(torch.tensor(RISK + 50.0), torch.tensor(TIME), torch.tensor(EVENT), ties=ties)
    assert shifted.item() == pytest.approx(expected, rel=1e-8)  # invariant to a constant, stable at large risk


def test_efron_cox_fit_matches_scikit_survival():
    from sksurv.datasets import load_veterans_lung_cancer
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    x_frame, y = load_veterans_lung_cancer()  # days: many tied death times
    x = x_frame[["Age_in_years", "Karnofsky_score", "Months_from_Diagnosis"]].to_numpy(float)
    x = (x - x.mean(0)) / x.std(0)
    reference = CoxPHSurvivalAnalysis(ties="efron", alpha=0.0).fit(x, y).coef_
    beta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    xt, t, e = torch.tensor(x), torch.tensor(y["Survival_in_days"].copy()), torch.tensor(y["Status"].copy())
    opt = torch.optim.LBFGS([beta], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = cox_partial_nll(xt @ beta, t, e, ties="efron")
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(beta.detach().numpy(), reference, atol=1e-4)
    breslow = CoxPHSurvivalAnalysis(ties="breslow", alpha=0.0).fit(x, y).coef_
    assert np.abs(breslow - reference).max() > 1e-3  # the ties really matter on this cohort


def test_discrete_nll_by_hand():
    logits = torch.tensor([[0.2, -1.0, 0.5, 1.5], [-0.3, 0.4, -2.0, 0.0], [1.0, 1.0, -1.0, 0.3]],
                          dtype=torch.float64)
    bins = torch.tensor([2, 0, 3])
    censored = torch.tensor([0.0, 1.0, 1.0])
    expected = []
    for row, y, c in zip(logits.tolist(), bins.tolist(), censored.tolist()):
        h = [1 / (1 + math.exp(-v)) for v in row]
        s_before = math.prod(1 - h[j] for j in range(y))  # survived bins 0..y-1
        s_at = s_before * (1 - h[y])
        expected.append(-(1 - c) * (math.log(s_before) + math.log(h[y])) - c * math.log(s_at))
    assert discrete_time_nll(logits, bins, censored).item() == pytest.approx(np.mean(expected), rel=1e-10)
    uncensored_only = np.mean([e * (1 - c) for e, c in zip(expected, censored.tolist())])
    weighted = discrete_time_nll(logits, bins, censored, alpha=0.4).item()
    assert weighted == pytest.approx(0.6 * np.mean(expected) + 0.4 * uncensored_only, rel=1e-10)


def test_alignment_target_carries_no_gradient():
    translated = torch.randn(4, 8, requires_grad=True)
    target = torch.randn(4, 8, requires_grad=True)
    loss = alignment_l1(translated, target)
    grad_translated, grad_target = torch.autograd.grad(loss, [translated, target], allow_unused=True)
    assert grad_target is None
    np.testing.assert_allclose(grad_translated.numpy(), (torch.sign(translated - target) / 32).detach().numpy())
    assert loss.item() == pytest.approx((translated - target).abs().mean().item())
