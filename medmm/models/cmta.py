"""CMTA (Zhou & Chen, "Cross-Modal Translation and Alignment for Survival Analysis",
ICCV 2023), reimplemented from the paper's description:

- pathology encoder over a bag of tile features: two Linear+ReLU+Dropout layers, then a
  TransMIL-style encoder (CLS token, attention, PPEG positional convs, attention);
- genomics encoder over the six functional gene groups: one self-normalising network (SNN:
  Linear + ELU + AlphaDropout, twice) per group gives one token per group, then a CLS +
  two attention layers;
- translation each way: pathology tokens attend to genomics tokens (single head), a
  decoder turns the result into P^, the pathology representation predicted from genomics;
  and the reverse for G^;
- L1 alignment of P^ to P and G^ to G with stop-gradient targets (medmm.losses.survival);
- fusion concat((P+P^)/2, (G+G^)/2) -> MLP -> hazard logits over the time bins.

Deviation, stated: exact softmax attention (torch's TransformerEncoderLayer) replaces the
Nystrom approximation; the latter only saves memory on bags of thousands of tiles, and
medmm's bags here are at most a few hundred.

``fusion`` also gives the comparison models of the same backbone: ``concat`` (P, G
concatenated, no translation), ``pathology`` (P only) and ``genomics`` (G only).
Registered as ``cmta``; the variants are its ``fusion`` setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.models.registry import ModelExample, register_model

Fusion = Literal["cmta", "concat", "pathology", "genomics"]


class CMTAConfig(StrictModel):
    name: Literal["cmta"] = Field("cmta", description="registry name")
    fusion: Fusion = Field("cmta", description="cmta (translation + alignment), or the comparison models concat, "
                                               "pathology (P only), genomics (G only)")
    dim: int = Field(64, description="token width")
    heads: int = Field(4, description="attention heads")
    dropout: float = 0.25
    n_bins: int = Field(4, ge=1, description="discrete-time bins, one hazard logit each")


def _attention_layer(dim: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
                                      norm_first=True)


class PPEG(nn.Module):
    """Pyramid position encoding generator of TransMIL (Shao et al. 2021): depthwise convs of
    kernel 7, 5 and 3 over the tokens laid out on a square (padded by wrapping)."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls, x = tokens[:, :1], tokens[:, 1:]
        b, n, d = x.shape
        side = math.ceil(math.sqrt(n))
        padded = torch.cat([x, x[:, : side * side - n]], dim=1) if side * side > n else x
        grid = padded.transpose(1, 2).reshape(b, d, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        x = grid.flatten(2).transpose(1, 2)[:, :n]
        return torch.cat([cls, x], dim=1)


class PathologyEncoder(nn.Module):
    def __init__(self, in_dim: int, dim: int, heads: int, dropout: float):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout),
                                   nn.Linear(2 * dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = _attention_layer(dim, heads, dropout)
        self.ppeg = PPEG(dim)
        self.layer2 = _attention_layer(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(bag)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        x = self.norm(self.layer2(self.ppeg(self.layer1(x))))
        return x[:, 0], x[:, 1:]


def snn(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """Self-normalising network (Klambauer et al. 2017) with LeCun-normal init."""
    net = nn.Sequential(nn.Linear(in_dim, 2 * dim), nn.ELU(), nn.AlphaDropout(dropout),
                        nn.Linear(2 * dim, dim), nn.ELU(), nn.AlphaDropout(dropout))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    return net


class GenomicsEncoder(nn.Module):
    def __init__(self, group_sizes: list[int], dim: int, heads: int, dropout: float):
        super().__init__()
        self.groups = nn.ModuleList(snn(n, dim, dropout) for n in group_sizes)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layers = nn.Sequential(_attention_layer(dim, heads, dropout), _attention_layer(dim, heads, dropout))
        self.norm = nn.LayerNorm(dim)

    def forward(self, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack([net(g) for net, g in zip(self.groups, groups)], dim=1)
        x = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        x = self.norm(self.layers(x))
        return x[:, 0], x[:, 1:]


class Translator(nn.Module):
    """Tokens of one modality attend (single head) to the other's; a decoder with its own
    CLS reads the result out as the translated representation."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 1, dropout=dropout, batch_first=True)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.decoder = _attention_layer(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query_tokens: torch.Tensor, source_tokens: torch.Tensor) -> torch.Tensor:
        translated, _ = self.attn(query_tokens, source_tokens, source_tokens, need_weights=False)
        x = torch.cat([self.cls.expand(len(translated), -1, -1), translated], dim=1)
        return self.norm(self.decoder(x))[:, 0]


class CMTA(nn.Module):
    kind = "discrete"

    def __init__(self, path_dim: int, group_sizes: list[int], dim: int = 64, heads: int = 4, dropout: float = 0.25,
                 n_bins: int = 4, fusion: Fusion = "cmta"):
        super().__init__()
        self.fusion = fusion
        self.path = PathologyEncoder(path_dim, dim, heads, dropout) if fusion != "genomics" else None
        self.genomics = GenomicsEncoder(group_sizes, dim, heads, dropout) if fusion != "pathology" else None
        if fusion == "cmta":
            self.path_from_genomics = Translator(dim, heads, dropout)  # -> P^
            self.genomics_from_path = Translator(dim, heads, dropout)  # -> G^
        in_dim = 2 * dim if fusion in ("cmta", "concat") else dim
        self.head = nn.Sequential(nn.Linear(in_dim, 4 * dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(4 * dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(2 * dim, n_bins))

    def forward(self, bag: torch.Tensor | None, groups: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.path is not None:
            out["P"], path_tokens = self.path(bag)
        if self.genomics is not None:
            out["G"], gene_tokens = self.genomics(groups)
        if self.fusion == "cmta":
            out["P_hat"] = self.path_from_genomics(path_tokens, gene_tokens)
            out["G_hat"] = self.genomics_from_path(gene_tokens, path_tokens)
            fused = torch.cat([(out["P"] + out["P_hat"]) / 2, (out["G"] + out["G_hat"]) / 2], dim=-1)
        elif self.fusion == "concat":
            fused = torch.cat([out["P"], out["G"]], dim=-1)
        else:
            fused = out["P"] if self.fusion == "pathology" else out["G"]
        out["logits"] = self.head(fused)
        return out


def tiny_cmta() -> ModelExample:
    """Two patients, bags of five 8-d tiles and six small gene groups."""
    n, tiles, tile_dim, groups = 2, 5, 8, [3, 4, 2, 5, 3, 2]
    cfg = CMTAConfig(dim=8, heads=2, n_bins=3)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(n, tiles, tile_dim, generator=g), [torch.randn(n, k, generator=g) for k in groups])
    shapes = {"P": (n, cfg.dim), "G": (n, cfg.dim), "P_hat": (n, cfg.dim), "G_hat": (n, cfg.dim),
              "logits": (n, cfg.n_bins)}
    return ModelExample(cfg, inputs, shapes, {"tile_dim": tile_dim, "group_sizes": groups})


@register_model("cmta", config=CMTAConfig, example=tiny_cmta)
def build_cmta(cfg: CMTAConfig, tile_dim: int = 64, group_sizes: Sequence[int] = (8,) * 6) -> CMTA:
    """``tile_dim``: width of a tile feature; ``group_sizes``: genes in each gene group."""
    return CMTA(tile_dim, list(group_sizes), dim=cfg.dim, heads=cfg.heads, dropout=cfg.dropout, n_bins=cfg.n_bins,
                fusion=cfg.fusion)
