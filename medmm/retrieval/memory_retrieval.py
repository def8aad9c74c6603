"""Memory-translated retrieval: carry a query into the candidate space through the training
pairs, then rank the gallery by similarity to the query *and* to its translation.

Why. Label-match precision rewards candidates that share the query's findings. The best
query for that is the centre of those candidates, ``E[c | q]``; the query's own embedding
is a noisy estimate of it (an X-ray embedding also encodes position, exposure, body size).
The training split holds pairs ``(q_j, c_j)`` embedded by the same model, so a kernel
regression over it (Nadaraya 1964; Watson 1964), the softmax-weighted mean of the
candidates ``c_j`` whose queries ``q_j`` lie nearest to ``q``, estimates ``E[c | q]``
without any label. Interpolating a parametric score with a nearest-neighbour score over a
datastore of training pairs is kNN-LM's recipe (Khandelwal et al., ICLR 2020).

``score = logit_scale * (cos(q, c) + weight * cos(t(q), c))``, with
``t(q) = normalise(sum_{j in top-k(q)} softmax_j(logit_scale * cos(q, q_j)) c_j)``.

The softmax uses the model's own learned temperature; ``k`` and ``weight`` are chosen on
the validation split (:func:`fit_memory_translation`; weight 0 = plain similarity), never
on the split that is reported. The memory is the training split only, whose pairing is
training data; no label is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.special import softmax

from medmm.metrics.retrieval import top_k_indices
from medmm.retrieval.gallery_prior import metric_k, robust_grid_choice
from medmm.retrieval.shortlist import LabelMatchGrid, leaders

__all__ = ["PairedMemory", "MemoryTranslation", "memory_translation_grid", "fit_memory_translation"]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class PairedMemory:
    """Embeddings of the training pairs: ``queries[j]`` and ``candidates[j]`` are study j's
    two modalities, rows L2-normalised."""

    queries: np.ndarray
    candidates: np.ndarray

    def __post_init__(self):
        if self.queries.shape[0] != self.candidates.shape[0] or self.queries.shape[0] == 0:
            raise ValueError(f"memory needs the same number (> 0) of query and candidate rows, got "
                             f"{self.queries.shape[0]} and {self.candidates.shape[0]}")

    def neighbours(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices [Q, k] of each query's k most similar memory queries, most similar first,
        and those similarities."""
        k = min(k, len(self.queries))
        sim = queries @ self.queries.T
        top = top_k_indices(sim, k)
        return top, np.take_along_axis(sim, top, axis=1)

    def translate(self, queries: np.ndarray, k: int, logit_scale: float,
                  neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """[Q, d] L2-normalised kernel-weighted mean of the candidates paired with each
        query's k nearest memory queries. ``neighbours`` (from :meth:`neighbours` with at
        least k) saves recomputing them over a grid of k."""
        index, sim = neighbours if neighbours is not None else self.neighbours(queries, k)
        index, sim = index[:, :k], sim[:, :k]
        weights = softmax(logit_scale * sim, axis=1)
        return _normalise(np.einsum("qk,qkd->qd", weights, self.candidates[index]))


def _memory_translated(plain: np.ndarray, translated: np.ndarray, weight: float, logit_scale: float) -> np.ndarray:
    """The score; the grid search and :meth:`MemoryTranslation.scores` share it so that
    both do the same arithmetic, hence rank ties alike."""
    return logit_scale * (plain + weight * translated)


@dataclass(frozen=True)
class MemoryTranslation:
    k: int
    weight: float

    def scores(self, queries: np.ndarray, candidates: np.ndarray, memory: PairedMemory,
               logit_scale: float) -> np.ndarray:
        """[Q, C] scores for L2-normalised query / candidate embeddings."""
        plain = queries @ candidates.T
        if self.weight == 0.0:
            return logit_scale * plain
        translated = memory.translate(queries, self.k, logit_scale)
        return _memory_translated(plain, translated @ candidates.T, self.weight, logit_scale)


def memory_translation_grid(queries: np.ndarray, candidates: np.ndarray, labels: np.ndarray, memory: PairedMemory,
                            logit_scale: float, top: int, ks: Sequence[int], weights: Sequence[float],
                            shortlist: int = 64) -> np.ndarray:
    """Label-match P@``top`` [k, weight] of the memory-translated scores. The memory
    neighbours (up to the largest k), the plain similarities and their leaders are computed
    once; each k adds its translation and each weight a pass over the short lists
    (:mod:`medmm.retrieval.shortlist`)."""
    plain = queries @ candidates.T
    near = memory.neighbours(queries, max(ks))
    plain_leaders = leaders(plain, max(shortlist, top))
    combine = partial(_memory_translated, logit_scale=logit_scale)
    grid = np.empty((len(ks), len(weights)))
    for i, k in enumerate(ks):
        translated = memory.translate(queries, k, logit_scale, neighbours=near) @ candidates.T
        points = LabelMatchGrid(plain, translated, labels, labels, top, size=shortlist, first_leaders=plain_leaders)
        for j, weight in enumerate(weights):
            grid[i, j] = points.precision(combine, weight, monotone=weight >= 0 and logit_scale >= 0)
    return grid


def fit_memory_translation(queries: np.ndarray, candidates: np.ndarray, labels: np.ndarray, memory: PairedMemory,
                           logit_scale: float, *, metric: str = "P@5",
                           ks: Sequence[int] = (5, 10, 20, 50, 100),
                           weights: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
                           shortlist: int = 64) -> tuple[MemoryTranslation, float]:
    """Grid search of (k, weight) for label-match ``metric`` on a validation split whose
    study i has query ``queries[i]``, candidate ``candidates[i]`` and labels ``labels[i]``.
    As for the gallery prior, the choice is the best 3 x 3 grid neighbourhood, not the best
    single point, and weight 0 (plain similarity) is scored on its own. Returns the choice
    and its validation score. ``shortlist`` never changes the result (see
    :func:`memory_translation_grid`)."""
    ks, weights = sorted(ks), list(weights)
    grid = memory_translation_grid(queries, candidates, labels, memory, logit_scale, metric_k(metric), ks, weights,
                                   shortlist)
    i, j = robust_grid_choice(grid, [w == 0.0 for w in weights])
    return MemoryTranslation(ks[i], weights[j]), float(grid[i, j])
