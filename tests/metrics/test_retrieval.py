import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalPrecision, RetrievalRecall

from medmm.metrics.retrieval import (
    partner_ranks,
    retrieval_metrics,
    top_k_candidates,
    top_k_indices,
)


def test_hand_example_exact_pair():
    sim = np.array(
        [
            [0.9, 0.1, 0.5],  # partner 0 ranked 1st
            [0.8, 0.3, 0.1],  # partner 1 ranked 2nd
            [0.7, 0.6, 0.2],  # partner 2 ranked 3rd
        ]
    )
    assert partner_ranks(sim).tolist() == [0, 1, 2]
    out = retrieval_metrics(sim, ks=(1, 2, 3))
    assert out == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3), "R@3": 1.0}


def test_ties_broken_by_candidate_index():
    sim = np.ones((3, 3))
    assert partner_ranks(sim).tolist() == [0, 1, 2]
    assert partner_ranks(sim, targets=[2, 2, 0]).tolist() == [2, 2, 0]
    # a tie with a lower-index candidate puts the partner after it
    assert partner_ranks(np.array([[0.5, 0.5]]), targets=[1]).tolist() == [1]


def test_hand_example_label_match():
    sim = np.array(
        [
            [0.1, 0.9, 0.8, 0.2],
            [0.4, 0.3, 0.2, 0.1],
        ]
    )
    q = np.array([[1, 0], [0, 1]])
    c = np.array([[1, 0], [0, 1], [1, 0], [1, 1]])
    # query 0 ranking: c1 (no), c2 (yes), c3 (no), c0 (yes); query 1: c0, c1 (yes), c2, c3
    out = retrieval_metrics(sim, q, c, ks=(1,), label_ks=(1, 2, 5), targets=[0, 1])
    assert out["Hit@1"] == 0.0 and out["P@1"] == 0.0
    assert out["Hit@2"] == 1.0 and out["P@2"] == pytest.approx(0.5)
    assert out["Hit@5"] == 1.0 and out["P@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)  # divisor k
    assert out["R@1"] == 0.0


def test_label_ties_by_index():
    sim = np.zeros((1, 3))
    out = retrieval_metrics(sim, [[1]], [[0], [1], [1]], ks=(1,), label_ks=(1, 2))
    assert out["Hit@1"] == 0.0 and out["Hit@2"] == 1.0 and out["P@2"] == 0.5


def _torchmetrics_reference(sim, relevant, k, metric_cls):
    q, c = sim.shape
    metric = metric_cls(top_k=k)
    # torchmetrics 1.x counts a relevant item with a score <= 0 as not retrieved
    # (target_filtered = where(preds > 0, ...)): shift to positive scores (same rankings)
    sim = sim - sim.min() + 1.0
    indexes = torch.arange(q).repeat_interleave(c)
    return metric(torch.as_tensor(sim).flatten(), torch.as_tensor(relevant).flatten(), indexes=indexes).item()


def test_against_torchmetrics_random_no_ties():
    rng = np.random.default_rng(0)
    n, f = 40, 2
    sim = rng.normal(size=(n, n)) + 1.5 * np.eye(n)  # continuous: no ties
    labels = rng.integers(0, 2, size=(n, f))
    out = retrieval_metrics(torch.tensor(sim), labels, torch.tensor(labels), ks=(1, 5, 10), label_ks=(1, 5))
    pair_rel = np.eye(n, dtype=bool)
    label_rel = (labels[:, None, :] == labels[None, :, :]).all(-1)
    for k in (1, 5, 10):
        assert out[f"R@{k}"] == pytest.approx(_torchmetrics_reference(sim, pair_rel, k, RetrievalRecall), abs=1e-6)
    for k in (1, 5):
        assert out[f"Hit@{k}"] == pytest.approx(_torchmetrics_reference(sim, label_rel, k, RetrievalHitRate), abs=1e-6)
        assert out[f"P@{k}"] == pytest.approx(_torchmetrics_reference(sim, label_rel, k, RetrievalPrecision), abs=1e-6)


def test_rectangular_with_targets_against_torchmetrics():
    rng = np.random.default_rng(1)
    q, c = 15, 30
    sim = rng.normal(size=(q, c))
    targets = rng.permutation(c)[:q]
    rel = np.zeros((q, c), dtype=bool)
    rel[np.arange(q), targets] = True
    out = retrieval_metrics(sim, targets=targets, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert out[f"R@{k}"] == pytest.approx(_torchmetrics_reference(sim, rel, k, RetrievalRecall), abs=1e-6)


def test_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="targets"):
        retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(np.zeros((2, 2)), query_labels=np.zeros((2, 1)))


@pytest.mark.parametrize("k", [1, 3, 5, 12])
def test_top_k_indices_equals_a_stable_full_sort(k):
    """Partition-based top-k against numpy's stable argsort, on scores with many exact ties
    (rounded to one decimal), with -0.0 beside 0.0, and on a constant matrix."""
    rng = np.random.default_rng(k)
    tied = np.round(rng.normal(size=(40, 12)), 1)
    tied[:, 3] = -0.0
    tied[:, 7] = 0.0
    for sim in (tied, rng.normal(size=(7, 12)), np.ones((3, 12))):
        expected = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k_indices(sim, k), expected)


@pytest.mark.parametrize("k", [1, 5, 65])
def test_top_k_indices_on_long_rows_equals_a_stable_full_sort(k):
    """Rows long enough for the group-maxima prefilter (>= 512 columns, not a multiple of
    the group count), float32, with heavy ties, a constant row and a row whose top scores
    all sit in one group."""
    rng = np.random.default_rng(k)
    sim = np.round(rng.normal(size=(30, 1300)), 1).astype(np.float32)
    sim[0] = 0.25
    sim[1, ::256] = 9.0
    sim[2, -3:] = 7.0  # the tail beyond whole groups
    expected = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_k_indices(sim, k), expected)


def test_top_k_candidates_hold_every_entry_at_or_above_the_k_th():
    rng = np.random.default_rng(3)
    sim = np.round(rng.normal(size=(20, 2000)), 2)
    columns, values = top_k_candidates(sim, 10)
    assert columns.shape[1] < sim.shape[1]  # the prefilter did drop columns
    kth = -np.partition(-sim, 9, axis=1)[:, 9]
    for row, cols, vals in zip(range(len(sim)), columns, values):
        real = cols >= 0
        np.testing.assert_array_equal(cols[real], np.flatnonzero(sim[row] >= sim[row][cols[real]].min()))
        assert set(np.flatnonzero(sim[row] >= kth[row])) <= set(cols[real])
        np.testing.assert_array_equal(vals[real], sim[row, cols[real]])
        assert np.all(np.isneginf(vals[~real]))
