"""Label-match P@k of a two-term score over a grid of weights, exact, without ranking the
whole gallery at every grid point.

The re-rankers score candidate j for query i as ``combine(first[i, j], second[i, j], w)``
(plain similarity and a correction), non-decreasing in both terms for ``w >= 0``. Fagin's
threshold algorithm (Fagin, Lotem & Naor, PODS 2001) bounds every candidate outside the
union of the top ``size`` of each term by ``combine(first ceiling, second ceiling, w)``,
the ceilings being the best value each term reaches outside its own top ``size``. So the
top k of that short list is the top k of the whole row whenever its k-th score beats the
bound; the rows where it does not are ranked in full. The similarities and each term's
leaders are computed once, and every grid point costs O(Q x size) plus its rare full rows.
The score of a listed candidate is the same arithmetic on the same numbers as in the full
matrix, so the result equals ranking the full matrix, ties (to the lower candidate index)
included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medmm.metrics.retrieval import row_ids, top_k_candidates, top_k_mask

__all__ = ["LabelMatchGrid", "Leaders", "leaders"]

Combine = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class Leaders:
    """Each row's ``size`` highest columns (any order) and the highest value left outside
    them (``None`` when they are every column). One row stands for every query."""

    columns: np.ndarray  # [Q or 1, size]
    ceiling: np.ndarray | None  # [Q or 1]


def leaders(values: np.ndarray, size: int) -> Leaders:
    """Leaders of a [Q, C] matrix, or of a [C] vector shared by every query."""
    matrix = np.atleast_2d(values)
    cols = matrix.shape[1]
    if size >= cols:
        return Leaders(np.broadcast_to(np.arange(cols), (len(matrix), cols)), None)
    columns, scores = top_k_candidates(matrix, size + 1)
    # position ``size`` of the partition is the best value outside the first ``size``
    order = np.argpartition(-scores, size, axis=1)
    ceiling = np.take_along_axis(scores, order[:, size : size + 1], axis=1)[:, 0]
    return Leaders(np.take_along_axis(columns, order[:, :size], axis=1), ceiling)


class LabelMatchGrid:
    """P@k (label match, as :func:`medmm.metrics.retrieval.retrieval_metrics`) of
    ``combine(first, second, weight)`` for one ``second`` term at many weights.

    ``first`` is [Q, C]; ``second`` [Q, C] or a [C] vector added to every query;
    ``first_leaders`` may be shared between grids over the same ``first``."""

    def __init__(self, first: np.ndarray, second: np.ndarray, query_labels: np.ndarray, cand_labels: np.ndarray,
                 k: int, *, size: int = 64, first_leaders: Leaders | None = None):
        q, c = first.shape
        self.first, self.second, self.k_div = first, second, k
        self.k = min(k, c)
        size = max(size, self.k)
        self.query_ids, self.cand_ids = row_ids(query_labels, cand_labels)
        first_leaders = first_leaders or leaders(first, size)
        second_leaders = leaders(second, size)
        self.exhaustive = first_leaders.ceiling is None or second_leaders.ceiling is None
        self.ceilings = (first_leaders.ceiling, second_leaders.ceiling)
        # the union of both leader lists, in candidate order (the tie-break), repeats masked
        both = np.concatenate([first_leaders.columns, np.broadcast_to(second_leaders.columns,
                                                                      (q, second_leaders.columns.shape[1]))], axis=1)
        self.columns = np.sort(both, axis=1)
        self.repeat = np.zeros(self.columns.shape, dtype=bool)
        self.repeat[:, 1:] = self.columns[:, 1:] == self.columns[:, :-1]
        rows = np.arange(q)[:, None]
        self.listed_first = first[rows, self.columns]
        self.listed_second = second[self.columns] if second.ndim == 1 else second[rows, self.columns]
        self.listed_relevant = (self.cand_ids[self.columns] == self.query_ids[:, None]) & ~self.repeat
        self.rows_ranked_in_full = 0  # over all calls: how often the bound did not settle a row

    def precision(self, combine: Combine, weight: float, monotone: bool) -> float:
        """P@k at ``weight``; ``monotone`` says ``combine`` is non-decreasing in both terms
        at this weight (else every row is ranked in full)."""
        found = np.zeros(len(self.first), dtype=np.int64)
        full = np.ones(len(self.first), dtype=bool)
        if monotone and not self.exhaustive:
            listed = combine(self.listed_first, self.listed_second, weight)
            listed[self.repeat] = -np.inf
            chosen, kth = top_k_mask(listed, self.k)
            found = (chosen & self.listed_relevant).sum(1)
            full = ~(kth > combine(self.ceilings[0], self.ceilings[1], weight))
        if full.any():
            rows = np.flatnonzero(full)
            self.rows_ranked_in_full += len(rows)
            second = self.second[None, :] if self.second.ndim == 1 else self.second[rows]
            scores = combine(self.first[rows], second, weight)
            relevant = self.cand_ids[None, :] == self.query_ids[rows, None]
            found[rows] = (top_k_mask(scores, self.k)[0] & relevant).sum(1)
        return float(np.mean(found / self.k_div))
