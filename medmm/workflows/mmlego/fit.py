"""Training and scoring of one MM-Lego variant on a task's rows.

A plain loop (as the survival workflow's): the cohorts are small and every variant trains
on CPU in seconds to minutes; AdamW, early stopping on the validation loss, the epoch kept
chosen there, never on the test split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from medmm.workflows.mmlego.tasks import Task

Forward = Callable[[nn.Module, np.ndarray, np.random.Generator | None], torch.Tensor]


def block_forward(task: Task, modality: int) -> Forward:
    """A unimodal block reads its own modality."""
    return lambda model, rows, rng: model(task.inputs(modality, rows, rng))


def paired_forward(task: Task) -> Forward:
    """A merged / fused / end-to-end model reads both modalities."""
    return lambda model, rows, rng: model([task.inputs(m, rows, rng) for m in range(len(task.modalities))])


def predict(model: nn.Module, forward: Forward, rows: np.ndarray, batch_size: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([forward(model, rows[i:i + batch_size], None) for i in range(0, len(rows), batch_size)])


def fit(model: nn.Module, task: Task, forward: Forward, train: np.ndarray, val: np.ndarray, *, epochs: int,
        lr: float, weight_decay: float, batch_size: int, patience: int, seed: int) -> dict[str, Any]:
    """Train ``model`` on ``train`` rows; keep the weights of the epoch with the lowest loss on
    ``val`` rows. Returns the epoch kept, its validation loss, epochs run and steps taken."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch, waited, steps, epoch = float("inf"), None, -1, 0, 0, -1
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(train)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < 2 and len(order) >= 2:  # a trailing batch of one breaks batch norm: skipped (each epoch reshuffles)
                continue
            loss = task.loss(forward(model, rows, rng), rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        val_loss = task.loss(predict(model, forward, val, batch_size), val).item()
        if val_loss < best - 1e-4:
            best, best_state, best_epoch, waited = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is not None:  # else the validation loss was never finite: keep the last weights
        model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": best_epoch, "val_loss": best, "epochs_run": epoch + 1, "steps": steps}


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
