"""Projection head into the shared embedding space (MoRE: Linear+BN -> ReLU -> Linear+BN)."""

from __future__ import annotations

from torch import nn


def projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim, bias=False),
        nn.BatchNorm1d(out_dim),
    )
