"""Prior-corrected retrieval: rank candidates by ``p(candidate | query)``, not by the
pointwise mutual information that a contrastive model's similarity estimates.

Why. At its optimum the InfoNCE critic is ``s(x, y) = log p(y | x) / p(y) + const`` (van den
Oord et al., 2018, "Representation Learning with Contrastive Predictive Coding", sec. 2.2).
When a query shows only some findings (an ECG shows rhythm and conduction, not a nodule),
every report consistent with it gets the same PMI, so similarity ranking picks among them
at random, and a rare findings set ranks as high as the common one. Label-match precision
rewards the *most probable* matching report, which is Bayes' rule:
``log p(y | x) = s(x, y) + log p(y)``. The prior ``p(y)`` is not known, but the gallery
holds it: reports with the same findings embed close together, so the number of gallery
neighbours of a candidate (a kernel density over candidate embeddings, no labels used)
estimates it. The same gallery-side idea, with the opposite aim (penalising hubs), is
querybank normalisation (Bogolin et al., CVPR 2022).

``score = logit_scale * cos(x, y) + weight * log sum_j exp((cos(y, y_j) - 1) / bandwidth)``

``weight = 1`` is Bayes' rule when the logit scale is calibrated; ``bandwidth`` sets how
close two reports must be to count as the same. Both are chosen on the validation split
(:func:`fit_prior_correction`), never on the split that is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from medmm.retrieval.shortlist import LabelMatchGrid, leaders

__all__ = ["PriorCorrection", "log_gallery_density", "prior_correction_grid", "fit_prior_correction",
           "robust_grid_choice"]


def _cosines(candidates: np.ndarray) -> np.ndarray:
    return np.clip(candidates @ candidates.T, -1.0, 1.0)


def _log_density(cosines: np.ndarray, bandwidth: float) -> np.ndarray:
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    # log-sum-exp by hand: scipy's costs ~20x the exp on a large gallery
    scaled = (cosines - 1.0) / bandwidth
    top = scaled.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))[:, 0]


def log_gallery_density(candidates: np.ndarray, bandwidth: float) -> np.ndarray:
    """``log sum_j exp((cos(c_i, c_j) - 1) / bandwidth)`` for every candidate i (itself
    included, so an isolated candidate gets log 1 = 0). ``candidates`` is [C, d], rows
    L2-normalised; cost O(C^2 d), done once per gallery."""
    return _log_density(_cosines(candidates), bandwidth)


def _prior_corrected(similarity: np.ndarray, log_prior: np.ndarray, weight: float, logit_scale: float) -> np.ndarray:
    """The score; the grid search and :meth:`PriorCorrection.scores` share it so that both
    do the same arithmetic, hence rank ties alike."""
    return logit_scale * similarity + weight * log_prior


@dataclass(frozen=True)
class PriorCorrection:
    bandwidth: float
    weight: float

    def scores(self, queries: np.ndarray, candidates: np.ndarray, logit_scale: float) -> np.ndarray:
        """[Q, C] prior-corrected scores for L2-normalised query / candidate embeddings."""
        log_prior = log_gallery_density(candidates, self.bandwidth)
        return _prior_corrected(queries @ candidates.T, log_prior[None, :], self.weight, logit_scale)


def prior_correction_grid(queries: np.ndarray, candidates: np.ndarray, labels: np.ndarray, logit_scale: float,
                          k: int, bandwidths: Sequence[float], weights: Sequence[float],
                          shortlist: int = 64) -> np.ndarray:
    """Label-match P@k [bandwidth, weight] of the prior-corrected scores. The similarities,
    the gallery cosines and the similarity leaders are computed once; each bandwidth adds
    its density and each weight a pass over the short lists (:mod:`medmm.retrieval.shortlist`)."""
    sim = queries @ candidates.T
    cosines = _cosines(candidates)
    sim_leaders = leaders(sim, max(shortlist, k))
    combine = partial(_prior_corrected, logit_scale=logit_scale)
    grid = np.empty((len(bandwidths), len(weights)))
    for i, bandwidth in enumerate(bandwidths):
        points = LabelMatchGrid(sim, _log_density(cosines, bandwidth), labels, labels, k, size=shortlist,
                                first_leaders=sim_leaders)
        for j, weight in enumerate(weights):
            grid[i, j] = points.precision(combine, weight, monotone=weight >= 0 and logit_scale >= 0)
    return grid


def fit_prior_correction(queries: np.ndarray, candidates: np.ndarray, labels: np.ndarray, logit_scale: float,
                         *, metric: str = "P@5", bandwidths: Sequence[float] = (0.003, 0.01, 0.02, 0.05, 0.1, 0.2),
                         weights: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
                         shortlist: int = 64) -> tuple[PriorCorrection, float]:
    """Grid search of (bandwidth, weight) for label-match ``metric`` on a validation split
    whose study i has query ``queries[i]``, candidate ``candidates[i]`` and finding labels
    ``labels[i]``. Weight 0 (plain similarity) is in the grid, so the correction is only
    used where validation says it helps. Returns the choice and its validation score.

    The choice maximises the metric *averaged over the grid point and its neighbours*
    (3 x 3 in the bandwidth x weight grid), not the single best point: on a validation
    split of a few hundred queries one point can be a spike (a handful of duplicate
    reports counted as a dense cluster at one bandwidth moves the top-k of every query
    with one findings pattern at once), and such a spike does not carry over to the
    reported split. Plain similarity (weight 0) is scored by its own value alone.
    ``shortlist`` trades memory for the share of rows ranked in full; it never changes
    the result.
    """
    bandwidths, weights = list(bandwidths), list(weights)
    grid = prior_correction_grid(queries, candidates, labels, logit_scale, metric_k(metric), bandwidths, weights,
                                 shortlist)
    i, j = robust_grid_choice(grid, [w == 0.0 for w in weights])
    return PriorCorrection(bandwidths[i], weights[j]), float(grid[i, j])


def metric_k(metric: str) -> int:
    """k of a label-match ``"P@k"``, the metric both grid searches score."""
    name, k = metric.split("@")
    if name != "P":
        raise ValueError(f"the grid searches score label-match P@k, not {metric!r}")
    return int(k)


def robust_grid_choice(grid: np.ndarray, standalone_columns: Sequence[bool]) -> tuple[int, int]:
    """Index (row, column) of the grid point whose 3 x 3 neighbourhood has the best mean
    score; a column flagged in ``standalone_columns`` (plain similarity, the same for
    every bandwidth) is scored by its own value and left out of its neighbours' means.
    Ties go to the first point in row-major order."""
    rows, cols = grid.shape
    if len(standalone_columns) != cols:
        raise ValueError(f"{len(standalone_columns)} column flags for a grid of {cols} columns")
    best: tuple[float, int, int] | None = None
    for i in range(rows):
        for j in range(cols):
            if standalone_columns[j]:
                smoothed = float(grid[i, j])
            else:
                near = [c for c in range(max(j - 1, 0), min(j + 2, cols)) if not standalone_columns[c]]
                smoothed = float(grid[max(i - 1, 0): i + 2][:, near].mean())
            if best is None or smoothed > best[0] + 1e-12:
                best = (smoothed, i, j)
    assert best is not None
    return best[1], best[2]
