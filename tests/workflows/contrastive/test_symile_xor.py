"""The binary XOR replication of Symile (NeurIPS 2024): Symile predicts one variable from
the others, pairwise CLIP cannot (every pair of variables is independent)."""

from __future__ import annotations

import pytest
import torch

from medmm.workflows.contrastive.symile_xor import run_xor, xor_data


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread is several times faster than two contending ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = dict(n_train=4000, n_test=2000, batch_size=200, epochs=10)  # ~2 s each on a quiet core


def test_xor_data_pairs_are_independent_and_the_last_is_the_xor():
    values, flags = xor_data(20000, 3, torch.Generator().manual_seed(0))
    a, b, c = values.T
    assert torch.equal(c, (a + b) % 2) and flags.sum() == 0
    for x, y in ((a, b), (a, c), (b, c)):  # P(x=1, y=1) = 1/4 for every pair
        assert ((x * y).mean().item()) == pytest.approx(0.25, abs=0.015)
    values, flags = xor_data(20000, 8, torch.Generator().manual_seed(0), missing=0.3)
    assert flags.mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.all(values[flags > 0] == 0.5)


def test_symile_solves_xor_and_clip_stays_at_chance():
    symile = run_xor("symile", **FAST)
    clip = run_xor("clip", **FAST)
    assert symile.accuracy >= 0.95, symile
    assert abs(clip.accuracy - 0.5) < 0.05, clip


def test_symile_solves_xor_with_missing_training_data():
    result = run_xor("symile", missing=0.2, **FAST)
    assert result.accuracy >= 0.95, result


@pytest.mark.slow
def test_symile_solves_the_8_variable_xor():
    """v_8 = v_1 XOR ... XOR v_7 (the paper's 8-variable version): Symile >= 0.95, CLIP ~ 0.5."""
    kw = dict(n_vars=8, n_train=2000, n_test=2000, batch_size=250, epochs=30, lr=0.05)
    assert run_xor("symile", **kw).accuracy >= 0.95
    assert abs(run_xor("clip", **kw).accuracy - 0.5) < 0.05
