"""Symile: contrastive learning over >= 3 modalities with the multilinear inner product
(Saporta et al., "Contrasting with Symile", NeurIPS 2024).

``MIP(a, b, c) = sum_k a_k b_k c_k`` on L2-normalised representations (the caller
normalises, as for :mod:`medmm.losses.contrastive`). Each modality in turn is the anchor;
the logits of anchor ``i`` are ``exp(log_scale) * MIP(anchor_i, candidates)`` and the
loss is the cross-entropy of the positive, averaged over the anchors.

Negatives (paper, section 3):

* ``"n"`` — O(N): each non-anchor modality is shuffled by its own permutation, the
  shuffled rows are multiplied elementwise and ``anchor @ product.T`` gives an [N, N]
  matrix whose diagonal is then overwritten with the true positives ``MIP(x_i, y_i, z_i)``
  (a shuffled column ``j`` may by chance be all-positive; it stays a "negative", as in
  the paper).
* ``"n_squared"`` — O(N^(M-1)): every combination of non-anchor rows, [N, N^(M-1)]
  logits; the positive of row ``i`` is the column of the tuple ``(i, ..., i)``.

Missing modalities (paper, section 5): the encoders see an out-of-support placeholder
plus a presence indicator (or a learned "missing" token), so every sample keeps a
representation and the loss is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmm.losses.contrastive import _log_scale_tensor

__all__ = ["Negatives", "clip_scores", "mip", "symile_logits", "symile_loss", "symile_scores"]

Negatives = Literal["n", "n_squared"]


def mip(*reps: Tensor) -> Tensor:
    """Row-wise multilinear inner product of equally shaped [N, d] tensors -> [N]."""
    product = reps[0]
    for r in reps[1:]:
        product = product * r
    return product.sum(-1)


def _elementwise_product(reps: Sequence[Tensor]) -> Tensor:
    out = reps[0]
    for r in reps[1:]:
        out = out * r
    return out


def _all_combinations(reps: Sequence[Tensor]) -> Tensor:
    """[N^m, d]: the elementwise product of every tuple of rows (j_1, ..., j_m), with the
    tuple ordered lexicographically (j_1 slowest)."""
    d = reps[0].shape[-1]
    product = reps[0]
    for r in reps[1:]:
        product = (product[:, None, :] * r[None, :, :]).reshape(-1, d)
    return product


def symile_logits(anchor: Tensor, others: Sequence[Tensor], negatives: Negatives = "n",
                  generator: torch.Generator | None = None, *, row_offset: int = 0,
                  perms: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Unscaled logits of ``anchor`` [n, d] against the candidates built from ``others``
    (each [N, d]) and the index of each row's positive column.

    ``row_offset``: the anchor rows are rows ``row_offset .. row_offset + n`` of the batch
    the ``others`` describe (the DDP local loss: local anchors, gathered candidates; 0
    and n == N otherwise). ``perms``: the O(N) shuffles (default: drawn from ``generator``).
    """
    n, n_all = anchor.shape[0], others[0].shape[0]
    rows = torch.arange(n, device=anchor.device) + row_offset
    positives = mip(anchor, *(o[rows] for o in others))
    if negatives == "n":
        if perms is None:
            perms = [torch.randperm(n_all, generator=generator).to(anchor.device) for _ in others]
        logits = anchor @ _elementwise_product([o[p] for o, p in zip(others, perms)]).T  # [n, N]
        logits = logits.clone()
        logits[torch.arange(n, device=anchor.device), rows] = positives
        return logits, rows
    if negatives == "n_squared":
        logits = anchor @ _all_combinations(others).T  # [n, N^(M-1)]
        # column of (i, ..., i) = i * (N^(m-1) + ... + N + 1)
        stride = sum(n_all ** k for k in range(len(others)))
        return logits, rows * stride
    raise ValueError(f"negatives must be 'n' or 'n_squared', got {negatives!r}")


def symile_loss(reps: Sequence[Tensor], logit_scale: Tensor | nn.Module | float, negatives: Negatives = "n",
                generator: torch.Generator | None = None) -> Tensor:
    """Symile loss of M >= 2 modalities' L2-normalised representations ([N, d] each):
    the mean over anchors of the cross-entropy of the positive. With two modalities it is
    CLIP's symmetric InfoNCE. Half precision is promoted to float32 (safe under AMP)."""
    if len(reps) < 2:
        raise ValueError("symile_loss needs at least two modalities")
    shapes = {tuple(r.shape) for r in reps}
    if len(shapes) != 1 or reps[0].ndim != 2:
        raise ValueError(f"symile_loss expects equally shaped [N, d] representations, got {sorted(shapes)}")
    reps = [r.float() if r.dtype in (torch.float16, torch.bfloat16) else r for r in reps]
    scale = _log_scale_tensor(logit_scale, reps[0]).to(reps[0].dtype).exp()
    losses = []
    for i, anchor in enumerate(reps):
        others = [r for j, r in enumerate(reps) if j != i]
        logits, target = symile_logits(anchor, others, negatives, generator)
        losses.append(F.cross_entropy(scale * logits, target))
    return torch.stack(losses).mean()


def symile_scores(queries: Sequence[Tensor], candidates: Tensor) -> Tensor:
    """Zero-shot / retrieval scores [Q, C]: the elementwise product of the query's
    representations (one per observed modality, each [Q, d]) against every candidate."""
    return _elementwise_product(list(queries)) @ candidates.T


def clip_scores(queries: Sequence[Tensor], candidates: Tensor) -> Tensor:
    """The pairwise-CLIP baseline for several query modalities: the sum of the dot
    products of each query representation with the candidate (the paper's baseline)."""
    return sum(q @ candidates.T for q in queries)
