"""ECG encoder (MoRE): a 1-D convolutional tokenizer over the 12 leads followed by a
small transformer; returns the mean of the token outputs concatenated with their max.

It may start from a ``checkpoint``: a medmm pretraining folder (its ``encoders.ecg.*``
weights) or a plain PyTorch state dict (safetensors or weights-only ``torch.load``) whose
keys, after the key map (``checkpoint_prefix`` stripped, ``checkpoint_rename`` prefixes
renamed), are this module's: ``tokenizer.{0,3}`` (convs), ``tokenizer.{1,4}`` (batch norms),
``pos``, ``transformer.layers.<i>.*`` (``nn.TransformerEncoderLayer``), ``norm``. The
architecture is the config's; a tensor of another shape is refused, naming the key."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.models.encoders.checkpoints import (
    freeze_layers,
    keep_frozen_norms_in_eval,
    load_encoder_checkpoint,
)


class ECGEncoderConfig(StrictModel):
    name: Literal["conv_transformer"] = "conv_transformer"
    dim: int = Field(128, description="token width")
    depth: int = Field(2, description="transformer layers")
    heads: int = Field(4, description="attention heads")
    token_stride: int = Field(2, description="stride of the second tokenizer conv: tokens = samples / (5 * stride)")
    dropout: float = Field(0.0, description="transformer dropout (off by default: on CPU its masks cost ~40% of the step)")
    checkpoint: str | None = Field(
        None, description="start from these weights: a medmm pretraining folder or a state-dict file (.safetensors "
                          "/ .pt) for this architecture")
    checkpoint_format: Literal["auto", "medmm", "torch"] = Field(
        "auto", description="medmm (pretraining folder) or torch (state-dict file); auto tells them apart")
    checkpoint_prefix: str | None = Field(
        None, description="state-dict files: keep only keys starting with this prefix and strip it (e.g. 'module.')")
    checkpoint_rename: dict[str, str] = Field(
        {}, description="state-dict files: key prefixes renamed after the prefix is stripped ({old: new})")
    freeze_layers: int = Field(
        0, ge=-1, description="freeze the tokenizer, positions and the first N transformer layers (-1: all)")


class ECGConvTransformer(nn.Module):
    def __init__(self, cfg: ECGEncoderConfig, leads: int = 12, max_tokens: int = 512):
        super().__init__()
        d = cfg.dim
        # 100 Hz input: stride 5 then ``token_stride`` (2: one token per 0.1 s, receptive
        # field ~0.25 s, so a QRS complex spans one or two tokens).
        self.tokenizer = nn.Sequential(
            nn.Conv1d(leads, d // 2, 5, stride=5), nn.BatchNorm1d(d // 2), nn.GELU(),
            nn.Conv1d(d // 2, d, 5, stride=cfg.token_stride, padding=2), nn.BatchNorm1d(d), nn.GELU(),
        )
        self.pos = nn.Parameter(torch.randn(1, max_tokens, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, dropout=cfg.dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out_dim = 2 * d

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:  # frozen layers' batch norms keep their statistics
            keep_frozen_norms_in_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(x).transpose(1, 2)
        if tokens.shape[1] > self.pos.shape[1]:
            raise ValueError(f"ECG too long: {tokens.shape[1]} tokens > {self.pos.shape[1]}")
        # On CPU this small transformer is slower in bfloat16 than in float32 (measured
        # 0.30 vs 0.25 s per batch of 64), so it leaves a CPU bf16 autocast. Disabling the
        # "cpu" autocast does not touch a CUDA one: a GPU run keeps mixed precision.
        with torch.autocast("cpu", enabled=False):
            h = self.norm(self.transformer(tokens.float() + self.pos[:, : tokens.shape[1]]))
        return torch.cat([h.mean(1), h.amax(1)], dim=1)


def build_ecg_encoder(cfg: ECGEncoderConfig) -> nn.Module:
    encoder = ECGConvTransformer(cfg)
    if cfg.checkpoint:
        load_encoder_checkpoint(encoder, cfg, "ecg", "ECG encoder")
    freeze_layers(encoder, cfg.freeze_layers, "model.ecg.freeze_layers")
    return encoder
