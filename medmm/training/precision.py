"""The Lightning precision a pretraining run gets when its config leaves it unset."""

from __future__ import annotations

import torch

__all__ = ["default_precision"]


def default_precision() -> str:
    """``bf16-mixed`` on a GPU with bfloat16 (no loss scaling needed), ``16-mixed`` on an
    older GPU; on a CPU, ``bf16-mixed`` where it computes bfloat16 natively (AVX512-BF16 or
    AMX tiles) and ``32-true`` elsewhere, where bfloat16 is emulated and slower than float32.
    On the 2-core CI machine (AVX512-BF16 + AMX), bf16 autocast made the X-ray CNN 2-2.5x
    and the adapted text layer 1.6x faster (measured; the ECG transformer and the text
    attention stay float32 on CPU, see their encoders)."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16-mixed" if native_bf16 else "32-true"
