"""PTUnifier training on the tiny cohort: each objective's loss falls; prompt pools stay
fixed through fine-tuning when frozen and move when trained."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from medmm.data.datamodule import PretrainDataModule
from medmm.workflows.finetune.config import FinetuneConfig
from medmm.workflows.ptunifier.module import MLMMasker, PTUnifierPretrainTask, pretrain_losses
from tests.conftest import make_model, ptu_cfg


def _tiny_batch(tiny_cohort, tmp_path, cfg, n=8):
    data = cfg.data.model_copy(update={"root": tiny_cohort, "cache_dir": tmp_path / "cache", "batch_size": n,
                                       "augment": False})
    dm = PretrainDataModule(data, max_tokens=cfg.model.text.max_tokens)
    dm.setup()
    return dm, next(iter(dm.loader("train")))


@pytest.mark.parametrize("objective", ["itc", "itm", "mlm"])
def test_each_objective_loss_falls_on_the_tiny_cohort(objective, tiny_cohort, tmp_path, tokenizer):
    model, cfg = make_model()
    loss_cfg = cfg.loss.model_copy(update={f"{o}_weight": float(o == objective) for o in ("itc", "itm", "mlm")})
    _, batch = _tiny_batch(tiny_cohort, tmp_path, cfg)
    masker = MLMMasker(tokenizer, loss_cfg.mlm_probability)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def loss(train: bool) -> torch.Tensor:
        model.train(train)
        gen = torch.Generator().manual_seed(1)  # the same masks and negatives each time
        return pretrain_losses(model, batch, loss_cfg, masker, gen)[objective]

    with torch.no_grad():
        before = float(loss(False))
    for _ in range(12):
        opt.zero_grad()
        loss(True).backward()
        opt.step()
    with torch.no_grad():
        after = float(loss(False))
    assert after < before - 0.05, f"{objective}: {before:.3f} -> {after:.3f}"
    if objective == "itc":  # below chance: ln(batch size)
        assert after < float(torch.log(torch.tensor(float(len(batch["index"])))))
    if objective == "itm":  # below the entropy of the label prior (1 match in 3 rows)
        assert after < -(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3))


@pytest.mark.parametrize("mode", ["frozen", "trained"])
def test_prompt_pools_frozen_or_trained_through_finetuning(mode, tiny_cohort, tmp_path):
    from medmm.io.findings import FINDINGS
    from medmm.workflows.finetune.module import FinetuneTask
    from medmm.workflows.pretrained import Backbone

    model, cfg = make_model()
    dm, _ = _tiny_batch(tiny_cohort, tmp_path, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "prompts" in n}
    ft = FinetuneConfig(task="image_classification", prompts=mode, epochs=1, lr=1e-2, head_lr=1e-2)
    task = FinetuneTask(ft, Backbone("ptunifier", model), len(FINDINGS), prompts_trainable=mode == "trained")
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, train_dataloaders=dm.loader("train", train=True))
    params = dict(model.named_parameters())
    for name, old in before.items():
        assert params[name].requires_grad == (mode == "trained"), name
    if mode == "frozen":
        assert all(torch.equal(params[n], old) for n, old in before.items())
    else:  # image-only inputs use the textual pool (pseudo-text), so that one moves
        assert not torch.equal(params["text_prompts"], before["text_prompts"])
    # The image encoder itself fine-tuned in both cases.
    assert any(p.requires_grad for p in model.image_blocks.parameters())


def test_balanced_vqa_loss_weighs_each_answers_positives_like_its_negatives():
    """pos_weight = negatives / positives per answer, checked against scikit-learn's
    'balanced' class weights (their ratio for one binary output), and the loss it gives
    equals the per-element weighted BCE written out."""
    from sklearn.utils.class_weight import compute_class_weight

    from medmm.workflows.finetune.module import balanced_pos_weight

    rng = np.random.default_rng(0)
    targets = (rng.random((200, 5)) < np.array([0.5, 0.1, 0.02, 0.0, 0.3])).astype(np.float32)
    weight = balanced_pos_weight(targets)
    for j in range(targets.shape[1]):
        if targets[:, j].any():
            w0, w1 = compute_class_weight("balanced", classes=np.array([0.0, 1.0]), y=targets[:, j])
            assert float(weight[j]) == pytest.approx(w1 / w0)
        else:
            assert float(weight[j]) == 1.0
    logits = torch.from_numpy(rng.normal(size=targets.shape).astype(np.float32))
    y = torch.from_numpy(targets)
    by_hand = -(weight * y * torch.log(torch.sigmoid(logits)) + (1 - y) * torch.log(1 - torch.sigmoid(logits))).mean()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=weight)
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("itc_input", ["fused", "unimodal"])
def test_pretraining_trains_the_prompt_pools_only_when_a_loss_reaches_them(itc_input, tiny_cohort, tmp_path,
                                                                             tokenizer):
    """With the fused ITC the prompt pools get gradients; with ITC before fusion no
    pretraining loss fills a side with prompts, and the task freezes them (a multi-process run
    stops on parameters without gradients)."""
    cfg = ptu_cfg(f"model.itc_input={itc_input}")
    task = PTUnifierPretrainTask(cfg)
    _, batch = _tiny_batch(tiny_cohort, tmp_path, cfg)
    pretrain_losses(task.model, batch, cfg.loss, task.masker, torch.Generator().manual_seed(0))["loss"].backward()
    pools = (task.model.text_prompts, task.model.visual_prompts)
    unused = [name for name, p in task.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"trainable parameters without a gradient: {unused}"
    if itc_input == "fused":
        assert all(p.requires_grad and p.grad.abs().sum() > 0 for p in pools)
    else:
        assert not any(p.requires_grad for p in pools)
