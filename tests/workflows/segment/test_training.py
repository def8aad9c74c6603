"""Alternating CT / MR training: batches alternate, the shorter loader cycles, and every
batch gets its own optimiser step; mixed batches hold both modalities (the same patches,
one step per pair); the matched plain head has the conditioned head's parameter count."""

import torch

from medmm.config.core import build_config
from medmm.data.segmentation import alternating_batches, load_volume_cohort
from medmm.models.registry import create_model
from medmm.models.segmentation import trainable_parameters
from medmm.workflows.segment.config import SegmentConfig, SegOptimConfig
from medmm.workflows.segment.training import (
    build_optimizer,
    mixed_batches,
    optimiser_steps,
    train_loaders,
    train_steps,
)
from tests.workflows.segment.conftest import TINY_SEG_CONFIG


def test_stream_alternates_and_cycles_the_shorter_loader():
    ct = [{"id": f"ct{i}"} for i in range(3)]
    mr = [{"id": "mr0"}]
    stream = alternating_batches({"ct": ct, "mr": mr})
    got = [next(stream) for _ in range(8)]
    assert [m for m, _ in got] == ["ct", "mr"] * 4
    assert [b["id"] for _, b in got] == ["ct0", "mr0", "ct1", "mr0", "ct2", "mr0", "ct0", "mr0"]
    only_mr = alternating_batches({"ct": None, "mr": mr})
    assert [next(only_mr)[0] for _ in range(3)] == ["mr"] * 3


class Recorder(torch.nn.Module):
    """A one-parameter model that records which modality each forward saw."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, modality):
        self.seen.append(modality)
        return x * (1 + self.w)


def test_each_batch_gets_its_own_optimiser_step():
    model = Recorder()
    loaders = {"ct": [{"image": torch.ones(1, 1), "label": torch.ones(1, 1)}],
               "mr": [{"image": torch.full((1, 1), 2.0), "label": torch.zeros(1, 1)}]}
    opt, sched = build_optimizer(model, SegOptimConfig(lr=0.1, warmup_fraction=0.0), total_steps=6)
    steps, values = [], []
    opt.register_step_post_hook(lambda o, a, k: (steps.append(1), values.append(float(model.w.detach()))))
    loss_fn = lambda logits, label: ((logits - label) ** 2).mean()  # noqa: E731
    history = train_steps(model, loaders, loss_fn, opt, sched, n_steps=6)
    assert [m for m, _ in history] == ["ct", "mr"] * 3
    assert model.seen == [0, 1] * 3  # CT = 0, MR = 1 reach the model
    assert len(steps) == 6  # one step per batch, not one per CT + MR pair
    assert all(a != b for a, b in zip(values, values[1:]))  # the weight moved at every step


def test_mixed_training_steps_once_per_ct_mr_pair():
    model = Recorder()
    loaders = {"ct": [{"image": torch.ones(1, 1), "label": torch.ones(1, 1)}],
               "mr": [{"image": torch.full((1, 1), 2.0), "label": torch.zeros(1, 1)}]}
    opt, sched = build_optimizer(model, SegOptimConfig(lr=0.1, warmup_fraction=0.0), total_steps=3)
    loss_fn = lambda logits, label: ((logits - label) ** 2).mean()  # noqa: E731
    history = train_steps(model, loaders, loss_fn, opt, sched, n_steps=3, batching="mixed")
    assert [m for m, _ in history] == ["mixed"] * 3
    assert [s.tolist() for s in model.seen] == [[0, 1]] * 3  # each patch reaches the model with its modality
    # the budget counts batches of one modality: mixed takes one step per CT + MR pair
    assert optimiser_steps(6, "alternating", 2) == 6
    assert optimiser_steps(6, "mixed", 2) == 3 and optimiser_steps(6, "mixed", 1) == 6


def test_mixed_batches_hold_both_modalities_and_the_alternating_patches(tiny_volume_cohort):
    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, [f"data.root={tiny_volume_cohort}", "data.modalities=[ct, mr]",
                                                        "data.samples_per_volume=2"])
    cohort = load_volume_cohort(cfg.data)
    mixed, alternating = mixed_batches(train_loaders(cohort, cfg)), alternating_batches(train_loaders(cohort, cfg))
    mr_alone = alternating_batches(train_loaders(cohort, cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"modalities": ["mr"]})})))
    per_modality = cfg.data.batch_size * cfg.data.samples_per_volume
    for _ in range(3):
        name, batch = next(mixed)
        (m1, ct), (m2, mr) = next(alternating), next(alternating)
        assert torch.equal(next(mr_alone)[1]["image"], mr["image"])  # a one-modality model draws the same patches
        assert name == "mixed" and (m1, m2) == ("ct", "mr")
        assert batch["modality"].tolist() == [0] * per_modality + [1] * per_modality
        assert batch["image"].shape[0] == batch["label"].shape[0] == 2 * per_modality
        # the same seeded draws as alternating training, joined two by two
        assert torch.equal(batch["image"], torch.cat([ct["image"], mr["image"]]))
        assert torch.equal(batch["label"], torch.cat([ct["label"], mr["label"]]))


def test_matched_plain_head_has_the_conditioned_parameter_count():
    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG)
    classes = ["background", "liver", "kidney", "spleen", "spine"]
    counts = {v: trainable_parameters(create_model(cfg.model.name, cfg.model, class_names=classes, conditioning=v))
              for v in ("text", "none", "none_matched")}
    assert abs(counts["none_matched"] - counts["text"]) <= 0.01 * counts["text"]
    assert counts["none"] < 0.9 * counts["text"]  # the plain head alone is far smaller
    # zero scale and shift at the start: the matched head predicts what its plain head does
    torch.manual_seed(0)
    model = create_model(cfg.model.name, cfg.model, class_names=classes, conditioning="none_matched").eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        features, _ = model.backbone(x)
        torch.testing.assert_close(model(x, torch.tensor([0, 1])), model.head.net(features))
