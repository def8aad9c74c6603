import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.functional import auroc as tm_auroc

from medmm.metrics.zeroshot import per_finding_auroc, zero_shot_scores


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zero_shot_scores_match_loop():
    rng = np.random.default_rng(0)
    img = _unit(rng.normal(size=(5, 8)))
    pos = _unit(rng.normal(size=(3, 4, 8)))
    neg = _unit(rng.normal(size=(3, 2, 8)))  # prompt counts may differ
    want = np.zeros((5, 3))
    for n in range(5):
        for f in range(3):
            cos_pos = [img[n] @ pos[f, p] for p in range(4)]
            cos_neg = [img[n] @ neg[f, p] for p in range(2)]
            want[n, f] = np.mean(cos_pos) - np.mean(cos_neg)
    np.testing.assert_allclose(zero_shot_scores(img, pos, neg), want, atol=1e-12)
    got_t = zero_shot_scores(*(torch.tensor(x) for x in (img, pos, neg)))
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-12)


def test_zero_shot_scores_shape_check():
    with pytest.raises(ValueError):
        zero_shot_scores(np.zeros((2, 4)), np.zeros((3, 1, 4)), np.zeros((2, 1, 4)))


def test_auroc_against_sklearn_and_torchmetrics_with_ties():
    rng = np.random.default_rng(1)
    n, f = 60, 3
    labels = rng.integers(0, 2, size=(n, f))
    scores = np.round(labels * 0.3 + rng.normal(size=(n, f)), 1)  # rounding -> many ties
    scores[:10, 0] = 0.0  # a big tie block
    names = ["a", "b", "c"]
    got = per_finding_auroc(torch.tensor(scores), labels, names)
    for j, name in enumerate(names):
        assert got[name] == pytest.approx(roc_auc_score(labels[:, j], scores[:, j]), abs=1e-12)
        # torchmetrics sigmoids scores outside [0, 1] and then mis-handles some float64 ties:
        # feed it min-max scaled scores (AUROC is invariant to increasing maps)
        scaled = (scores[:, j] - scores[:, j].min()) / np.ptp(scores[:, j])
        tm = tm_auroc(torch.tensor(scaled), torch.tensor(labels[:, j]), task="binary").item()
        assert got[name] == pytest.approx(tm, abs=1e-6)
    assert got["macro"] == pytest.approx(np.mean([got[n] for n in names]))
    assert got.reasons == {}


def test_hand_auroc():
    got = per_finding_auroc(np.array([[0.1], [0.4], [0.4], [0.8]]), np.array([[0], [0], [1], [1]]), ["x"])
    # pairs (pos, neg): (0.4,0.1)=1, (0.4,0.4)=1/2, (0.8,0.1)=1, (0.8,0.4)=1 -> 3.5/4
    assert got["x"] == pytest.approx(0.875)


def test_single_class_is_none_with_reason():
    scores = np.array([[0.1, 0.2], [0.3, 0.9], [0.5, 0.4]])
    labels = np.array([[0, 0], [1, 0], [1, 0]])
    with pytest.warns(UserWarning, match="undefined"):
        got = per_finding_auroc(scores, labels, ["pos_neg", "all_neg"])
    assert got["all_neg"] is None and "one class" in got.reasons["all_neg"]
    assert got["pos_neg"] == 1.0 and got["macro"] == 1.0
    assert not any(isinstance(v, float) and np.isnan(v) for v in got.values())


def test_auroc_rejects_bad_labels():
    with pytest.raises(ValueError, match="0/1"):
        per_finding_auroc(np.zeros((2, 1)), np.array([[-1], [1]]), ["x"])
