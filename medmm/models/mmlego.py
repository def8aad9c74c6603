"""MM-Lego (Hemker et al., "Multimodal Lego: Model merging and fine-tuning across topologies
and modalities in biomedicine", ICLR 2025), reimplemented from the paper's description.

- :class:`LegoBlock` wraps any unimodal encoder: the encoder's output tokens ``[B, T, D]``
  (or features ``[B, D]``, read as one token) update a learned latent ``[L, C]`` by a few
  Perceiver-style cross-attention layers. The block's state is that latent held in the
  frequency domain: the FFT of the (per-row normalised) latent along its channel axis C, a
  complex ``[B, L, C]``. Every block shares one latent shape whatever its modality, which is
  what lets blocks be merged or stacked. A task head reads the state: the real and
  imaginary parts, mean-pooled over the L latents.
- :class:`LegoMerge` combines separately trained blocks without paired data and without
  training: per latent entry, the harmonic mean of the blocks' magnitudes and the mean of
  their phases (on the circle); the heads by spherical interpolation (slerp) of their
  weights, parameter tensor by parameter tensor.
- :class:`LegoFuse` chains the blocks on one latent (``stack``: block after block;
  ``weave``: layer j of every block before layer j + 1 of any), head initialised by the
  slerp merge, all of it fine-tuned briefly on paired data.

Departures from the reference code (github.com/konst-int-i/mm-lego), each fixing a fault:

- the FFT runs along the channels C of each latent row, and the head pools over the L rows;
  the reference transforms along the L rows and then mean-pools the spectrum over them,
  which returns the signal's first row only (the inverse DFT at 0);
- cross-attention runs on the signal-domain latent, recovered exactly by the inverse FFT of
  the complex state; the reference attends with the real part of the spectrum and glues the
  previous imaginary part back on, so the state mixes two layers;
- tokens are attended in the signal domain: the reference's real part of an FFT along the
  tokens drops half of their content (it is symmetric) and makes a bag of tiles depend on
  the order and padding of its tiles;
- the harmonic mean is the true weighted one, ``1 / sum_k w_k / |z_k|`` (the reference's
  two-block formula carries an extra factor 2 w (1 - w), halving it at w = 1/2); the phase
  mean is the circular mean ``arg sum_k w_k e^{i phi_k}`` (the arithmetic mean of two
  phases near +pi and -pi is 0, the opposite direction); any number of blocks merges;
- slerp is Shoemake's formula, with linear interpolation where the two tensors are
  (anti)parallel or zero (the reference divides by a zero norm there, giving NaN);
- a block never overwrites its learned latent during a forward pass (the reference assigns
  the incoming latent to its parameter when stacked).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.models.registry import ModelExample, register_model

FuseMode = Literal["stack", "weave"]


class LegoConfig(StrictModel):
    name: Literal["mmlego"] = Field("mmlego", description="registry name")
    latents: int = Field(16, ge=1, description="L: rows of the shared latent")
    channels: int = Field(32, ge=2, description="C: channels of the shared latent (the FFT runs along them)")
    depth: int = Field(2, ge=1, description="cross-attention layers per block")
    heads: int = Field(4, ge=1, description="attention heads (must divide channels)")
    dropout: float = Field(0.0, ge=0, lt=1)
    n_outputs: int = Field(4, ge=1, description="task-head outputs (hazard bins, findings)")
    fuse: FuseMode = Field("stack", description="LegoFuse order: stack (block after block) or weave (layer by layer)")
    merge_weights: list[float] | None = Field(None, description="LegoMerge weight of each block (default equal)")


class TokenEncoder(nn.Module):
    """The tokens a LegoBlock attends over: ``encoder(x)`` (identity without one) as
    ``[B, T, D]``, a ``[B, D]`` output read as one token, projected to the latent width."""

    def __init__(self, in_dim: int, channels: int, encoder: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.project = nn.Sequential(nn.Linear(in_dim, channels), nn.LayerNorm(channels))

    def forward(self, x: Any) -> torch.Tensor:
        h = self.encoder(x) if self.encoder is not None else x
        if h.ndim == 2:
            h = h.unsqueeze(1)
        if h.ndim != 3:
            raise ValueError(f"a LegoBlock's encoder must give [B, T, D] tokens or [B, D] features, got "
                             f"{tuple(h.shape)}")
        return self.project(h)


class CrossAttentionLayer(nn.Module):
    """One latent update: the latent rows attend over the tokens, then a feed-forward; both
    pre-norm residual (Perceiver)."""

    def __init__(self, channels: int, heads: int, dropout: float):
        super().__init__()
        self.norm_latent, self.norm_tokens = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, 2 * channels), nn.GELU(),
                                nn.Dropout(dropout), nn.Linear(2 * channels, channels))

    def forward(self, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_tokens(tokens)
        z = z + self.attn(self.norm_latent(z), kv, kv, need_weights=False)[0]
        return z + self.ff(z)


def to_frequency(z: torch.Tensor) -> torch.Tensor:
    """Signal-domain latent ``[B, L, C]`` -> its state: the FFT along C of each row scaled to
    unit norm (so that blocks' magnitudes are comparable when merged)."""
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return torch.fft.fft(z, dim=-1)


def to_signal(state: torch.Tensor) -> torch.Tensor:
    """A state (complex ``[B, L, C]``) back to a real signal-domain latent: the inverse FFT,
    real part (exact for a block's own state, the real signal's spectrum)."""
    return torch.fft.ifft(state, dim=-1).real


def pooled_features(state: torch.Tensor) -> torch.Tensor:
    """What a head reads: real and imaginary parts of the state, mean over the L latents."""
    return torch.cat([state.real, state.imag], dim=-1).mean(dim=1)


def make_head(channels: int, n_outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(2 * channels), nn.Linear(2 * channels, n_outputs))


class LegoBlock(nn.Module):
    """A unimodal encoder wrapped with a learned ``[latents, channels]`` latent (module
    docstring). ``in_dim``: width of the encoder's tokens (of the raw input without one)."""

    def __init__(self, in_dim: int, n_outputs: int, latents: int = 16, channels: int = 32, depth: int = 2,
                 heads: int = 4, dropout: float = 0.0, encoder: nn.Module | None = None):
        super().__init__()
        self.latents, self.channels = latents, channels
        self.tokens = TokenEncoder(in_dim, channels, encoder)
        self.latent = nn.Parameter(torch.randn(latents, channels) * 0.5)
        self.layers = nn.ModuleList(CrossAttentionLayer(channels, heads, dropout) for _ in range(depth))
        self.head = make_head(channels, n_outputs)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.latents, self.channels

    def initial_signal(self, batch: int) -> torch.Tensor:
        return self.latent.unsqueeze(0).expand(batch, -1, -1)

    def state(self, x: Any, state: torch.Tensor | None = None) -> torch.Tensor:
        """The frequency-domain latent after attending over ``x``'s tokens, starting from
        ``state`` (another block's, when stacked) or else from the block's own latent."""
        tokens = self.tokens(x)
        z = self.initial_signal(len(tokens)) if state is None else to_signal(state)
        for layer in self.layers:
            z = layer(z, tokens)
        return to_frequency(z)

    def forward(self, x: Any) -> torch.Tensor:
        return self.head(pooled_features(self.state(x)))


# -- merging ------------------------------------------------------------------------------

def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    w = [1.0 / n] * n if weights is None else [float(v) for v in weights]
    if len(w) != n or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"merge weights must be {n} non-negative numbers with a positive sum, got {weights}")
    total = sum(w)
    return [v / total for v in w]


