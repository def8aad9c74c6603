"""ECG preprocessing for the ECG encoder (numpy only).

:func:`preprocess_ecg` follows MoRE's recipe (500 Hz -> 100 Hz, NaN -> 0, baseline
removal by two successive median filters of 0.2 s and 0.6 s) with one deliberate
change in the final scaling:

MoRE min-max scales each lead to [-1, 1]. That throws away absolute voltage, which is
exactly what several findings are about: LVH (cardiomegaly) is *high* QRS voltage,
emphysema is *low* limb-lead voltage, and the ratio between leads carries the
electrical axis. So by default all leads of a record are divided by one fixed
constant (``scale_mv = 2 mV``) and clipped to ``[-clip, clip]`` (+-3, i.e. +-6 mV,
which only cuts pacing artifacts and extreme voltages): units stay comparable across
leads and records. ``minmax=True`` gives MoRE's per-lead min-max for fidelity
experiments.

Training-time augmentation is batched in torch, in :mod:`medmm.data.augment`.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = [
    "preprocess_ecg",
    "remove_baseline",
]


def _odd_window(seconds: float, fs: float) -> int:
    w = max(int(round(seconds * fs)), 1)
    return w if w % 2 == 1 else w + 1


def remove_baseline(
    signal: np.ndarray, fs: float, windows_s: tuple[float, float] = (0.2, 0.6)
) -> np.ndarray:
    """Subtract the baseline estimated by two successive median filters (``windows_s``
    seconds, rounded to an odd number of samples; edges use the nearest value). The
    first (0.2 s) removes QRS complexes and P waves, the second (0.6 s) T waves."""
    from scipy.ndimage import median_filter

    x = np.asarray(signal, dtype=np.float32)
    if x.ndim == 1:
        return remove_baseline(x[None, :], fs, windows_s)[0]
    n_rows, n = x.shape
    base = x
    for win in windows_s:
        size = _odd_window(win, fs)
        half = size // 2
        # scipy's 1-D median filter is ~15x faster than a (1, w) 2-D one. To make one
        # call for all leads, each row is edge-padded by half a window (so no window
        # reaches another lead and the edges behave as mode="nearest"), the rows are
        # laid end to end, filtered once, and the padding is cut off again.
        padded = np.pad(base, ((0, 0), (half, half)), mode="edge")
        filt = median_filter(padded.ravel(), size=size, mode="nearest")
        base = filt.reshape(n_rows, n + 2 * half)[:, half:half + n]
    return x - base


def preprocess_ecg(
    signal: np.ndarray,
    fs: float,
    target_fs: float = 100,
    *,
    seconds: float = 10.0,
    scale_mv: float = 2.0,
    clip: float | None = 3.0,
    minmax: bool = False,
    baseline_windows_s: tuple[float, float] = (0.2, 0.6),
) -> np.ndarray:
    """Model input from an ECG ``[leads, time]`` in mV at ``fs`` Hz.

    Steps: NaN -> 0 (first, so that the resampling filter cannot spread a NaN);
    resample to ``target_fs`` with ``scipy.signal.resample_poly`` (its FIR low-pass is
    the anti-aliasing filter); crop or zero-pad at the end to ``target_fs * seconds``
    samples; baseline removal (:func:`remove_baseline`); then either divide by
    ``scale_mv`` and clip to ``[-clip, clip]`` (default, keeps voltage) or, with
    ``minmax``, MoRE's per-lead min-max to [-1, 1] (a flat lead becomes 0).
    Returns float32 ``[leads, round(target_fs * seconds)]``.
    """
    from scipy.signal import resample_poly

    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"signal must be [leads, time] with both > 0, got shape {x.shape}")
    if not (fs > 0 and target_fs > 0):
        raise ValueError(f"fs and target_fs must be positive, got {fs}, {target_fs}")
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    ratio = Fraction(float(target_fs) / float(fs)).limit_denominator(1000)
    if ratio != 1:
        x = resample_poly(x, ratio.numerator, ratio.denominator, axis=1, padtype="line")
    n_out = int(round(target_fs * seconds))
    if x.shape[1] >= n_out:
        x = x[:, :n_out]
    else:
        x = np.pad(x, ((0, 0), (0, n_out - x.shape[1])))
    x = remove_baseline(x.astype(np.float32), target_fs, baseline_windows_s)
    if minmax:
        lo = x.min(axis=1, keepdims=True)
        hi = x.max(axis=1, keepdims=True)
        span = hi - lo
        safe = np.where(span > 0, span, 1.0)
        x = np.where(span > 0, 2.0 * (x - lo) / safe - 1.0, 0.0)
    else:
        x = x / np.float32(scale_mv)
        if clip is not None:
            x = np.clip(x, -clip, clip)
    return np.ascontiguousarray(x, dtype=np.float32)
