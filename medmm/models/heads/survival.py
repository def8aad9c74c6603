"""Survival heads over a feature vector: linear Cox, DeepSurv MLP, discrete-time hazards
(registered as ``cox``, ``deepsurv`` and ``discrete_hazard``)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.models.registry import ModelExample, register_model


class CoxConfig(StrictModel):
    name: Literal["cox"] = Field("cox", description="registry name")


class DeepSurvConfig(StrictModel):
    name: Literal["deepsurv"] = Field("deepsurv", description="registry name")
    hidden: list[int] = Field([32], description="hidden widths of the MLP")
    dropout: float = 0.3


class DiscreteHazardConfig(StrictModel):
    name: Literal["discrete_hazard"] = Field("discrete_hazard", description="registry name")
    hidden: list[int] = Field([32], description="hidden widths of the MLP")
    dropout: float = 0.3
    n_bins: int = Field(4, ge=1, description="time bins, one hazard logit each")


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


EXAMPLE_ROWS, EXAMPLE_FEATURES = 5, 4


def _example_features() -> torch.Tensor:
    return torch.randn(EXAMPLE_ROWS, EXAMPLE_FEATURES, generator=torch.Generator().manual_seed(0))


def tiny_cox() -> ModelExample:
    return ModelExample(CoxConfig(), (_example_features(),), {"output": (EXAMPLE_ROWS,)},
                        {"n_features": EXAMPLE_FEATURES})


def tiny_deepsurv() -> ModelExample:
    return ModelExample(DeepSurvConfig(hidden=[8]), (_example_features(),), {"output": (EXAMPLE_ROWS,)},
                        {"n_features": EXAMPLE_FEATURES})


def tiny_discrete_hazard() -> ModelExample:
    cfg = DiscreteHazardConfig(hidden=[8], n_bins=3)
    return ModelExample(cfg, (_example_features(),), {"output": (EXAMPLE_ROWS, cfg.n_bins)},
                        {"n_features": EXAMPLE_FEATURES})


@register_model("cox", config=CoxConfig, example=tiny_cox)
def build_cox(cfg: CoxConfig, n_features: int = 16) -> CoxHead:
    return CoxHead(n_features)


@register_model("deepsurv", config=DeepSurvConfig, example=tiny_deepsurv)
def build_deepsurv(cfg: DeepSurvConfig, n_features: int = 16) -> DeepSurv:
    return DeepSurv(n_features, cfg.hidden, cfg.dropout)


@register_model("discrete_hazard", config=DiscreteHazardConfig, example=tiny_discrete_hazard)
def build_discrete_hazard(cfg: DiscreteHazardConfig, n_features: int = 16) -> DiscreteHazardHead:
    return DiscreteHazardHead(n_features, cfg.hidden, cfg.dropout, cfg.n_bins)
