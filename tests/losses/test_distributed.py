"""Gathered-negative losses under DDP: 2 CPU processes (gloo) give the loss and the
parameter gradients of the single-process computation on the concatenated batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from medmm.losses.contrastive import known_label_targets, multi_modal_clip_loss
from medmm.losses.distributed import gathered_clip_loss, gathered_symile_loss
from medmm.losses.symile import symile_loss
from tests.live_mlflow import free_port

MODALITIES = ("xray", "ecg", "labs")
PAIRS = [("xray", "ecg"), ("xray", "labs"), ("ecg", "labs")]
N, D_IN, D = 8, 5, 4  # global batch 8 = 2 processes x 4


class Encoders(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.maps = nn.ModuleDict({m: nn.Linear(D_IN, D) for m in MODALITIES})
        self.log_scale = nn.Parameter(torch.tensor(1.2))

    def forward(self, x: dict) -> dict:
        return {m: F.normalize(self.maps[m](x[m]), dim=-1) for m in MODALITIES}


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(N, D_IN, generator=g, dtype=torch.float64) for m in MODALITIES}
    present = {"ecg": torch.tensor([1, 0, 1, 1, 1, 1, 0, 1], dtype=torch.bool)}
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [-1, -1], [1, 0], [0, 0], [0, 1], [0, 0]])
    return x, present, labels


def _losses(model, x, present, labels, gathered: bool):
    emb = model(x)
    scale = getattr(model, "module", model).log_scale
    if gathered:
        clip, _ = gathered_clip_loss(emb, PAIRS, scale, present, labels, 0.5)
        sym = gathered_symile_loss([emb[m] for m in MODALITIES], scale, "n",
                                   torch.Generator().manual_seed(3))
        sym2 = gathered_symile_loss([emb[m] for m in MODALITIES], scale, "n_squared")
    else:
        clip, _ = multi_modal_clip_loss(emb, PAIRS, scale, present,
                                        targets=known_label_targets(labels, 0.5))
        sym = symile_loss([emb[m] for m in MODALITIES], scale, "n", torch.Generator().manual_seed(3))
        sym2 = symile_loss([emb[m] for m in MODALITIES], scale, "n_squared")
    return {"clip": clip, "symile_n": sym, "symile_n2": sym2}


def _grads(model, loss):
    model.zero_grad()
    loss.backward(retain_graph=True)
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = Encoders().double()
        ddp = nn.parallel.DistributedDataParallel(model)
        x, present, labels = _inputs()
        n = N // world
        sl = slice(rank * n, (rank + 1) * n)
        out = {}
        for name in ("clip", "symile_n", "symile_n2"):
            # a fresh forward per loss, through DDP, so DDP averages the gradients
            loss = _losses(ddp, {m: v[sl] for m, v in x.items()}, {m: v[sl] for m, v in present.items()},
                           labels[sl], True)[name]
            ddp.zero_grad()
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            out[name] = (float(mean_loss) / world, {k: p.grad.clone() for k, p in model.named_parameters()})
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True)  # raises if a worker fails
    return {r: torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)}


@pytest.mark.parametrize("name", ["clip", "symile_n", "symile_n2"])
def test_two_processes_match_the_concatenated_batch(two_process_results, name):
    model = Encoders().double()
    x, present, labels = _inputs()
    single = _losses(model, x, present, labels, False)[name]
    want = _grads(model, single)
    for rank in (0, 1):
        loss, grads = two_process_results[rank][name]
        assert loss == pytest.approx(float(single), rel=1e-6)  # the CLIP path computes in float32
        for k, g in want.items():
            torch.testing.assert_close(grads[k], g, rtol=1e-5, atol=1e-7, msg=f"{name} rank {rank} grad of {k}")


def test_without_a_process_group_the_gathered_losses_are_the_local_ones():
    model = Encoders().double()
    x, present, labels = _inputs()
    local = _losses(model, x, present, labels, False)
    gathered = _losses(model, x, present, labels, True)
    for name in local:
        assert float(gathered[name]) == pytest.approx(float(local[name]), rel=1e-6)
