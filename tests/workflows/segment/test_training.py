"""Alternating CT / MR training: batches alternate, the shorter loader cycles, and every
batch gets its own optimiser step."""

import torch

from medmm.data.segmentation import alternating_batches
from medmm.workflows.segment.config import SegOptimConfig
from medmm.workflows.segment.training import build_optimizer, train_steps


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
