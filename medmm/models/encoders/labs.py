"""Labs encoder (Symile-MIMIC, Saporta et al. 2024): each lab value mapped to its
training-set percentile, concatenated with its missingness flag, into an MLP that ends in
a LayerNorm (input [B, 2 * n_labs]: percentiles then flags; see medmm.data.labs_percentiles)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel


class LabsEncoderConfig(StrictModel):
    """Symile-MIMIC's labs encoder: training-set percentiles + missingness flags into an MLP."""

    hidden: list[int] = Field([256, 1024], description="MLP hidden widths (Symile-MIMIC: 256, 1024)")


class LabsMLP(nn.Module):
    def __init__(self, cfg: LabsEncoderConfig, n_labs: int):
        super().__init__()
        widths = [2 * n_labs, *cfg.hidden]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(cin, cout), nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.LayerNorm(widths[-1]))
        self.n_labs, self.out_dim = n_labs, widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 2 * self.n_labs:
            raise ValueError(f"labs input has {x.shape[-1]} columns, expected {2 * self.n_labs} "
                             f"(percentile and missingness flag of {self.n_labs} labs)")
        return self.mlp(x)


def build_labs_encoder(cfg: LabsEncoderConfig, n_labs: int) -> nn.Module:
    return LabsMLP(cfg, n_labs)
