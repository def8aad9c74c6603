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

import numpy as np
from scipy.special import logsumexp

from medmm.metrics.retrieval import retrieval_metrics

__all__ = ["PriorCorrection", "log_gallery_density", "fit_prior_correction", "robust_grid_choice"]


def log_gallery_density(candidates: np.ndarray, bandwidth: float) -> np.ndarray:
    """``log sum_j exp((cos(c_i, c_j) - 1) / bandwidth)`` for every candidate i (itself
    included, so an isolated candidate gets log 1 = 0). ``candidates`` is [C, d], rows
    L2-normalised; cost O(C^2 d), done once per gallery."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    cos = np.clip(candidates @ candidates.T, -1.0, 1.0)
    return logsumexp((cos - 1.0) / bandwidth, axis=1)


@dataclass(frozen=True)
class PriorCorrection:
    bandwidth: float
    weight: float

    def scores(self, queries: np.ndarray, candidates: np.ndarray, logit_scale: float) -> np.ndarray:
        """[Q, C] prior-corrected scores for L2-normalised query / candidate embeddings."""
        log_prior = log_gallery_density(candidates, self.bandwidth)
        return logit_scale * (queries @ candidates.T) + self.weight * log_prior[None, :]


def fit_prior_correction(queries: np.ndarray, candidates: np.ndarray, labels: np.ndarray, logit_scale: float,
                         *, metric: str = "P@5", bandwidths: Sequence[float] = (0.003, 0.01, 0.02, 0.05, 0.1, 0.2),
                         weights: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)) -> tuple[PriorCorrection, float]:
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
    """
    sim = queries @ candidates.T
    k = int(metric.split("@")[1])
    bandwidths, weights = list(bandwidths), list(weights)
    grid = np.empty((len(bandwidths), len(weights)))
    for i, bandwidth in enumerate(bandwidths):
        log_prior = log_gallery_density(candidates, bandwidth)
        for j, weight in enumerate(weights):
            grid[i, j] = retrieval_metrics(logit_scale * sim + weight * log_prior[None, :], labels, labels,
                                           ks=(k,), label_ks=(k,))[metric]
    i, j = robust_grid_choice(grid, [w == 0.0 for w in weights])
    return PriorCorrection(bandwidths[i], weights[j]), float(grid[i, j])


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
