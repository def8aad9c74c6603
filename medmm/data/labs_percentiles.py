"""Lab values -> training-set percentiles + missingness flags (Symile-MIMIC).

Each lab is mapped through the empirical CDF of its training-split values (fraction of
training values <= x), so units and skew (BNP spans three decades) no longer matter; a
missing value gets the mean training percentile of that lab and a flag of 1. Fitted on
the training split only, so no test value shapes the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabPercentiles:
    sorted_values: list[np.ndarray]  # per lab, the sorted non-missing training values
    fill: np.ndarray  # [L] mean training percentile, used for missing values

    @classmethod
    def fit(cls, train_values: np.ndarray) -> "LabPercentiles":
        """``train_values`` [N, L] with NaN where missing."""
        sorted_values, fill = [], []
        for col in np.asarray(train_values, dtype=np.float64).T:
            seen = np.sort(col[~np.isnan(col)])
            sorted_values.append(seen)
            fill.append(float(np.mean(np.searchsorted(seen, seen, side="right") / len(seen))) if len(seen) else 0.5)
        return cls(sorted_values, np.array(fill))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """[N, L] with NaN where missing -> [N, 2L] float32: percentiles in [0, 1], then flags."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.sorted_values):
            raise ValueError(f"expected labs of shape [N, {len(self.sorted_values)}], got {values.shape}")
        missing = np.isnan(values)
        pct = np.empty_like(values)
        for j, seen in enumerate(self.sorted_values):
            pct[:, j] = np.searchsorted(seen, np.nan_to_num(values[:, j]), side="right") / max(len(seen), 1)
        pct = np.where(missing, self.fill[None, :], pct)
        return np.concatenate([pct, missing.astype(np.float64)], axis=1).astype(np.float32)
