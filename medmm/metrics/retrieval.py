"""Cross-modal retrieval metrics from a similarity matrix (numpy; accepts torch tensors).

``sim[i, j]`` is the score of candidate j for query i. Rankings sort candidates by
descending score; **ties are broken by candidate index (lower index ranks first)**, so the
metrics are deterministic. (A constant similarity matrix therefore ranks the partner of
query i at position i, not at random: use :mod:`medmm.metrics.reference_levels` for the
chance level.)

* exact pair: the partner of query i is candidate ``targets[i]`` (default i);
  ``R@k = mean_i 1[rank_i < k]`` with ``rank_i = #{j: s_ij > s_ip} + #{j < p: s_ij = s_ip}``.
* label match: candidate j is relevant to query i iff its label vector equals the
  query's in every finding. ``Hit@k = mean_i 1[any relevant in top k]``,
  ``P@k = mean_i (#relevant in top k) / k`` (divisor k even when k > #candidates, and a
  query without any relevant candidate scores 0: torchmetrics' defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["as_numpy", "row_ids", "partner_ranks", "top_k_indices", "retrieval_metrics"]


def as_numpy(x: Any) -> np.ndarray:
    """torch tensor (any device / dtype, detached) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    return np.asarray(x)


def row_ids(*matrices: np.ndarray) -> list[np.ndarray]:
    """Integer id per row, shared across ``matrices``: equal rows <=> equal ids."""
    mats = [np.asarray(m).reshape(len(m), -1) for m in matrices]
    stacked = np.concatenate(mats, axis=0)
    if stacked.shape[1] == 0:  # no columns: every row is the same (empty) pattern
        inverse = np.zeros(len(stacked), dtype=np.int64)
    else:
        inverse = np.unique(stacked, axis=0, return_inverse=True)[1].reshape(-1)
    return np.split(inverse, np.cumsum([len(m) for m in mats])[:-1])


def _check_sim(sim: Any) -> np.ndarray:
    s = as_numpy(sim).astype(np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"similarity matrix must be 2-D [Q, C] and non-empty, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("similarity matrix contains NaN or inf")
    return s


def partner_ranks(sim: Any, targets: Any = None) -> np.ndarray:
    """0-based rank of each query's partner: ``#{j: s_ij > s_ip} + #{j < p: s_ij = s_ip}``."""
    s = _check_sim(sim)
    q, c = s.shape
    if targets is None:
        if q > c:
            raise ValueError(f"{q} queries but only {c} candidates: pass targets")
        p = np.arange(q)
    else:
        p = as_numpy(targets).astype(np.int64).reshape(-1)
        if p.shape != (q,) or (p < 0).any() or (p >= c).any():
            raise ValueError(f"targets must be {q} candidate indices in [0, {c})")
    sp = s[np.arange(q), p][:, None]
    before = np.arange(c)[None, :] < p[:, None]
    return (s > sp).sum(1) + ((s == sp) & before).sum(1)


def top_k_indices(sim: np.ndarray, k: int) -> np.ndarray:
    """[Q, min(k, C)] column indices of each row's k highest scores in ranking order
    (descending, ties by lower index): ``argsort(-sim, kind="stable")[:, :k]`` in O(Q C)
    instead of O(Q C log C), which matters when a grid search ranks a gallery hundreds of times."""
    q, c = sim.shape
    k = min(int(k), c)
    if k == c:
        return np.argsort(-sim, axis=1, kind="stable")
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th highest score
    above = sim > kth  # fewer than k per row
    tied = sim == kth
    # the tied slots left go to the lowest indices: exactly k columns per row
    take = above | (tied & (np.cumsum(tied, axis=1) <= k - above.sum(1, keepdims=True)))
    cols = np.nonzero(take)[1].reshape(q, k)  # ascending within each row
    order = np.argsort(-np.take_along_axis(sim, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def retrieval_metrics(
    sim: Any,
    query_labels: Any = None,
    cand_labels: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    label_ks: Sequence[int] = (1, 5),
    targets: Any = None,
) -> dict[str, float]:
    """Retrieval metrics for similarity ``sim`` [Q, C] (see module docstring for formulas).

    Returns ``{"R@k": ...}`` for k in ``ks`` and, when both label matrices ([Q, F] and
    [C, F]) are given, ``{"Hit@k": ..., "P@k": ...}`` for k in ``label_ks``.
    """
    s = _check_sim(sim)
    q, c = s.shape
    if any(int(k) < 1 for k in (*ks, *label_ks)):
        raise ValueError("every k must be >= 1")
    ranks = partner_ranks(s, targets)
    out = {f"R@{k}": float(np.mean(ranks < k)) for k in ks}
    if (query_labels is None) != (cand_labels is None):
        raise ValueError("give both query_labels and cand_labels, or neither")
    if query_labels is None or not label_ks:
        return out
    ql, cl = as_numpy(query_labels), as_numpy(cand_labels)
    if len(ql) != q or len(cl) != c or ql.reshape(q, -1).shape[1] != cl.reshape(c, -1).shape[1]:
        raise ValueError(f"labels must be [Q={q}, F] and [C={c}, F]; got {ql.shape} and {cl.shape}")
    qid, cid = row_ids(ql, cl)
    kmax = min(max(label_ks), c)
    order = top_k_indices(s, kmax)
    found = np.cumsum(cid[order] == qid[:, None], axis=1)  # [Q, kmax] relevant within top j+1
    for k in label_ks:
        n_rel = found[:, min(k, c) - 1]
        out[f"Hit@{k}"] = float(np.mean(n_rel > 0))
        out[f"P@{k}"] = float(np.mean(n_rel / k))
    return out
