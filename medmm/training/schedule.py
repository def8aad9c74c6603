"""Learning-rate schedule shared by the training tasks."""

from __future__ import annotations

import math


def cosine_with_warmup(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
