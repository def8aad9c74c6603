"""Survival heads over a feature vector: linear Cox, DeepSurv MLP, discrete-time hazards."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class CoxHead(nn.Module):
    """Cox proportional hazards: log-risk = beta . x (no intercept: it cancels in the partial likelihood)."""

    kind = "cox"

    def __init__(self, in_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class DeepSurv(nn.Module):
    """DeepSurv (Katzman et al. 2018): an MLP log-risk trained with the Cox partial likelihood."""

    kind = "cox"

    def __init__(self, in_dim: int, hidden: list[int], dropout: float):
        super().__init__()
        self.net = mlp(in_dim, hidden, 1, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class DiscreteHazardHead(nn.Module):
    """Logits of the hazard in each of ``n_bins`` time bins (MCAT / CMTA output layer)."""

    kind = "discrete"

    def __init__(self, in_dim: int, hidden: list[int], dropout: float, n_bins: int):
        super().__init__()
        self.net = mlp(in_dim, hidden, n_bins, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def discrete_survival(logits: torch.Tensor) -> torch.Tensor:
    """S(k) = prod_{j<=k} (1 - sigmoid(logit_j)): survival past the end of each bin."""
    return torch.cumprod(1 - torch.sigmoid(logits), dim=-1)


def discrete_risk(logits: torch.Tensor) -> torch.Tensor:
    """CMTA's risk score: minus the sum of the survival curve (higher = earlier death)."""
    return -discrete_survival(logits).sum(-1)
