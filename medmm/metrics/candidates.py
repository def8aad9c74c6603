"""Symile-MIMIC's evaluation: pick the true candidate among k (the true one and k - 1
others drawn at random from the split) given a query made of one or more modalities;
chance is 1 / k."""

from __future__ import annotations

import numpy as np


def candidate_accuracy(scores: np.ndarray, k: int = 10, seed: int = 0) -> float:
    """``scores`` [Q, Q]: query i against candidate j, the true candidate of query i being
    j = i. For each query, k - 1 distractors are drawn without replacement; a query is
    right when its true candidate scores strictly above every distractor."""
    scores = np.asarray(scores)
    q = scores.shape[0]
    if scores.shape != (q, q) or q < k:
        raise ValueError(f"need a square score matrix with at least k={k} rows, got {scores.shape}")
    rng = np.random.default_rng(seed)
    right = 0
    for i in range(q):
        others = rng.choice(np.delete(np.arange(q), i), size=k - 1, replace=False)
        right += bool(scores[i, i] > scores[i, others].max())
    return right / q
