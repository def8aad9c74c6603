"""Seeding per epoch: the datamodule's augmentation, the training sampler's order and the
global RNGs (python, numpy, torch; dropout draws from them) of an epoch are a function of
(seed, epoch) alone, so a run resumed at an epoch boundary trains exactly as an
uninterrupted one, whatever the killed process had drawn."""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for ``epoch`` of a run seeded ``seed`` (independent streams per epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSeededData:
    """LightningModule mixin: calls ``datamodule.set_epoch(epoch)`` where it has one."""

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)


class EpochSeededRandomness(Callback):
    """Seeds the global RNGs and the training sampler from (seed, epoch) when an epoch starts.

    The sampler gets a generator of its own: a random sampler draws its order from it at the
    epoch's first batch, whereas the loader's generator may already have been drawn from when
    Lightning created the epoch's iterator (before this hook, in the first epoch of a process)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # CPU and every CUDA device
        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            sampler = getattr(loader, "sampler", None)
            if isinstance(getattr(sampler, "generator", None), torch.Generator):
                sampler.generator = torch.Generator().manual_seed(seed)