def merge_states(states: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """The frequency-domain merge: per entry, the weighted harmonic mean of the magnitudes
    ``1 / sum_k w_k / |z_k|`` (0 where any magnitude is 0) and the weighted circular mean of
    the phases ``arg sum_k w_k exp(i arg z_k)``."""
    w = _weights(len(states), weights)
    terms = [(wk, s) for wk, s in zip(w, states) if wk > 0]  # a block of weight 0 takes no part
    magnitude = 1.0 / sum(wk / s.abs() for wk, s in terms)
    direction = sum(wk * torch.exp(1j * s.angle()) for wk, s in terms)
    return torch.polar(magnitude, direction.angle())


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1), the tensors taken as flat
    vectors: ``sin((1-t) W) / sin W * a + sin(t W) / sin W * b`` with W the angle between them;
    linear interpolation where they are (anti)parallel or one is zero."""
    fa, fb = a.flatten().double(), b.flatten().double()
    na, nb = fa.norm(), fb.norm()
    if na < eps or nb < eps:
        return torch.lerp(a, b, t)
    omega = torch.arccos((fa @ fb / (na * nb)).clamp(-1.0, 1.0))
    if torch.sin(omega).abs() < 1e-6:
        return torch.lerp(a, b, t)
    out = (torch.sin((1 - t) * omega) * fa + torch.sin(t * omega) * fb) / torch.sin(omega)
    return out.reshape(a.shape).to(a.dtype)


def merge_heads(heads: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """One head of the same shape whose every parameter is the slerp of the heads' (several
    heads: slerp of the first two, then of the result and the third, ... with weights
    ``w_k / (w_1 + ... + w_k)``, which for two heads is ``slerp(h1, h2, w_2)``)."""
    w = _weights(len(heads), weights)
    merged = copy.deepcopy(heads[0])
    names = [name for name, _ in merged.named_parameters()]
    params = [dict(h.named_parameters()) for h in heads]
    if any(set(p) != set(names) for p in params):
        raise ValueError("heads to merge must have the same parameters")
    with torch.no_grad():
        for name, target in merged.named_parameters():
            value, seen = params[0][name].detach(), w[0]
            for k in range(1, len(heads)):
                seen += w[k]
                value = slerp(value, params[k][name].detach(), w[k] / seen if seen > 0 else 0.0)
            target.copy_(value)
    return merged


def _check_blocks(blocks: Sequence[LegoBlock]) -> None:
    if len(blocks) < 2:
        raise ValueError("MM-Lego combines at least two blocks")
    shapes = {b.latent_shape for b in blocks}
    if len(shapes) != 1:
        raise ValueError(f"blocks must share one latent shape, got {sorted(shapes)}")


class LegoMerge(nn.Module):
    """Separately trained blocks, merged without training (module docstring). ``forward``
    takes one input per block; ``None`` for a missing modality merges the blocks present."""

    def __init__(self, blocks: Sequence[LegoBlock], weights: Sequence[float] | None = None):
        super().__init__()
        _check_blocks(blocks)
        self.blocks = nn.ModuleList(blocks)
        self.weights = _weights(len(blocks), weights)
        self.head = merge_heads([b.head for b in blocks], self.weights)

    def state(self, inputs: Sequence[Any]) -> torch.Tensor:
        present = [(b, x, w) for b, x, w in zip(self.blocks, inputs, self.weights) if x is not None]
        if not present:
            raise ValueError("LegoMerge needs the input of at least one block")
        states = [b.state(x) for b, x, _ in present]
        return states[0] if len(states) == 1 else merge_states(states, [w for *_, w in present])

    def forward(self, inputs: Sequence[Any]) -> torch.Tensor:
        return self.head(pooled_features(self.state(inputs)))


class LegoFuse(nn.Module):
    """Blocks chained on one latent (module docstring), for fine-tuning on paired data.
    ``stack``: the first block's state is the second's starting latent, and so on;
    ``weave``: the blocks' layers alternate (every block needs the same depth)."""

    def __init__(self, blocks: Sequence[LegoBlock], mode: FuseMode = "stack", weights: Sequence[float] | None = None):
        super().__init__()
        _check_blocks(blocks)
        if mode == "weave" and len({len(b.layers) for b in blocks}) != 1:
            raise ValueError("weave needs blocks of equal depth")
        self.mode = mode
        self.blocks = nn.ModuleList(blocks)
        self.head = merge_heads([b.head for b in blocks], weights)

    def state(self, inputs: Sequence[Any]) -> torch.Tensor:
        if len(inputs) != len(self.blocks):
            raise ValueError(f"LegoFuse takes {len(self.blocks)} inputs, got {len(inputs)}")
        if self.mode == "stack":
            state = None
            for block, x in zip(self.blocks, inputs):
                state = block.state(x, state)
            return state
        tokens = [block.tokens(x) for block, x in zip(self.blocks, inputs)]
        z = self.blocks[0].initial_signal(len(tokens[0]))
        for j in range(len(self.blocks[0].layers)):
            for block, t in zip(self.blocks, tokens):
                z = block.layers[j](z, t)
        return to_frequency(z)

    def forward(self, inputs: Sequence[Any]) -> torch.Tensor:
        return self.head(pooled_features(self.state(inputs)))


