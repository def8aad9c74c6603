"""Report encoder: the packaged pretrained all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), or any
local Hugging Face BERT-family folder (``model_path``, loaded offline with a load report:
:func:`medmm.models.encoders.checkpoints.load_hf_model`), adapted with LoRA through peft,
mean-pooled over the attention mask.

MoRE's reference code mean-pools over padding too; here padding never enters the pool.

Speed on CPU: LoRA can be restricted to the top layers (``lora_layers``). The layers
below the first adapted one are then frozen, run without dropout and without autograd,
and their output for a given token sequence never changes, so it is cached
(``cache_frozen_prefix``): after the first epoch only the adapted layers run.
Every layer runs *unpadded*: its position-wise parts (the q / k / v projections with
their LoRA, the attention output, the feed-forward block, ~95 % of a layer's FLOPs) see
only the real tokens, and only the attention itself is padded per sequence (reports
average 65 of 96 tokens). Measured on the 2-core CI CPU, batch 64, one adapted layer with
dropout 0: 0.33 s per training step at 96 tokens, against 0.41-0.47 s padded.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.data.tokenizer import packaged_minilm_path
from medmm.models.encoders.checkpoints import load_hf_model


class TextEncoderConfig(StrictModel):
    name: Literal["minilm_lora"] = "minilm_lora"
    model_path: str | None = Field(
        None, description="local Hugging Face BERT-family folder (weights, config.json and its tokenizer); default: "
                          "the packaged all-MiniLM-L6-v2")
    lora_r: int = Field(8, description="LoRA rank")
    lora_alpha: int = Field(16, description="LoRA alpha")
    lora_dropout: float = 0.1
    lora_targets: list[str] = Field(["query", "value"], description="attention projections adapted by LoRA")
    lora_layers: list[int] | None = Field(
        [5], description="transformer layers that get LoRA (None = all; -1 = the last); layers below stay frozen"
    )
    cache_frozen_prefix: bool = Field(
        True, description="cache hidden states of the frozen layers below the first LoRA layer"
    )
    max_tokens: int = Field(96, description="report truncation length in tokens")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="dropout in the adapted layers (attention weights and hidden states); None keeps the "
                    "pretrained model's. On CPU each mask costs one random draw per element, ~half the "
                    "adapted layer's time at 128 tokens",
    )






def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where ``mask`` is 1 (padding excluded)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class MiniLMLoRATextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        bert, self.load_report = load_hf_model(cfg.model_path or packaged_minilm_path(), what="text encoder")
        n_layers = bert.config.num_hidden_layers
        layers = list(range(n_layers)) if cfg.lora_layers is None else sorted(
            {i + n_layers if -n_layers <= i < 0 else i for i in cfg.lora_layers})
        if not layers or layers[0] < 0 or layers[-1] >= n_layers:
            raise ValueError(f"lora_layers {cfg.lora_layers} outside 0..{n_layers - 1}")
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            layers_to_transform=layers,
            layers_pattern="layer",
        )
        self.peft_model = get_peft_model(bert, lora)  # freezes every non-LoRA weight
        self.prefix_depth = layers[0]
        if cfg.dropout is not None:
            for layer in self.bert.encoder.layer[self.prefix_depth:]:
                for dropout in (layer.attention.self.dropout, layer.attention.output.dropout, layer.output.dropout):
                    dropout.p = cfg.dropout
        self.use_cache = cfg.cache_frozen_prefix and self.prefix_depth > 0
        self._prefix_cache: dict[bytes, torch.Tensor] = {}
        self.out_dim = bert.config.hidden_size

    @property
    def bert(self):
        return self.peft_model.base_model.model

    def train(self, mode: bool = True):
        super().train(mode)
        # The frozen prefix always runs deterministically (its output is cached).
        self.bert.embeddings.eval()
        for layer in self.bert.encoder.layer[: self.prefix_depth]:
            layer.eval()
        return self

    @torch.no_grad()
    def _run_prefix(self, input_ids: torch.Tensor, real: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Embeddings and the frozen layers on the real tokens: [N, D] at flat positions ``index``."""
        batch, length = real.shape
        # Float32 whatever the caller's autocast: a cached sequence must read back the same
        # whether it was first seen in a bf16 training step or a float32 evaluation.
        with torch.autocast(input_ids.device.type, enabled=False):
            hidden = self.bert.embeddings(input_ids=input_ids)
            tokens = hidden.reshape(batch * length, -1).index_select(0, index)
            for layer in self.bert.encoder.layer[: self.prefix_depth]:
                tokens = self._unpadded_layer(layer, tokens, index, (batch, length), real[:, None, None, :])
        return tokens

    def _prefix(self, input_ids: torch.Tensor, real: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output on the real tokens, row after row ([N, D]), from the
        cache where a sequence was seen before."""
        if not self.use_cache:
            return self._run_prefix(input_ids, real, index)
        lengths = real.sum(1).tolist()
        keys = [input_ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self._prefix_cache]
        if missing:
            sub = real[missing]
            fresh = self._run_prefix(input_ids[missing], sub, sub.reshape(-1).nonzero().squeeze(1))
            for i, tokens in zip(missing, fresh.split([lengths[i] for i in missing])):
                self._prefix_cache[keys[i]] = tokens.to("cpu", copy=True)  # not a view of the batch
        return torch.cat([self._prefix_cache[key] for key in keys]).to(input_ids.device)

    def _unpadded_layer(self, layer, tokens: torch.Tensor, index: torch.Tensor, shape: tuple[int, int],
                        key_mask: torch.Tensor) -> torch.Tensor:
        """One BERT layer (post-norm, as transformers' ``BertLayer``) on the real tokens
        ``tokens`` ([N, D], gathered from a [B, L] grid at flat positions ``index``);
        only the attention pads them back to [B, heads, L, head_dim]."""
        attention = layer.attention.self
        batch, length = shape

        def heads(projected: torch.Tensor) -> torch.Tensor:
            grid = projected.new_zeros(batch * length, projected.shape[-1]).index_copy(0, index, projected)
            return grid.view(batch, length, -1, attention.attention_head_size).transpose(1, 2)

        q, k, v = (heads(proj(tokens)) for proj in (attention.query, attention.key, attention.value))
        # On CPU, scaled_dot_product_attention's backward is ~3x slower in bfloat16 than in
        # float32 (measured), while the projections gain from bf16: the attention leaves a CPU autocast.
        with torch.autocast("cpu", enabled=False):
            context = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=key_mask,
                dropout_p=attention.dropout.p if attention.training else 0.0, scale=attention.scaling)
        context = context.transpose(1, 2).reshape(batch * length, -1).index_select(0, index)
        hidden = layer.attention.output(context, tokens)  # dense, dropout, LayerNorm(+ residual)
        return layer.output(layer.intermediate(hidden), hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        real = attention_mask.bool()
        batch, length = real.shape
        if (real[:, 1:] & ~real[:, :-1]).any():
            raise ValueError("the text encoder needs right-padded sequences (real tokens first in each row)")
        index = real.reshape(-1).nonzero().squeeze(1)  # row-major: each row's real tokens in order
        tokens = self._prefix(input_ids, real, index)
        key_mask = real[:, None, None, :]  # every sequence has >= 1 real token ([CLS])
        for layer in self.bert.encoder.layer[self.prefix_depth :]:
            tokens = self._unpadded_layer(layer, tokens, index, (batch, length), key_mask)
        # Mean over each sequence's real tokens (padding never enters the pool).
        sums = tokens.new_zeros(batch, tokens.shape[1]).index_add(
            0, torch.div(index, length, rounding_mode="floor"), tokens)
        return sums / real.sum(1, keepdim=True).clamp_min(1).to(sums.dtype)


def build_text_encoder(cfg: TextEncoderConfig) -> nn.Module:
    return MiniLMLoRATextEncoder(cfg)
