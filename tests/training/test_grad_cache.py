"""GradCache gives the gradients of the uncached full-batch loss (same chunking)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmm.losses.contrastive import multi_modal_clip_loss
from medmm.losses.symile import symile_loss
from medmm.training.grad_cache import grad_cache_backward, split_batch

MODALITIES = ("xray", "ecg", "report")


class Tiny(nn.Module):
    """Per-modality MLPs with dropout, so the test also checks that the random masks of
    the second pass replay those of the first."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.maps = nn.ModuleDict({m: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))
                                   for m in MODALITIES})
        self.log_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, batch: dict) -> dict:
        return {m: F.normalize(self.maps[m](batch[m]), dim=-1) for m in MODALITIES}


def _batch(n=12):
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(n, 6, generator=g, dtype=torch.float64) for m in MODALITIES}
    batch["index"] = torch.arange(n)
    batch["present"] = {"ecg": torch.arange(n) % 4 != 1}
    return batch


def _loss_fn(kind, model, batch):
    if kind == "clip":
        pairs = [("xray", "report"), ("ecg", "report"), ("xray", "ecg")]
        return lambda emb: multi_modal_clip_loss(emb, pairs, model.log_scale, batch["present"])[0]
    return lambda emb: symile_loss([emb[m] for m in MODALITIES], model.log_scale, "n",
                                   torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", ["clip", "symile"])
def test_grad_cache_matches_uncached_gradients(kind):
    batch, chunk = _batch(), 5  # chunks of 5, 5, 2
    model = Tiny().double().train()
    loss_fn = _loss_fn(kind, model, batch)

    torch.manual_seed(42)
    outs = [model(c) for c in split_batch(batch, chunk)]
    reference = loss_fn({m: torch.cat([o[m] for o in outs]) for m in MODALITIES})
    model.zero_grad()
    reference.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}

    torch.manual_seed(42)
    model.zero_grad()
    got = grad_cache_backward(model, split_batch(batch, chunk), loss_fn)
    assert float(got) == pytest.approx(float(reference), rel=1e-12)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[k], rtol=1e-9, atol=1e-12, msg=k)


def test_split_batch_splits_nested_presence_and_keeps_scalars():
    batch = _batch(7)
    batch["note"] = "kept"
    chunks = split_batch(batch, 3)
    assert [len(c["index"]) for c in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat([c["present"]["ecg"] for c in chunks]), batch["present"]["ecg"])
    assert chunks[2]["note"] == "kept"
