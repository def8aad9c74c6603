"""The optimizer every medmm training loop uses."""

from __future__ import annotations

from typing import Any, Iterable

import torch

# Devices on which torch's fused AdamW kernel runs.
_FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable[Any], **options: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **options)`` with the fused kernel where every parameter
    is on a device that has it: one pass over all tensors instead of a dozen small
    element-wise operations per tensor (the default pretraining model's 100 trainable
    tensors: 3.9 ms per step instead of 9.3 ms on 2 CPU cores; benchmarks/step_efficiency.py).
    ``params`` is a list of tensors or of parameter groups, as for AdamW."""
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = bool(tensors) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **options)
