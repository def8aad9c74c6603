"""Zero-shot classification by prompt similarity, and per-finding AUROC.

Scores: embeddings are assumed L2-normalised (image rows and every prompt), so a dot
product is a cosine similarity and, by linearity,
``score[n, f] = mean_p <x_n, pos_fp> - mean_p <x_n, neg_fp> = <x_n, mean_p pos_fp - mean_p neg_fp>``.

AUROC (Mann-Whitney, ties count 1/2):
``AUROC = (sum of midranks of positives - n1 (n1 + 1) / 2) / (n1 n0)``.
A finding with a single class in the split has no AUROC: it is reported as ``None`` with a
reason (and a warning), never as NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from medmm.metrics.retrieval import as_numpy

__all__ = ["zero_shot_scores", "binary_auroc", "AUROCResult", "per_finding_auroc"]


def zero_shot_scores(image_emb: Any, pos_prompt_emb: Any, neg_prompt_emb: Any) -> Any:
    """``[N, d]``, ``[F, P+, d]``, ``[F, P-, d]`` -> scores ``[N, F]`` (formula in module doc).

    Works on torch tensors (returns a tensor on the same device, differentiable) or on
    numpy arrays (returns an array). Positive and negative prompt counts may differ.
    """
    if image_emb.ndim != 2 or pos_prompt_emb.ndim != 3 or neg_prompt_emb.ndim != 3:
        raise ValueError("expected image_emb [N, d], pos/neg prompt embeddings [F, P, d]")
    d = image_emb.shape[1]
    if pos_prompt_emb.shape[0] != neg_prompt_emb.shape[0] or {pos_prompt_emb.shape[2], neg_prompt_emb.shape[2]} != {d}:
        raise ValueError(
            f"shape mismatch: image {tuple(image_emb.shape)}, pos {tuple(pos_prompt_emb.shape)}, "
            f"neg {tuple(neg_prompt_emb.shape)}"
        )
    direction = pos_prompt_emb.mean(1) - neg_prompt_emb.mean(1)  # [F, d]
    return image_emb @ direction.T


def binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann-Whitney AUROC of 1-D ``scores`` for 0/1 ``labels``; None if one class only."""
    pos = labels.astype(bool)
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(scores, method="average")
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


class AUROCResult(dict):
    """``{finding: AUROC or None, ..., "macro": mean over defined findings or None}``.

    ``.reasons`` maps each finding whose value is None to why.
    """

    def __init__(self, values: dict[str, float | None], reasons: dict[str, str]) -> None:
        super().__init__(values)
        self.reasons = reasons


def per_finding_auroc(scores: Any, labels: Any, names: Sequence[str]) -> AUROCResult:
    """AUROC per finding column of ``scores`` / ``labels`` [N, F] (labels 0/1) + ``"macro"``.

    Findings with only one class in ``labels`` get ``None`` and an entry in ``.reasons``
    (and a UserWarning); ``macro`` averages the defined ones (None if none is defined).
    """
    s = as_numpy(scores).astype(np.float64)
    y = as_numpy(labels)
    if s.ndim != 2 or s.shape != y.shape or s.shape[1] != len(names):
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be [N, F={len(names)}]")
    if "macro" in names:
        raise ValueError("'macro' is reserved for the macro mean")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (drop or impute uncertain / missing labels first)")
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for f, name in enumerate(names):
        values[name] = binary_auroc(s[:, f], y[:, f])
        if values[name] is None:
            only = int(y[0, f]) if len(y) else None
            reasons[name] = f"only one class (all {only}) among {len(y)} samples" if len(y) else "no samples"
    defined = [v for v in values.values() if v is not None]
    values["macro"] = float(np.mean(defined)) if defined else None
    if reasons:
        why = f"one class only among {len(y)} samples" if len(y) else "no samples"
        warnings.warn(f"AUROC undefined for {len(reasons)} of {len(names)} findings ({why}): {', '.join(reasons)}",
                      UserWarning, stacklevel=2)
    return AUROCResult(values, reasons)
