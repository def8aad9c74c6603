import numpy as np
import pytest

from medmm.metrics.candidates import candidate_accuracy


def _loop(scores, k, seed):
    rng = np.random.default_rng(seed)
    q, right = len(scores), 0
    for i in range(q):
        pool = [j for j in range(q) if j != i]
        others = rng.choice(np.array(pool), size=k - 1, replace=False)
        right += all(scores[i][i] > scores[i][j] for j in others)
    return right / q


def test_candidate_accuracy_matches_loop_and_extremes():
    s = np.random.default_rng(0).normal(size=(30, 30))
    assert candidate_accuracy(s, 10, seed=3) == pytest.approx(_loop(s.tolist(), 10, 3))
    assert candidate_accuracy(np.eye(12) + 0.0, 10) == 1.0
    assert candidate_accuracy(-np.eye(12), 10) == 0.0
    rand = np.random.default_rng(1).normal(size=(2000, 2000))
    assert candidate_accuracy(rand, 10) == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError):
        candidate_accuracy(np.zeros((5, 5)), 10)
