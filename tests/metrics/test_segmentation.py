"""DiceCE against a hand computation; Dice / HD95 against MONAI and by hand; the policy
for a class missing from the prediction or the label."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medmm.losses.segmentation import dice_ce_loss
from medmm.metrics.segmentation import image_diagonal_mm, per_class_scores, summarise


def test_dice_ce_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, 4, generator=g)
    labels = torch.randint(0, 3, (2, 1, 5, 6, 4), generator=g)
    probs = logits.softmax(1)
    onehot = F.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    dims = (2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice_loss = (1.0 - (2.0 * inter + 1e-5) / (denom + 1e-5)).mean()
    # cross-entropy written out: -log softmax at the true class, averaged over voxels
    ce = -(torch.log_softmax(logits, 1) * onehot).sum(1).mean()
    torch.testing.assert_close(dice_ce_loss()(logits, labels), dice_loss + ce)
    torch.testing.assert_close(dice_ce_loss(lambda_dice=0.0)(logits, labels), ce)


def _ball(shape, centre, radius):
    idx = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(idx - np.array(centre), axis=-1) <= radius


def _hand_hd95(a, b, spacing):
    """Symmetric 95th-percentile surface distance from distance transforms (scipy)."""
    def surface(m):
        return m & ~ndimage.binary_erosion(m)

    da = ndimage.distance_transform_edt(~surface(a), sampling=spacing)
    db = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
    return max(np.percentile(db[surface(a)], 95), np.percentile(da[surface(b)], 95))


def test_scores_match_monai_and_hand_computation():
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    shape, spacing = (20, 22, 18), (1.0, 1.5, 2.0)
    label = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    label[_ball(shape, (8, 10, 8), 5)] = 1
    pred[_ball(shape, (9, 10, 9), 5)] = 1
    label[_ball(shape, (15, 15, 12), 3)] = 2
    pred[_ball(shape, (15, 14, 12), 4)] = 2
    scores = per_class_scores(pred, label, [1, 2], spacing)

    onehot = lambda a: torch.from_numpy(np.stack([a == c for c in range(3)]))[None].float()  # noqa: E731
    dm = DiceMetric(include_background=False, reduction="none")
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    dm(onehot(pred), onehot(label))
    hd(onehot(pred), onehot(label), spacing=list(spacing))
    monai_dice, monai_hd = dm.aggregate()[0].numpy(), hd.aggregate()[0].numpy()
    for i, c in enumerate((1, 2)):
        p, g = pred == c, label == c
        assert scores[c]["status"] == "scored"
        assert scores[c]["dice"] == pytest.approx(float(monai_dice[i]), abs=1e-6)
        assert scores[c]["dice"] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), abs=1e-6)
        assert scores[c]["hd95"] == pytest.approx(float(monai_hd[i]), abs=1e-4)
        assert scores[c]["hd95"] == pytest.approx(_hand_hd95(p, g, spacing), rel=0.05, abs=0.5)


def test_policy_for_missed_false_positive_and_absent_classes():
    shape, spacing = (12, 12, 12), (2.0, 2.0, 3.0)
    label = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    label[2:6, 2:6, 2:6] = 1  # class 1: in the label only (missed)
    pred[7:10, 7:10, 7:10] = 2  # class 2: in the prediction only (false positive)
    scores = per_class_scores(pred, label, [1, 2, 3], spacing)
    diagonal = image_diagonal_mm(shape, spacing)
    assert diagonal == pytest.approx(math.sqrt(22**2 + 22**2 + 33**2))
    assert scores[1] == {"dice": 0.0, "hd95": diagonal, "status": "missed"}
    assert scores[2] == {"dice": 0.0, "hd95": diagonal, "status": "false_positive"}
    assert scores[3]["status"] == "absent" and math.isnan(scores[3]["dice"])

    rows = [{"variant": "text", "modality": "ct", "class": "x", "case": k, **s}
            for k, s in (("a", {"dice": 0.8, "hd95": 2.0, "status": "scored"}), ("b", scores[1]), ("c", scores[3]))]
    (summary,) = summarise(rows)
    # the miss counts as 0 (not dropped as MONAI's NaN would be); the true negative is excluded
    assert summary["dice"] == pytest.approx(0.4)
    assert summary["hd95"] == pytest.approx((2.0 + diagonal) / 2)
    assert (summary["n_cases"], summary["n_missed"]) == (2, 1)


def test_intensity_normalisation_matches_its_definition():
    from medmm.data.segmentation import normalise_intensity
    from medmm.workflows.segment.config import SegDataConfig

    cfg = SegDataConfig()
    hu = np.array([[[-1000.0, -175.0, 37.5, 250.0, 900.0]]])
    np.testing.assert_allclose(normalise_intensity(hu, "ct", cfg), [[[0.0, 0.0, 0.5, 1.0, 1.0]]], atol=1e-6)
    mr = np.random.default_rng(0).gamma(2.0, 100.0, (8, 8, 8))
    lo, hi = np.percentile(mr, [0.5, 99.5])
    np.testing.assert_allclose(normalise_intensity(mr, "mr", cfg), np.clip((mr - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert not normalise_intensity(np.zeros((4, 4, 4)), "mr", cfg).any()  # no contrast: zeros, no NaN
