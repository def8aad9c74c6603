"""Symile loss and scores against explicit pure-Python loops on fixed inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from medmm.losses.contrastive import clip_loss
from medmm.losses.symile import clip_scores, mip, symile_logits, symile_loss, symile_scores


def _unit(x):
    return F.normalize(x, dim=-1)


def _reps(m=3, n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [_unit(torch.randn(n, d, generator=g, dtype=torch.float64)) for _ in range(m)]


def _mip(vectors):
    return sum(math.prod(v[k] for v in vectors) for k in range(len(vectors[0])))


def _ce(row, target):
    return -(row[target] - math.log(sum(math.exp(z) for z in row)))


def _loop_loss_n(reps, scale, perms_per_anchor):
    """O(N) Symile by hand: anchor i's row j is MIP(x_i, y_{p(j)}, z_{q(j)}), diagonal = positive."""
    reps = [r.tolist() for r in reps]
    n, total = len(reps[0]), 0.0
    for a, perms in zip(range(len(reps)), perms_per_anchor):
        others = [r for j, r in enumerate(reps) if j != a]
        for i in range(n):
            row = []
            for j in range(n):
                if i == j:
                    row.append(scale * _mip([reps[a][i]] + [o[i] for o in others]))
                else:
                    row.append(scale * _mip([reps[a][i]] + [o[p[j]] for o, p in zip(others, perms)]))
            total += _ce(row, i) / n
    return total / len(reps)


def _loop_loss_n_squared(reps, scale):
    """O(N^2) Symile by hand: every tuple of non-anchor rows is a candidate."""
    reps = [r.tolist() for r in reps]
    n, total = len(reps[0]), 0.0
    for a in range(len(reps)):
        others = [r for j, r in enumerate(reps) if j != a]
        tuples = list(itertools.product(range(n), repeat=len(others)))
        for i in range(n):
            row = [scale * _mip([reps[a][i]] + [o[t] for o, t in zip(others, tup)]) for tup in tuples]
            total += _ce(row, tuples.index((i,) * len(others))) / n
    return total / len(reps)


def test_mip_is_the_sum_of_elementwise_products():
    a, b, c = _reps()
    want = [_mip([a[i].tolist(), b[i].tolist(), c[i].tolist()]) for i in range(5)]
    assert mip(a, b, c).tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("m", [3, 4])
def test_o_n_loss_matches_hand_loop(m):
    reps = _reps(m=m, n=5)
    seed = 7
    got = symile_loss(reps, math.log(3.0), "n", torch.Generator().manual_seed(seed)).item()
    g = torch.Generator().manual_seed(seed)  # the same shuffles, drawn in the same order
    perms = [[torch.randperm(5, generator=g).tolist() for _ in range(m - 1)] for _ in range(m)]
    assert got == pytest.approx(_loop_loss_n(reps, 3.0, perms), rel=1e-6)


@pytest.mark.parametrize("m", [3, 4])
def test_o_n_squared_loss_matches_hand_loop(m):
    reps = _reps(m=m, n=4, seed=1)
    got = symile_loss(reps, math.log(2.5), "n_squared").item()
    assert got == pytest.approx(_loop_loss_n_squared(reps, 2.5), rel=1e-6)


def test_diagonal_holds_the_positives_and_columns_are_shuffled_products():
    x, y, z = _reps(n=6, seed=2)
    perms = [torch.tensor([2, 0, 1, 5, 3, 4]), torch.tensor([1, 2, 3, 4, 5, 0])]
    logits, target = symile_logits(x, [y, z], "n", perms=perms)
    assert target.tolist() == list(range(6))
    for i in range(6):
        for j in range(6):
            want = _mip([x[i].tolist(), y[i].tolist(), z[i].tolist()]) if i == j else \
                _mip([x[i].tolist(), y[perms[0][j]].tolist(), z[perms[1][j]].tolist()])
            assert logits[i, j].item() == pytest.approx(want, rel=1e-12)


def test_two_modalities_reduce_to_clip_loss():
    a, b = _reps(m=2, n=6, seed=3)
    assert symile_loss([a, b], 1.5, "n_squared").item() == pytest.approx(clip_loss(a, b, 1.5).item(), rel=1e-6)


def test_gradients_flow_to_every_modality_and_the_scale():
    reps = [r.clone().requires_grad_(True) for r in _reps()]
    scale = torch.tensor(1.0, requires_grad=True)
    symile_loss(reps, scale, "n", torch.Generator().manual_seed(0)).backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in reps)
    assert scale.grad is not None and scale.grad != 0


def test_zero_shot_scores_match_hand_loop():
    b, c = _reps(m=2, n=3, seed=4)
    cand = _reps(m=1, n=2, seed=5)[0]
    got = symile_scores([b, c], cand)
    for q in range(3):
        for k in range(2):
            assert got[q, k].item() == pytest.approx(_mip([b[q].tolist(), c[q].tolist(), cand[k].tolist()]))
            pair = sum(x * y for x, y in zip(b[q].tolist(), cand[k].tolist())) + \
                sum(x * y for x, y in zip(c[q].tolist(), cand[k].tolist()))
            assert clip_scores([b, c], cand)[q, k].item() == pytest.approx(pair)


def test_bad_inputs_raise():
    a, b = _reps(m=2)
    with pytest.raises(ValueError, match="at least two"):
        symile_loss([a], 1.0)
    with pytest.raises(ValueError, match="equally shaped"):
        symile_loss([a, b[:3]], 1.0)
    with pytest.raises(ValueError, match="negatives"):
        symile_loss([a, b], 1.0, "all")
