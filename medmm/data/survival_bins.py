"""Discrete time bins for the hazard head: quantiles of the uncensored training times,
outer edges widened to every observed time (as MCAT / CMTA do)."""

from __future__ import annotations

import numpy as np


def quantile_bins(time: np.ndarray, event: np.ndarray, n_bins: int = 4, eps: float = 1e-6) -> np.ndarray:
    """``n_bins + 1`` increasing edges. Inner edges are quantiles of the uncensored times;
    the first edge is just below the smallest time, the last just above the largest."""
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    if event.sum() < n_bins:
        raise ValueError(f"{int(event.sum())} events cannot define {n_bins} quantile bins")
    edges = np.quantile(time[event], np.linspace(0, 1, n_bins + 1))
    edges[0] = time.min() - eps
    edges[-1] = time.max() + eps
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"quantile bin edges are not increasing: {edges}")
    return edges


def time_to_bin(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index in 0..K-1 of each time (times outside the training range clip to the ends)."""
    return np.clip(np.searchsorted(edges[1:-1], np.asarray(time, float), side="right"), 0, len(edges) - 2)


def discrete_survival_at(survival: np.ndarray, edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S(t) from per-bin survival ``survival[:, k] = P(T > end of bin k)``: a step function that
    drops at each bin's upper edge. Returns [n_samples, len(times)]."""
    n_done = np.searchsorted(edges[1:], np.asarray(times, float), side="right")  # bins finished by t
    padded = np.concatenate([np.ones((survival.shape[0], 1)), survival], axis=1)
    return padded[:, n_done]
