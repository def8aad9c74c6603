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

Relation to ``torchmetrics.retrieval`` (tests/metrics/test_retrieval_vs_torchmetrics.py):
``R@k``, ``Hit@k`` and ``P@k`` equal ``RetrievalRecall``, ``RetrievalHitRate`` and
``RetrievalPrecision`` (defaults: ``adaptive_k=False``, ``empty_target_action="neg"``), and
``mean(1 / (partner_ranks + 1))`` equals ``RetrievalMRR``, on the same scores with two
differences made explicit:

* ties: torchmetrics orders tied scores as ``torch.topk`` / ``argsort`` happen to (no
  documented order); the values agree once ties are broken by candidate index
  (``s_ij - j * eps``), and wherever no tie straddles the k-th place.
* sign: torchmetrics' precision, recall and MRR count a relevant candidate whose score is
  <= 0 as not retrieved, whatever its rank; here only the ranking counts (cosine
  similarities are often negative), as torchmetrics gives on scores shifted above 0.

``P@k`` divides by k even when a query has fewer than k relevant candidates (so it can stay
below 1 with every relevant one retrieved) or k exceeds C; torchmetrics' ``adaptive_k=True``
divides by ``min(k, C)``. torchmetrics is not called here: its per-query grouping took
60-170x longer on 500-2000 queries (2-core AMD EPYC), and ranking galleries is in the loop
of the grid searches in :mod:`medmm.retrieval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["as_numpy", "row_ids", "partner_ranks", "top_k_indices", "top_k_candidates", "top_k_mask", "retrieval_metrics"]

# Rows handled at once by the full-matrix passes: their temporaries (an int64 running count
# per entry among them) stay a few tens of MB instead of growing with Q x C.
BLOCK_ENTRIES = 1 << 21
CANDIDATE_GROUPS = 256  # column groups of top_k_candidates' lower bound


def _row_blocks(rows: int, cols: int):
    step = max(1, BLOCK_ENTRIES // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


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
    s = as_numpy(sim)
    if s.dtype not in (np.float32, np.float64):  # float32 compares exactly as its float64 cast would
        s = s.astype(np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"similarity matrix must be 2-D [Q, C] and non-empty, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("similarity matrix contains NaN or inf")
    return s


def _partners(q: int, c: int, targets: Any) -> np.ndarray:
    """Each query's partner column, checked."""
    if targets is None:
        if q > c:
            raise ValueError(f"{q} queries but only {c} candidates: pass targets")
        return np.arange(q)
    p = as_numpy(targets).astype(np.int64).reshape(-1)
    if p.shape != (q,) or (p < 0).any() or (p >= c).any():
        raise ValueError(f"targets must be {q} candidate indices in [0, {c})")
    return p


def partner_ranks(sim: Any, targets: Any = None) -> np.ndarray:
    """0-based rank of each query's partner: ``#{j: s_ij > s_ip} + #{j < p: s_ij = s_ip}``."""
    s = _check_sim(sim)
    q, c = s.shape
    p = _partners(q, c, targets)
    ranks = np.empty(q, dtype=np.int64)
    for rows in _row_blocks(q, c):
        block, partner = s[rows], p[rows]
        sp = block[np.arange(len(partner)), partner][:, None]
        before = np.arange(c)[None, :] < partner[:, None]
        ranks[rows] = (block > sp).sum(1) + ((block == sp) & before).sum(1)
    return ranks


def top_k_mask(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean [Q, L] mask of each row's k highest scores, ties going to the leftmost
    entries (the lower candidate index when columns are in candidate order), and each
    row's k-th highest score. ``-inf`` entries only count when a row has fewer than k others."""
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth  # fewer than k per row
    tied = scores == kth
    # the tied slots left go to the leftmost entries: exactly k per row
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= k - above.sum(1, keepdims=True)))
    return chosen, kth[:, 0]


def top_k_candidates(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A superset of each row's k highest entries, ties included: columns [R, L] ascending
    within each row and their scores, rows padded with column -1 and score ``-inf``.

    A full partition costs ~10 ns per entry; this is a few vectorised passes of well under
    1 ns. The columns fall into ``g`` disjoint groups (column j in group j mod g); the k-th
    highest of the group maxima is a lower bound of the row's k-th highest score (those
    maxima are k distinct entries), and usually only a few more than k entries reach it."""
    r, c = scores.shape
    groups = max(CANDIDATE_GROUPS, 4 * k)
    if c < 2 * groups:
        return np.broadcast_to(np.arange(c), (r, c)), scores
    per_group = c // groups
    maxima = scores[:, : groups * per_group].reshape(r, per_group, groups).max(axis=1)
    tail = scores[:, groups * per_group :]
    maxima[:, : tail.shape[1]] = np.maximum(maxima[:, : tail.shape[1]], tail)
    floor = np.partition(maxima, groups - k, axis=1)[:, groups - k : groups - k + 1]
    keep = scores >= floor
    flat = np.flatnonzero(keep)  # row-major: columns ascending within each row
    rows, cols = np.divmod(flat, c)
    counts = np.bincount(rows, minlength=r)
    slot = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = np.full((r, int(counts.max())), -1, dtype=np.int64)
    values = np.full(columns.shape, -np.inf, dtype=scores.dtype)
    columns[rows, slot] = cols
    values[rows, slot] = scores[rows, cols]
    return columns, values


def top_k_indices(sim: np.ndarray, k: int) -> np.ndarray:
    """[Q, min(k, C)] column indices of each row's k highest scores in ranking order
    (descending, ties by lower index): ``argsort(-sim, kind="stable")[:, :k]`` in O(Q C)
    instead of O(Q C log C), which matters when a grid search ranks a gallery hundreds of times."""
    q, c = sim.shape
    k = min(int(k), c)
    if k == c:
        return np.argsort(-sim, axis=1, kind="stable")
    top = np.empty((q, k), dtype=np.int64)
    for rows in _row_blocks(q, c):
        columns, values = top_k_candidates(sim[rows], k)
        chosen = top_k_mask(values, k)[0]  # leftmost on ties = lower candidate index
        cols, vals = columns[chosen].reshape(-1, k), values[chosen].reshape(-1, k)
        top[rows] = np.take_along_axis(cols, np.argsort(-vals, axis=1, kind="stable"), axis=1)
    return top


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
    if ks:
        ranks = partner_ranks(s, targets)
        out = {f"R@{k}": float(np.mean(ranks < k)) for k in ks}
    else:  # label match only: the partners' ranks are not needed, their check is
        _partners(q, c, targets)
        out = {}
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