def build_blocks(cfg: LegoConfig, in_dims: Sequence[int],
                 encoders: Sequence[nn.Module | None] | None = None) -> list[LegoBlock]:
    encoders = list(encoders) if encoders is not None else [None] * len(in_dims)
    return [LegoBlock(d, cfg.n_outputs, cfg.latents, cfg.channels, cfg.depth, cfg.heads, cfg.dropout, encoder=e)
            for d, e in zip(in_dims, encoders)]


def tiny_mmlego() -> ModelExample:
    """Two modalities: a bag of five 8-d tokens and one 6-d feature vector per sample."""
    cfg = LegoConfig(latents=4, channels=8, depth=2, heads=2, n_outputs=3)
    g = torch.Generator().manual_seed(0)
    inputs = ([torch.randn(2, 5, 8, generator=g), torch.randn(2, 6, generator=g)],)
    return ModelExample(cfg, inputs, {"output": (2, 3)}, {"in_dims": (8, 6)})


@register_model("mmlego", config=LegoConfig, example=tiny_mmlego)
def build_mmlego(cfg: LegoConfig, in_dims: Sequence[int] = (32, 32),
                 encoders: Sequence[nn.Module | None] | None = None) -> LegoFuse:
    """A LegoFuse of fresh blocks, one per modality: ``in_dims`` the widths of each modality's
    tokens, ``encoders`` optional unimodal encoders giving them (the end-to-end model; the
    merge and fuse of trained blocks are :class:`LegoMerge` / :class:`LegoFuse`)."""
    return LegoFuse(build_blocks(cfg, in_dims, encoders), cfg.fuse, cfg.merge_weights)


__all__ = ["LegoBlock", "LegoConfig", "LegoFuse", "LegoMerge", "build_blocks", "build_mmlego", "merge_heads",
           "merge_states", "pooled_features", "slerp", "to_frequency", "to_signal"]
