"""The short-listed P@k over a weight grid equals ranking the full score matrix."""

from functools import partial

import numpy as np
import pytest

from medmm.metrics.retrieval import retrieval_metrics
from medmm.retrieval.shortlist import LabelMatchGrid, leaders


def _combine(first, second, weight, scale):
    return scale * first + weight * second


def _data(seed, queries=120, cands=900):
    """float32 similarities with exact ties (rounded), a candidate term that is large for a
    dense group of candidates far from most queries, labels from 4 patterns."""
    rng = np.random.default_rng(seed)
    first = np.round(rng.uniform(-1, 1, size=(queries, cands)), 2).astype(np.float32)
    second = np.round(rng.gamma(1.0, 1.0, size=cands), 1).astype(np.float32)
    labels = rng.integers(0, 2, size=(queries + cands, 2))
    return first, second, labels[:queries], labels[queries:]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per_query_second", [False, True])
def test_grid_equals_full_ranking_at_every_weight(seed, per_query_second):
    first, second, query_labels, cand_labels = _data(seed)
    if per_query_second:
        second = np.round(np.random.default_rng(seed + 9).normal(size=first.shape), 2).astype(np.float32)
    grid = LabelMatchGrid(first, second, query_labels, cand_labels, k=5, size=16)
    combine = partial(_combine, scale=2.0)
    weights = (0.0, 0.1, 0.5, 2.0, 8.0, -0.5)
    for weight in weights:
        full = combine(first, second if per_query_second else second[None, :], weight)
        expected = retrieval_metrics(full, query_labels, cand_labels, ks=(), label_ks=(5,))["P@5"]
        assert grid.precision(combine, weight, monotone=weight >= 0) == expected
    # the bound settled some rows and sent others to full ranking (the negative weight: all)
    assert len(first) < grid.rows_ranked_in_full < len(first) * len(weights)


def test_a_short_list_covering_the_gallery_ranks_in_full():
    first, second, query_labels, cand_labels = _data(2, queries=10, cands=30)
    grid = LabelMatchGrid(first, second, query_labels, cand_labels, k=40, size=64)
    full = _combine(first, second[None, :], 1.0, 1.0)
    expected = retrieval_metrics(full, query_labels, cand_labels, ks=(), label_ks=(40,))["P@40"]
    assert grid.precision(partial(_combine, scale=1.0), 1.0, monotone=True) == expected


def test_leaders_and_ceiling():
    rng = np.random.default_rng(4)
    values = np.round(rng.normal(size=(50, 1500)), 1)
    top = leaders(values, 20)
    ranked = -np.sort(-values, axis=1)
    np.testing.assert_array_equal(-np.sort(-np.take_along_axis(values, top.columns, axis=1), axis=1), ranked[:, :20])
    np.testing.assert_array_equal(top.ceiling, ranked[:, 20])
    assert leaders(values, 1500).ceiling is None
