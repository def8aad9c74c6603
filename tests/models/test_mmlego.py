"""MM-Lego: the merge against hand computations, shapes, gradients, and that merging trains nothing."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from medmm.models.mmlego import (
    LegoBlock,
    LegoFuse,
    LegoMerge,
    merge_heads,
    merge_states,
    pooled_features,
    slerp,
    to_frequency,
    to_signal,
)
from medmm.models.registry import create_model, model_example


def np_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Shoemake's slerp of two flat vectors, written out independently."""
    cos = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
    omega = math.acos(min(1.0, max(-1.0, cos)))
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def test_merge_is_harmonic_mean_of_magnitudes_and_mean_phase_by_hand():
    # |a| = 2, |b| = 6: harmonic mean 2*2*6 / (2+6) = 3; phases 0.2, 0.6 -> 0.4.
    # |a| = 1 at pi - 0.1, |b| = 4 at -pi + 0.3: harmonic mean 1.6; the phases are 0.4 apart
    # across the branch cut, their mean is pi + 0.1 = -pi + 0.1 (not their arithmetic mean 0.1).
    a = torch.tensor([[[2 * np.exp(0.2j), np.exp(1j * (np.pi - 0.1))]]], dtype=torch.complex64)
    b = torch.tensor([[[6 * np.exp(0.6j), 4 * np.exp(1j * (-np.pi + 0.3))]]], dtype=torch.complex64)
    merged = merge_states([a, b]).numpy()[0, 0]
    np.testing.assert_allclose(np.abs(merged), [3.0, 1.6], rtol=1e-5)
    np.testing.assert_allclose(np.angle(merged), [0.4, -np.pi + 0.1], atol=1e-5)


def test_weighted_merge_of_three_states_matches_numpy():
    g = np.random.default_rng(0)
    states = [g.normal(size=(2, 3, 4)) + 1j * g.normal(size=(2, 3, 4)) for _ in range(3)]
    w = np.array([1.0, 2.0, 5.0])
    w = w / w.sum()
    magnitude = 1.0 / sum(wk / np.abs(s) for wk, s in zip(w, states))
    phase = np.angle(sum(wk * np.exp(1j * np.angle(s)) for wk, s in zip(w, states)))
    merged = merge_states([torch.from_numpy(s) for s in states], [1.0, 2.0, 5.0]).numpy()
    np.testing.assert_allclose(merged, magnitude * np.exp(1j * phase), rtol=1e-10, atol=1e-12)
    # a zero magnitude anywhere gives zero there, not NaN
    zero = merge_states([torch.zeros(1, 1, 2, dtype=torch.complex64), torch.ones(1, 1, 2, dtype=torch.complex64)])
    assert torch.equal(zero.abs(), torch.zeros(1, 1, 2))


def test_slerp_by_hand_and_against_numpy():
    # unit vectors 90 degrees apart: the midpoint lies on the circle at 45 degrees
    out = slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5)
    torch.testing.assert_close(out, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    # norms 2 and 4: sin(pi/4) / sin(pi/2) * (a + b)
    out = slerp(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0]), 0.5)
    torch.testing.assert_close(out, math.sin(math.pi / 4) * torch.tensor([2.0, 4.0]))
    g = np.random.default_rng(1)
    a, b = g.normal(size=(3, 5)), g.normal(size=(3, 5))
    for t in (0.0, 0.3, 0.8, 1.0):
        np.testing.assert_allclose(slerp(torch.from_numpy(a), torch.from_numpy(b), t).numpy(), np_slerp(a, b, t),
                                   atol=1e-10)
    # parallel tensors (and a zero one): linear interpolation, never NaN
    torch.testing.assert_close(slerp(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0]), 0.5), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(slerp(torch.zeros(2), torch.tensor([2.0, 4.0]), 0.25), torch.tensor([0.5, 1.0]))


def test_heads_merge_by_slerp_of_each_parameter():
    torch.manual_seed(0)
    h1, h2 = (nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 3)) for _ in range(2))
    with torch.no_grad():
        h1[0].weight.mul_(2.0)
        h2[0].bias.normal_()
    merged = merge_heads([h1, h2], [0.3, 0.7])
    numpy = lambda p: p.detach().double().numpy()  # noqa: E731
    for name in ("weight", "bias"):  # the linear layer: random tensors, slerp
        np.testing.assert_allclose(numpy(getattr(merged[1], name)),
                                   np_slerp(numpy(getattr(h1[1], name)), numpy(getattr(h2[1], name)), 0.7), rtol=1e-5)
    # LayerNorm scale 2 * ones vs ones is parallel, bias zeros vs random has a zero side: both linear
    np.testing.assert_allclose(numpy(merged[0].weight), np.full(6, 2.0 + 0.7 * (1.0 - 2.0)), rtol=1e-6)
    np.testing.assert_allclose(numpy(merged[0].bias), 0.7 * numpy(h2[0].bias), rtol=1e-6)
    assert merged[1].weight is not h1[1].weight  # a new head; the blocks' heads are untouched


