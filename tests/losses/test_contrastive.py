import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmm.losses.contrastive import (
    LogitScale,
    clip_loss,
    label_aware_targets,
    multi_modal_clip_loss,
    same_label_contrastive,
)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def _loop_loss(a: list[list[float]], b: list[list[float]], scale: float) -> float:
    """Textbook symmetric InfoNCE with explicit softmax, pure Python."""
    n = len(a)
    sim = [[scale * sum(x * y for x, y in zip(a[i], b[j])) for j in range(n)] for i in range(n)]
    rows = sum(-math.log(math.exp(sim[i][i]) / sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    cols = sum(-math.log(math.exp(sim[j][j]) / sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (rows + cols)


def _numpy_loss(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    logits = scale * a @ b.T

    def ce(z: np.ndarray) -> float:
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-np.mean(np.diag(logp)))

    return 0.5 * (ce(logits) + ce(logits.T))


def test_clip_loss_matches_hand_loop():
    a = _unit(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64))
    b = _unit(torch.tensor([[0.9, 0.1], [0.5, 0.5], [-0.2, 1.0]], dtype=torch.float64))
    log_scale = torch.tensor(math.log(5.0))
    got = clip_loss(a, b, log_scale).item()
    assert got == pytest.approx(_loop_loss(a.tolist(), b.tolist(), 5.0), rel=1e-6)


def test_clip_loss_matches_numpy_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = _unit(torch.randn(7, 4, generator=g)), _unit(torch.randn(7, 4, generator=g))
    scale = LogitScale()
    got = clip_loss(a, b, scale).item()
    assert got == pytest.approx(_numpy_loss(a.numpy(), b.numpy(), 1 / 0.07), rel=1e-5)
    assert clip_loss(b, a, scale).item() == pytest.approx(got, rel=1e-6)


def test_logit_scale_init_and_clamp():
    s = LogitScale()
    assert s.log_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        s.log_scale.fill_(10.0)
    assert s().item() == pytest.approx(math.log(100.0))


def test_optimizer_step_updates_temperature():
    # The MoRE reference bug: the temperature never reached the optimiser.
    g = torch.Generator().manual_seed(1)
    proj = torch.nn.Linear(6, 3)
    scale = LogitScale()
    opt = torch.optim.AdamW([*proj.parameters(), *scale.parameters()], lr=1e-2)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    before = scale.log_scale.detach().clone()
    loss = clip_loss(_unit(proj(x)), _unit(proj(y)), scale)
    loss.backward()
    assert scale.log_scale.grad is not None and scale.log_scale.grad.abs().item() > 0
    opt.step()
    assert not torch.equal(scale.log_scale.detach(), before)


def test_valid_mask_drops_rows_and_columns():
    g = torch.Generator().manual_seed(2)
    a = _unit(torch.randn(6, 3, generator=g)).requires_grad_()
    b = _unit(torch.randn(6, 3, generator=g))
    valid = torch.tensor([True, False, True, True, False, True])
    b_missing = b.clone()
    b_missing[~valid] = float("nan")  # garbage where the modality is missing
    got = clip_loss(a, b_missing, 2.0, valid)
    want = clip_loss(a[valid], b[valid], 2.0)
    assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert torch.all(a.grad[~valid] == 0) and a.grad[valid].abs().sum() > 0


@pytest.mark.parametrize("n_valid", [0, 1])
def test_fewer_than_two_valid_pairs_gives_connected_zero(n_valid):
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    scale = LogitScale()
    valid = torch.arange(4) < n_valid
    loss = clip_loss(a, b, scale, valid)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert scale.log_scale.grad is not None and a.grad is not None


def _batch(n: int = 6, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: _unit(torch.randn(n, 4, generator=g)) for m in ("text", "xray", "ecg")}


def test_multi_modal_mean_sum_and_keys():
    emb = _batch()
    pairs = [("text", "xray"), ("text", "ecg")]
    total, parts = multi_modal_clip_loss(emb, pairs, 1.5)
    assert set(parts) == {"text-xray", "text-ecg"}
    tx, te = clip_loss(emb["text"], emb["xray"], 1.5), clip_loss(emb["text"], emb["ecg"], 1.5)
    assert total.item() == pytest.approx((tx + te).item() / 2, rel=1e-6)
    summed, _ = multi_modal_clip_loss(emb, pairs, 1.5, reduction="sum")  # MoRE's form
    assert summed.item() == pytest.approx((tx + te).item(), rel=1e-6)


def test_multi_modal_presence_masks():
    emb = _batch()
    present = {"ecg": torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)}
    total, parts = multi_modal_clip_loss(emb, [("text", "xray"), ("text", "ecg")], 1.0, present)
    want_te = clip_loss(emb["text"][present["ecg"]], emb["ecg"][present["ecg"]], 1.0)
    assert parts["text-ecg"].item() == pytest.approx(want_te.item(), rel=1e-6)
    assert total.item() == pytest.approx((parts["text-xray"] + want_te).item() / 2, rel=1e-6)
    # no ECG in the batch: the text-ecg pair is inactive and does not dilute the mean
    none = {"ecg": torch.zeros(6, dtype=torch.bool)}
    total, parts = multi_modal_clip_loss(emb, [("text", "xray"), ("text", "ecg")], 1.0, none)
    assert parts["text-ecg"].item() == 0.0
    assert total.item() == pytest.approx(parts["text-xray"].item(), rel=1e-6)


def test_multi_modal_errors():
    with pytest.raises(KeyError, match="ecg"):
        multi_modal_clip_loss(_batch(), [("text", "ecg2")], 1.0)
    with pytest.raises(ValueError):
        multi_modal_clip_loss(_batch(), [], 1.0)


def test_identity_targets_give_the_hard_loss():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    torch.testing.assert_close(clip_loss(a, b, 2.0, targets=torch.eye(6)), clip_loss(a, b, 2.0))


def test_label_aware_soft_targets_match_a_hand_computation():
    labels = torch.tensor([[0, 1], [0, 1], [1, 0]])
    t = label_aware_targets(labels, 0.5)
    expected = torch.tensor([[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(t, expected)
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=-1)
    scale = 1.5
    logits = (math.exp(scale) * (a @ b.T)).tolist()
    total = 0.0
    for direction in ("rows", "cols"):
        for i in range(3):
            row = [logits[i][j] if direction == "rows" else logits[j][i] for j in range(3)]
            lse = math.log(sum(math.exp(x) for x in row))
            total += -sum(expected[i][j].item() * (row[j] - lse) for j in range(3)) / 3
    torch.testing.assert_close(clip_loss(a, b, scale, targets=t), torch.tensor(total / 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        label_aware_targets(labels, 1.5)


def _supcon_by_hand(emb, labels, scale):
    """Khosla et al. (2020) L_out, written as loops over anchors and positives."""
    n, losses = len(emb), []
    for i in range(n):
        if (labels[i] < 0).any():
            continue
        others = [j for j in range(n) if j != i and not (labels[j] < 0).any()]
        positives = [p for p in others if (labels[p] == labels[i]).all()]
        if not positives:
            continue
        denom = sum(math.exp(scale * float(emb[i] @ emb[j])) for j in others)
        losses.append(-sum(math.log(math.exp(scale * float(emb[i] @ emb[p])) / denom) for p in positives)
                      / len(positives))
    return sum(losses) / len(losses)


def test_same_label_contrastive_matches_a_hand_computation():
    g = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(9, 5, generator=g), dim=1)
    labels = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0], [0, 0], [0, 1], [1, 1], [-1, -1], [1, 0]])
    scale = 7.0
    got = same_label_contrastive(emb, labels, math.log(scale))
    assert float(got) == pytest.approx(_supcon_by_hand(emb.double(), labels, scale), rel=1e-5)
    # valid=False drops a sample as anchor and as candidate
    valid = torch.ones(9, dtype=torch.bool)
    valid[0] = False
    masked = same_label_contrastive(emb, labels, math.log(scale), valid)
    keep = valid.nonzero().flatten()
    assert float(masked) == pytest.approx(_supcon_by_hand(emb[keep].double(), labels[keep], scale), rel=1e-5)


def test_same_label_contrastive_without_positives_is_a_connected_zero():
    emb = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    loss = same_label_contrastive(emb, torch.tensor([[0], [1], [-1]]), 0.0)
    loss.backward()
    assert float(loss) == 0.0 and emb.grad is not None
