"""medmm's retrieval metrics against torchmetrics.retrieval on fixed inputs with ties, several
relevant candidates per query, queries without any, k above the candidate count and
non-positive scores. Where the two definitions differ, the documented relation is tested
(medmm.metrics.retrieval's module docstring states each one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import (
    RetrievalHitRate,
    RetrievalMRR,
    RetrievalPrecision,
    RetrievalRecall,
)

from medmm.metrics.retrieval import partner_ranks, retrieval_metrics

# 3 queries x 6 candidates, scores on a 0.1 grid (ties within rows), some negative.
SIM = np.array([
    [0.5, 0.5, -0.1, 0.5, 0.2, -0.3],
    [-0.2, -0.2, -0.2, -0.4, -0.4, -0.6],
    [0.3, 0.1, 0.3, 0.3, 0.0, 0.3],
])
QUERY_LABELS = np.array([[1, 0], [0, 1], [1, 1]])
CAND_LABELS = np.array([[0, 0], [1, 0], [0, 1], [1, 0], [0, 1], [1, 0]])
# label match: query 0 has 3 relevant candidates (1, 3, 5), query 1 two (2, 4), query 2 none


def _label_relevance(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (q[:, None, :] == c[None, :, :]).all(-1)


def _index_tie_break(sim: np.ndarray) -> np.ndarray:
    """Scores with medmm's tie rule made explicit (lower candidate index first) and shifted
    above zero: same ranking, no ties, every score positive."""
    gap = np.diff(np.unique(sim)).min() if np.unique(sim).size > 1 else 1.0
    broken = sim - np.arange(sim.shape[1])[None, :] * gap / (2 * sim.shape[1])
    return broken - broken.min() + 1.0


def _tm(metric, sim: np.ndarray, relevant: np.ndarray) -> float:
    q, c = sim.shape
    indexes = torch.arange(q).repeat_interleave(c)
    return metric(torch.as_tensor(sim).flatten(), torch.as_tensor(relevant).flatten(), indexes=indexes).item()


def test_label_match_with_ties_equals_torchmetrics_on_index_tie_broken_scores():
    rel = _label_relevance(QUERY_LABELS, CAND_LABELS)
    assert rel.sum(1).tolist() == [3, 2, 0]
    ks = (1, 2, 3, 4, 6, 8)
    out = retrieval_metrics(SIM, QUERY_LABELS, CAND_LABELS, ks=(), label_ks=ks)
    fixed = _index_tie_break(SIM)
    for k in ks:
        assert out[f"Hit@{k}"] == pytest.approx(_tm(RetrievalHitRate(top_k=k), fixed, rel), abs=1e-6), k
        assert out[f"P@{k}"] == pytest.approx(_tm(RetrievalPrecision(top_k=k), fixed, rel), abs=1e-6), k
    # by hand: query 0 ranks 0, 1, 3 (tied 0.5, by index), 4, 2, 5; query 1 ranks 0, 1, 2, 3, 4, 5
    assert out["Hit@1"] == 0.0 and out["Hit@2"] == pytest.approx(1 / 3) and out["Hit@3"] == pytest.approx(2 / 3)
    assert out["P@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)


def test_exact_pair_recall_and_mrr_with_ties_equal_torchmetrics():
    targets = np.array([3, 4, 5])  # query 0's partner ties with two lower-index candidates
    rel = np.zeros(SIM.shape, dtype=bool)
    rel[np.arange(3), targets] = True
    ranks = partner_ranks(SIM, targets)
    assert ranks.tolist() == [2, 4, 3]  # each partner after its lower-index ties
    fixed = _index_tie_break(SIM)
    out = retrieval_metrics(SIM, ks=(1, 2, 3, 4, 6), label_ks=(), targets=targets)
    for k in (1, 2, 3, 4, 6):
        assert out[f"R@{k}"] == pytest.approx(_tm(RetrievalRecall(top_k=k), fixed, rel), abs=1e-6), k
    mrr = float(np.mean(1.0 / (ranks + 1)))
    assert mrr == pytest.approx(_tm(RetrievalMRR(), fixed, rel), abs=1e-6)


def test_ties_that_do_not_straddle_the_cut_need_no_tie_break():
    """A tie wholly inside or outside the top k cannot change a top-k metric: there
    torchmetrics on the raw (positive) scores agrees, whatever order its sort gives ties."""
    rows = [  # scores, relevance, the cuts k that split no tie
        (np.array([0.9, 0.9, 0.4, 0.4, 0.4, 0.1]), np.array([1, 0, 1, 1, 0, 0], dtype=bool), (2, 5, 6)),
        (np.array([0.7, 0.2, 0.7, 0.5, 0.7, 0.5]), np.array([0, 1, 0, 1, 1, 1], dtype=bool), (3, 5, 6)),
    ]
    for scores, rel, cuts in rows:
        sim, cand = scores[None, :], rel.astype(int)[:, None]  # candidate j matches the query iff relevant
        for k in cuts:
            out = retrieval_metrics(sim, [[1]], cand, ks=(), label_ks=(k,))
            assert out[f"P@{k}"] == pytest.approx(_tm(RetrievalPrecision(top_k=k), sim, rel[None]), abs=1e-6)
            assert out[f"Hit@{k}"] == pytest.approx(_tm(RetrievalHitRate(top_k=k), sim, rel[None]), abs=1e-6)


def test_non_positive_scores_are_ranked_by_medmm_but_dropped_by_torchmetrics_precision_recall_mrr():
    """torchmetrics' precision, recall and MRR count a relevant candidate whose score is <= 0
    as not retrieved (hit rate does not); medmm ranks by score whatever its sign (cosine
    similarities are often negative), so it equals torchmetrics on the scores shifted above 0."""
    sim = np.array([[-0.1, -0.5, -0.9]])  # the partner (candidate 0) ranks first, score negative
    rel = np.array([[True, False, False]])
    out = retrieval_metrics(sim, [[1]], [[1], [0], [0]], ks=(1,), label_ks=(1,), targets=[0])
    assert out == {"R@1": 1.0, "Hit@1": 1.0, "P@1": 1.0}
    assert _tm(RetrievalPrecision(top_k=1), sim, rel) == 0.0
    assert _tm(RetrievalRecall(top_k=1), sim, rel) == 0.0
    assert _tm(RetrievalMRR(), sim, rel) == 0.0
    assert _tm(RetrievalHitRate(top_k=1), sim, rel) == 1.0
    shifted = sim - sim.min() + 1.0
    for cls in (RetrievalPrecision, RetrievalRecall, RetrievalHitRate):
        assert _tm(cls(top_k=1), shifted, rel) == 1.0
    assert _tm(RetrievalMRR(), shifted, rel) == 1.0


def test_precision_divides_by_k_even_past_the_relevant_and_candidate_counts():
    """P@k divides by k: torchmetrics' default (adaptive_k=False). With adaptive_k=True
    torchmetrics divides by min(k, C) instead: P_adaptive@k = P@k * k / min(k, C)."""
    rel = _label_relevance(QUERY_LABELS, CAND_LABELS)
    fixed = _index_tie_break(SIM)
    c = SIM.shape[1]
    for k in (4, 6, 10):  # k above query 0's 3 relevant; 10 above the 6 candidates
        ours = retrieval_metrics(SIM, QUERY_LABELS, CAND_LABELS, ks=(), label_ks=(k,))[f"P@{k}"]
        assert ours == pytest.approx(_tm(RetrievalPrecision(top_k=k), fixed, rel), abs=1e-6)
        adaptive = _tm(RetrievalPrecision(top_k=k, adaptive_k=True), fixed, rel)
        assert ours * k / min(k, c) == pytest.approx(adaptive, abs=1e-6)
    # every relevant candidate retrieved, yet P@6 stays below 1: query 0 holds 3 / 6, query 1 2 / 6
    assert retrieval_metrics(SIM, QUERY_LABELS, CAND_LABELS, ks=(), label_ks=(6,))["P@6"] == pytest.approx((3 / 6 + 2 / 6 + 0) / 3)


def test_query_without_relevant_candidate_scores_zero_as_torchmetrics_default():
    """A query with no relevant candidate counts as 0 (torchmetrics' empty_target_action="neg");
    torchmetrics' "skip" averages over the other queries only."""
    rel = _label_relevance(QUERY_LABELS, CAND_LABELS)
    fixed = _index_tie_break(SIM)
    out = retrieval_metrics(SIM, QUERY_LABELS, CAND_LABELS, ks=(), label_ks=(3,))
    assert out["Hit@3"] == pytest.approx(_tm(RetrievalHitRate(top_k=3, empty_target_action="neg"), fixed, rel))
    skipped = _tm(RetrievalHitRate(top_k=3, empty_target_action="skip"), fixed, rel)
    assert out["Hit@3"] * 3 / 2 == pytest.approx(skipped)  # 3 queries, 2 with a relevant candidate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavily_tied_random_scores_against_torchmetrics(seed):
    """Scores on a coarse grid (most rows hold ties across every cut), 4 label patterns so
    queries have many relevant candidates, rectangular with exact-pair targets."""
    rng = np.random.default_rng(seed)
    q, c = 25, 40
    sim = np.round(rng.normal(size=(q, c)), 0) / 4
    ql, cl = rng.integers(0, 2, size=(q, 2)), rng.integers(0, 2, size=(c, 2))
    targets = rng.permutation(c)[:q]
    ks, label_ks = (1, 3, 5, 10), (1, 3, 5, 10)
    out = retrieval_metrics(sim, ql, cl, ks=ks, label_ks=label_ks, targets=targets)
    fixed = _index_tie_break(sim)
    pair = np.zeros((q, c), dtype=bool)
    pair[np.arange(q), targets] = True
    label = _label_relevance(ql, cl)
    for k in ks:
        assert out[f"R@{k}"] == pytest.approx(_tm(RetrievalRecall(top_k=k), fixed, pair), abs=1e-6)
    for k in label_ks:
        assert out[f"Hit@{k}"] == pytest.approx(_tm(RetrievalHitRate(top_k=k), fixed, label), abs=1e-6)
        assert out[f"P@{k}"] == pytest.approx(_tm(RetrievalPrecision(top_k=k), fixed, label), abs=1e-6)
    ranks = partner_ranks(sim, targets)
    assert float(np.mean(1.0 / (ranks + 1))) == pytest.approx(_tm(RetrievalMRR(), fixed, pair), abs=1e-6)
