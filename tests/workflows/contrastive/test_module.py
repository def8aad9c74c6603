"""The pretraining task adds the same-label term to the cross-modal loss it is configured with."""

import pytest
import torch
import torch.nn.functional as F

from medmm.config.core import build_config
from medmm.losses.contrastive import known_label_targets, multi_modal_clip_loss, same_label_contrastive
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.contrastive.module import ContrastivePretrainTask
from tests.conftest import TINY_CONFIG


def test_same_label_term_is_added_with_its_weight():
    cfg = build_config(PretrainConfig, TINY_CONFIG, ["loss.same_label_modalities=[report]",
                                                     "loss.same_label_weight=0.3"])
    task = ContrastivePretrainTask(cfg)
    g = torch.Generator().manual_seed(0)
    n = 6
    emb = {m: F.normalize(torch.randn(n, cfg.model.embed_dim, generator=g), dim=1) for m in task.modalities}
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [-1, -1]])
    present = {m: torch.ones(n, dtype=torch.bool) for m in task.modalities}
    batch = {"labels": labels, "present": present}
    loss, parts = task._loss(emb, batch, "val")
    cross, _ = multi_modal_clip_loss(emb, cfg.loss.pairs, task.model.logit_scale, present,
                                     targets=known_label_targets(labels, cfg.loss.label_aware_weight)
                                     if cfg.loss.label_aware_weight > 0 else None)
    term = same_label_contrastive(emb["report"], labels, task.model.logit_scale)
    assert float(parts["same_label_report"]) == pytest.approx(float(term))
    assert float(loss) == pytest.approx(float(cross) + 0.3 * float(term), rel=1e-6)


@pytest.mark.parametrize("loss_name", ["clip", "symile"])
def test_loss_runs_in_float32_under_bf16_autocast(loss_name):
    """Encoders hand over bf16 (autocast) or float32 (GradCache) embeddings; the loss is the
    float32 loss of the same values either way, never a bf16 softmax or a dtype error."""
    cfg = build_config(PretrainConfig, TINY_CONFIG, [f"loss.name={loss_name}", "loss.same_label_modalities=[report]",
                                                     "loss.same_label_weight=0.3"])
    task = ContrastivePretrainTask(cfg)
    g = torch.Generator().manual_seed(1)
    n = 8
    emb = {m: F.normalize(torch.randn(n, cfg.model.embed_dim, generator=g), dim=1) for m in task.modalities}
    mixed = {m: e.bfloat16() if i % 2 == 0 else e for i, (m, e) in enumerate(emb.items())}
    batch = {"labels": torch.randint(0, 2, (n, 3), generator=g),
             "present": {m: torch.ones(n, dtype=torch.bool) for m in task.modalities}}
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = task._loss(mixed, batch, "val")
    torch.manual_seed(0)
    reference, _ = task._loss({m: e.float() for m, e in mixed.items()}, batch, "val")
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)
