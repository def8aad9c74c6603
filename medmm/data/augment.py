"""Batched, seeded training augmentations for X-rays and ECGs (torch).

Each sample's random parameters come from its own generator seeded by (seed, epoch,
sample index), so a run is reproducible whatever the batch composition or the number
of DataLoader workers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

XRAY_MEAN, XRAY_STD = 0.5, 0.25


def sample_rngs(seed: int, epoch: int, indices: list[int]) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, epoch, int(i)]) for i in indices]


def sample_noise(shape: torch.Size, rngs: list[np.random.Generator]) -> torch.Tensor:
    """Standard normal noise of ``shape`` ([N, ...]), each sample's from its own generator:
    a sample gets the same noise in any batch, and in any process of a multi-process run."""
    return torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(r.integers(2**31))))
                        for r in rngs]) if rngs else torch.zeros(shape)


def augment_xray(images: torch.Tensor, rngs: list[np.random.Generator]) -> torch.Tensor:
    """Small affine (rotation, scale, shift), contrast / gamma and noise: the nuisance a
    real acquisition adds, none of which moves a finding to another side."""
    n = len(images)
    params = np.array([[r.uniform(-5, 5), r.uniform(0.92, 1.08), r.uniform(-0.05, 0.05), r.uniform(-0.05, 0.05),
                        r.uniform(0.85, 1.2), r.uniform(0.8, 1.25), r.uniform(0.0, 0.03)] for r in rngs])
    angle = np.deg2rad(params[:, 0])
    scale = params[:, 1]
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = np.cos(angle) / scale
    theta[:, 0, 1] = -np.sin(angle) / scale
    theta[:, 1, 0] = np.sin(angle) / scale
    theta[:, 1, 1] = np.cos(angle) / scale
    theta[:, :, 2] = params[:, 2:4]
    grid = F.affine_grid(torch.from_numpy(theta), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = torch.from_numpy(params[:, 4]).float().view(n, 1, 1, 1)
    gamma = torch.from_numpy(params[:, 5]).float().view(n, 1, 1, 1)
    out = (out.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5
    noise_sd = torch.from_numpy(params[:, 6]).float().view(n, 1, 1, 1)
    return out + noise_sd * sample_noise(out.shape, rngs)


def normalise_xray(images: torch.Tensor) -> torch.Tensor:
    return (images - XRAY_MEAN) / XRAY_STD


def augment_ecg(signals: torch.Tensor, rngs: list[np.random.Generator]) -> torch.Tensor:
    """Amplitude scaling (global, so planted voltage differences survive in ratio), a
    circular time shift (the rhythm is stationary over 10 s) and additive noise."""
    n, _, t = signals.shape
    out = torch.empty_like(signals)
    for i, r in enumerate(rngs):
        out[i] = torch.roll(signals[i], shifts=int(r.integers(0, t)), dims=-1) * float(r.uniform(0.9, 1.1))
    return out + 0.02 * sample_noise(out.shape, rngs)
