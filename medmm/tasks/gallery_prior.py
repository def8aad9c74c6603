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

__all__ = ["PriorCorrection", "log_gallery_density", "fit_prior_correction"]


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
    """Grid search of (bandwidth, weight) maximising label-match ``metric`` on a validation
    split whose study i has query ``queries[i]``, candidate ``candidates[i]`` and finding
    labels ``labels[i]``. Weight 0 (plain similarity) is in the grid, so the correction
    is only used where validation says it helps. Returns the choice and its score."""
    sim = queries @ candidates.T
    best: tuple[float, PriorCorrection] | None = None
    k = int(metric.split("@")[1])
    for bandwidth in bandwidths:
        log_prior = log_gallery_density(candidates, bandwidth)
        for weight in weights:
            value = retrieval_metrics(logit_scale * sim + weight * log_prior[None, :], labels, labels,
                                      ks=(k,), label_ks=(k,))[metric]
            if best is None or value > best[0] + 1e-12:
                best = (value, PriorCorrection(bandwidth, weight))
    assert best is not None
    return best[1], best[0]
