"""The binary XOR experiment of Symile (Saporta et al., NeurIPS 2024, section 6.1).

``v_1 .. v_{M-1} ~ Bernoulli(0.5)`` and ``v_M = v_1 XOR ... XOR v_{M-1}`` (M = 3: a, b and
c = a XOR b; M = 8 in the paper's 8-variable version). Every pair of variables is
independent, so pairwise CLIP can learn nothing that predicts one variable from the
others, while the joint (higher-order) dependence is exactly what the multilinear inner
product captures. One linear encoder per variable; zero-shot prediction of ``v_1`` from
the others: Symile scores a candidate with ``MIP(r_2, ..., r_M, r_1(candidate))``, CLIP
with the sum of the pairwise dot products.

Missing-data version (paper, section 5): in training, each value is missing with
probability ``missing``; a missing value is replaced by the out-of-support placeholder 0.5
and each encoder also receives the missingness indicator. Tested on complete data.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medmm.losses import clip_scores, multi_modal_clip_loss, symile_loss, symile_scores

MISSING_PLACEHOLDER = 0.5


def xor_data(n: int, n_vars: int, generator: torch.Generator, missing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Values [n, M] (float 0/1, or 0.5 where missing) and missingness flags [n, M]."""
    bits = torch.randint(0, 2, (n, n_vars - 1), generator=generator)
    last = bits.sum(1, keepdim=True) % 2  # XOR of all the others
    values = torch.cat([bits, last], 1).float()
    flags = (torch.rand(values.shape, generator=generator) < missing).float()
    return torch.where(flags > 0, torch.full_like(values, MISSING_PLACEHOLDER), values), flags


class LinearEncoders(nn.Module):
    """One linear map per variable (input: value, plus the missingness flag if used)."""

    def __init__(self, n_vars: int, dim: int, with_flags: bool, log_scale_init: float):
        super().__init__()
        self.with_flags = with_flags
        self.maps = nn.ModuleList(nn.Linear(2 if with_flags else 1, dim) for _ in range(n_vars))
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale_init)))

    def forward(self, values: torch.Tensor, flags: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for m, f in enumerate(self.maps):
            x = values[:, m : m + 1]
            if self.with_flags:
                x = torch.cat([x, flags[:, m : m + 1]], 1)
            out.append(F.normalize(f(x), dim=-1))
        return out


@dataclass
class XorResult:
    loss: str
    n_vars: int
    missing: float
    accuracy: float
    final_train_loss: float


def run_xor(loss: Literal["symile", "clip"], *, n_vars: int = 3, missing: float = 0.0, n_train: int = 10_000,
            n_test: int = 5_000, batch_size: int = 1_000, epochs: int = 50, dim: int = 16, lr: float = 0.1,
            log_scale_init: float = -0.3, negatives: Literal["n", "n_squared"] = "n", seed: int = 0) -> XorResult:
    """Train linear encoders on XOR data and return the zero-shot accuracy of predicting
    ``v_1`` from the other variables on complete test data. Defaults are the paper's
    public example (d 16, AdamW lr 0.1, log-scale init -0.3, batch 1000, 50 epochs)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    values, flags = xor_data(n_train, n_vars, g, missing)
    test_values, test_flags = xor_data(n_test, n_vars, g, 0.0)
    model = LinearEncoders(n_vars, dim, with_flags=missing > 0, log_scale_init=log_scale_init)
    variables = [f"v{m + 1}" for m in range(n_vars)]
    every_pair = list(combinations(variables, 2))  # CLIP's pairwise loss: the mean over all pairs
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=g)
        for start in range(0, n_train - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            reps = model(values[idx], flags[idx])
            if loss == "symile":
                value = symile_loss(reps, model.log_scale, negatives, g)
            else:
                value, _ = multi_modal_clip_loss(dict(zip(variables, reps)), every_pair, model.log_scale)
            opt.zero_grad()
            value.backward()
            opt.step()
            last = float(value.detach())
    with torch.no_grad():
        reps = model(test_values, test_flags)
        candidates = model(torch.tensor([[0.0] * n_vars, [1.0] * n_vars]), torch.zeros(2, n_vars))[0]
        score = symile_scores if loss == "symile" else clip_scores
        pred = score(reps[1:], candidates).argmax(1)
        accuracy = float((pred == test_values[:, 0].long()).float().mean())
    return XorResult(loss, n_vars, missing, accuracy, last)
