"""Prior-corrected retrieval reaches the ideal observer where plain similarity cannot."""

import numpy as np
import pytest

from medmm.metrics.reference_levels import reference_levels
from medmm.metrics.retrieval import retrieval_metrics
from medmm.retrieval.gallery_prior import (
    PriorCorrection,
    fit_prior_correction,
    log_gallery_density,
    robust_grid_choice,
)


def _cohort(seed=0):
    """Three findings with distinct group sizes; the query modality shows finding 0 only."""
    rng = np.random.default_rng(seed)
    patterns = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    sizes = np.array([40, 25, 14, 9, 31, 18, 6, 3])  # distinct, so no ties between groups
    group = rng.permutation(np.repeat(np.arange(8), sizes))
    labels = patterns[group]
    # Candidate (report) embedding: one orthonormal axis per findings set.
    cand = np.eye(8)[group]
    # Query embedding: the normalised sum of the axes of every set it is consistent with,
    # so its cosine is the same for all consistent candidates (a flat PMI, as at InfoNCE's optimum).
    consistent = patterns[:, 0][None, :] == labels[:, [0]]  # [N, 8]
    query = consistent / np.linalg.norm(consistent, axis=1, keepdims=True)
    return labels, query, cand, sizes


def test_log_gallery_density_counts_identical_neighbours():
    _, _, cand, sizes = _cohort()
    group = cand.argmax(1)
    np.testing.assert_allclose(log_gallery_density(cand, bandwidth=0.01), np.log(sizes[group]), atol=1e-9)


def test_prior_correction_reaches_the_oracle_that_similarity_misses():
    labels, query, cand, _ = _cohort()
    levels = reference_levels(labels, np.array([True, False, False]), np.ones(3, bool), ks=(5,), label_ks=(5,))
    raw = retrieval_metrics(query @ cand.T, labels, labels, ks=(5,), label_ks=(5,))["P@5"]
    corrected = PriorCorrection(bandwidth=0.01, weight=1.0).scores(query, cand, logit_scale=100.0)
    fixed = retrieval_metrics(corrected, labels, labels, ks=(5,), label_ks=(5,))["P@5"]
    assert fixed == pytest.approx(levels["oracle"]["P@5"], abs=1e-9)
    assert raw < levels["oracle"]["P@5"] - 0.1


def test_fit_prefers_the_correction_on_validation_and_can_decline_it():
    labels, query, cand, _ = _cohort(seed=1)
    choice, value = fit_prior_correction(query, cand, labels, logit_scale=100.0)
    assert choice.weight > 0 and value > retrieval_metrics(query @ cand.T, labels, labels, ks=(5,),
                                                           label_ks=(5,))["P@5"]
    # A query that shows every finding: similarity alone is already the oracle; weight 0 is kept.
    exact = cand.copy()
    choice, _ = fit_prior_correction(exact, cand, labels, logit_scale=100.0)
    assert choice.weight == 0.0


def test_grid_choice_prefers_a_plateau_to_a_lone_spike():
    # Column 0 is plain similarity (0.50 on every row); a spike of 0.70 stands alone at
    # (0, 3), a plateau of 0.65 fills rows 2-3 x columns 1-2.
    grid = np.full((4, 4), 0.52)
    grid[:, 0] = 0.50
    grid[0, 3] = 0.70
    grid[2:4, 1:3] = 0.65
    assert robust_grid_choice(grid, [True, False, False, False]) in {(2, 1), (2, 2), (3, 1), (3, 2)}
    # Plain similarity wins when nothing beats it, whatever its neighbours.
    flat = np.full((3, 3), 0.40)
    flat[:, 0] = 0.60
    assert robust_grid_choice(flat, [True, False, False]) == (0, 0)
    with pytest.raises(ValueError, match="column flags"):
        robust_grid_choice(flat, [True, False])