def _blocks(seed: int = 0, latents: int = 4, channels: int = 8) -> tuple[LegoBlock, LegoBlock]:
    torch.manual_seed(seed)
    genes = nn.Sequential(nn.Linear(6, 10), nn.ELU())  # an outside encoder giving [B, D]: one token
    return (LegoBlock(8, 3, latents, channels, depth=2, heads=2),
            LegoBlock(10, 3, latents, channels, depth=2, heads=2, encoder=genes))


def _inputs(n: int = 5):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(n, 7, 8, generator=g), torch.randn(n, 6, generator=g)]


def test_block_state_shape_and_frequency_round_trip():
    tiles, genes = _blocks()
    x = _inputs()
    for block, xi in ((tiles, x[0]), (genes, x[1])):
        state = block.state(xi)
        assert state.shape == (5, 4, 8) and state.is_complex()
        assert block(xi).shape == (5, 3)
    z = torch.randn(2, 4, 8)
    torch.testing.assert_close(to_signal(to_frequency(z)), z / z.norm(dim=-1, keepdim=True))
    # Parseval: every latent row of the state has norm sqrt(C) (unit-norm rows before the FFT)
    torch.testing.assert_close(to_frequency(z).abs().pow(2).sum(-1), torch.full((2, 4), 8.0))


def test_gradient_reaches_latent_encoder_attention_and_head():
    _, genes = _blocks()
    loss = genes(_inputs()[1]).pow(2).sum()
    loss.backward()
    for name, p in genes.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert genes.latent.grad.abs().sum() > 0
    assert genes.tokens.encoder[0].weight.grad.abs().sum() > 0
    assert genes.layers[0].attn.in_proj_weight.grad.abs().sum() > 0
    assert genes.head[1].weight.grad.abs().sum() > 0


def test_merge_equals_the_hand_merge_of_block_states_and_trains_nothing():
    tiles, genes = _blocks()
    before = [copy.deepcopy(b.state_dict()) for b in (tiles, genes)]
    merge = LegoMerge([tiles, genes], [0.4, 0.6]).eval()
    x = _inputs()
    with torch.no_grad():
        out = merge(x)
        s1, s2 = tiles.eval().state(x[0]).numpy(), genes.eval().state(x[1]).numpy()
    magnitude = 1.0 / (0.4 / np.abs(s1) + 0.6 / np.abs(s2))
    phase = np.angle(0.4 * np.exp(1j * np.angle(s1)) + 0.6 * np.exp(1j * np.angle(s2)))
    pooled = pooled_features(torch.from_numpy(magnitude * np.exp(1j * phase)).to(torch.complex64))
    torch.testing.assert_close(out, merge.head(pooled))
    for block, state in zip((tiles, genes), before):  # merging changed no weight of the blocks
        for k, v in block.state_dict().items():
            torch.testing.assert_close(v, state[k])
    # each block reads only its own modality: unpaired inputs are enough, a missing one is left out
    torch.testing.assert_close(merge([x[0], None]), merge.head(pooled_features(tiles.state(x[0]))))


@pytest.mark.parametrize("mode", ["stack", "weave"])
def test_fuse_runs_both_modalities_and_backpropagates_into_both_blocks(mode):
    tiles, genes = _blocks()
    fuse = LegoFuse([tiles, genes], mode)
    out = fuse(_inputs())
    assert out.shape == (5, 3)
    out.sum().backward()
    assert tiles.latent.grad.abs().sum() > 0  # the first block's latent starts the chain
    assert genes.tokens.encoder[0].weight.grad.abs().sum() > 0
    merged = merge_heads([tiles.head, genes.head])
    for (_, p), (_, q) in zip(fuse.head.named_parameters(), merged.named_parameters()):
        torch.testing.assert_close(p, q)  # the fused head starts as the slerp merge


def test_blocks_of_different_latent_shapes_are_refused():
    a = LegoBlock(8, 3, latents=4, channels=8, heads=2)
    b = LegoBlock(8, 3, latents=5, channels=8, heads=2)
    with pytest.raises(ValueError, match="one latent shape"):
        LegoMerge([a, b])
    with pytest.raises(ValueError, match="one latent shape"):
        LegoFuse([a, b])


def test_registered_example_builds_a_fuse_of_fresh_blocks():
    example = model_example("mmlego")
    model = create_model("mmlego", example.config, **example.build_kwargs)
    assert isinstance(model, LegoFuse) and len(model.blocks) == 2
    assert model(*example.inputs).shape == example.output_shapes["output"]
