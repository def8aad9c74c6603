"""CLIP-style pairwise contrastive losses (InfoNCE) with a learnable temperature.

Embeddings are assumed L2-normalised by the caller (the projection head); the loss does
not normalise again, so cosine similarity is ``a @ b.T``.

MoRE's report-anchored loss ``1/2[NCE(t,x)+NCE(x,t)] + 1/2[NCE(t,e)+NCE(e,t)]`` is
``multi_modal_clip_loss(emb, [("text","xray"), ("text","ecg")], scale, reduction="sum")``.
The MoRE reference never handed its temperature to the optimiser; here the temperature is
an ``nn.Parameter`` inside :class:`LogitScale`, so it is trained whenever the module that
owns it is (register it on the LightningModule / model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LogitScale",
    "clip_loss",
    "known_label_targets",
    "label_aware_targets",
    "multi_modal_clip_loss",
    "pair_key",
    "same_label_contrastive",
]

LOG_SCALE_INIT = math.log(1.0 / 0.07)
LOG_SCALE_MAX = math.log(100.0)


class LogitScale(nn.Module):
    """Learnable log-temperature ``log_scale`` (CLIP): logits = exp(log_scale) * cos-sim.

    Initialised to ``log(1/0.07)``; ``forward()`` returns ``log_scale`` clamped to at most
    ``log(100)`` (the clamp passes no gradient while the bound is active, as in CLIP).
    """

    def __init__(self, init: float = LOG_SCALE_INIT, max_log_scale: float = LOG_SCALE_MAX) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init)))
        self.max_log_scale = float(max_log_scale)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log_scale)

    def extra_repr(self) -> str:
        return f"max_log_scale={self.max_log_scale:.4f}"


def _log_scale_tensor(logit_scale: Tensor | nn.Module | float, like: Tensor) -> Tensor:
    """Accept a LogitScale module, a tensor or a float; return a 0-d tensor."""
    if isinstance(logit_scale, nn.Module):
        logit_scale = logit_scale()
    return torch.as_tensor(logit_scale, dtype=torch.float32, device=like.device)


def _zero_with_grad(*tensors: Tensor) -> Tensor:
    """A float32 zero that still has a grad_fn connected to ``tensors`` (if they need grad)."""
    return sum((t.float().sum() * 0.0 for t in tensors), torch.zeros((), device=tensors[0].device))


def clip_loss(
    a: Tensor,
    b: Tensor,
    logit_scale: Tensor | nn.Module | float,
    valid: Tensor | None = None,
    targets: Tensor | None = None,
) -> Tensor:
    """CLIP's symmetric InfoNCE between paired, L2-normalised embeddings ``a`` [N,d], ``b`` [N,d].

    ``logits = exp(logit_scale) * a @ b.T``;
    ``loss = 1/2 [CE(logits, diag) + CE(logits.T, diag)]`` (mean over rows).

    ``valid`` (bool [N]): pairs where either side is missing are dropped (their rows and
    columns removed before the softmax). With fewer than 2 valid pairs there is no negative
    to contrast with: the result is a zero that keeps a grad_fn to the inputs, so DDP /
    ``backward()`` still work. Computed in float32 (safe under AMP).

    ``targets`` ([N, N], optional): soft targets in place of the identity, e.g. from
    :func:`label_aware_targets`; row i is the target distribution of a_i over the b's and
    column j (renormalised) that of b_j over the a's:
    ``loss = 1/2 [-sum T * log_softmax(logits, 1) / N - sum T * log_softmax(logits, 0) / N]``
    with T row- / column-normalised. The identity gives back the hard loss.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"clip_loss expects a, b of equal shape [N, d]; got {tuple(a.shape)} and {tuple(b.shape)}")
    log_scale = _log_scale_tensor(logit_scale, a)
    if valid is not None:
        valid = valid.to(device=a.device, dtype=torch.bool).reshape(-1)
        if valid.numel() != a.shape[0]:
            raise ValueError(f"valid has {valid.numel()} entries for {a.shape[0]} pairs")
        a, b = a[valid], b[valid]
        if targets is not None:
            targets = targets[valid][:, valid]
    if a.shape[0] < 2:
        return _zero_with_grad(a, b, log_scale)
    logits = log_scale.exp() * (a.float() @ b.float().T)
    if targets is None:
        target = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    t = targets.to(device=a.device, dtype=torch.float32)
    rows = -(t / t.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    cols = -(t / t.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return 0.5 * (rows + cols)


def label_aware_targets(labels: Tensor, weight: float) -> Tensor:
    """Soft targets that do not push apart studies with identical findings (the false
    negatives of plain CLIP on clinical data; MedCLIP, Wang et al., EMNLP 2022):
    ``T = (1 - weight) I + weight * E / rowsum(E)`` with ``E_ij = 1`` when studies i and j
    have the same finding vector. ``weight = 0`` is the plain InfoNCE target."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"label-aware weight must be in [0, 1], got {weight}")
    same = (labels[:, None, :] == labels[None, :, :]).all(-1).float()
    eye = torch.eye(len(labels), device=labels.device)
    return (1.0 - weight) * eye + weight * same / same.sum(1, keepdim=True)


def known_label_targets(labels: Tensor, weight: float) -> Tensor:
    """:func:`label_aware_targets` where a study whose findings are unknown (a row of -1:
    no report) matches only itself."""
    unknown = (labels < 0).any(1)
    unique = -1 - torch.arange(len(labels), device=labels.device)[:, None]
    return label_aware_targets(torch.where(unknown[:, None], unique, labels), weight)


def pair_key(pair: tuple[str, str]) -> str:
    """Name of a modality pair in the per-pair loss dict (and MLflow): ``"text-xray"``."""
    return f"{pair[0]}-{pair[1]}"


def multi_modal_clip_loss(
    embeddings: Mapping[str, Tensor],
    pairs: Sequence[tuple[str, str]],
    logit_scale: Tensor | nn.Module | float,
    present: Mapping[str, Tensor] | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    targets: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise CLIP loss over the configured modality pairs (one shared temperature).

    For each pair (m1, m2): ``L = clip_loss(emb[m1], emb[m2], scale, present[m1] & present[m2])``
    (a modality absent from ``present`` counts as present for every sample).
    ``total = mean`` (or ``sum``) of ``L`` over the *active* pairs, i.e. pairs with at least
    2 valid samples in the batch, so a batch without ECGs does not dilute the X-ray-text
    term; with no active pair ``total`` is a zero with a grad_fn.
    Returns ``(total, {pair_key(pair): L})``; inactive pairs appear with a zero loss.
    """
    if not pairs:
        raise ValueError("multi_modal_clip_loss needs at least one modality pair")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    missing = sorted({m for p in pairs for m in p} - set(embeddings))
    if missing:
        raise KeyError(f"no embeddings for modalities {missing}; have {sorted(embeddings)}")
    present = present or {}
    per_pair: dict[str, Tensor] = {}
    active: list[Tensor] = []
    for m1, m2 in pairs:
        a, b = embeddings[m1], embeddings[m2]
        valid = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        for m in (m1, m2):
            if m in present:
                valid = valid & present[m].to(device=a.device, dtype=torch.bool).reshape(-1)
        loss = clip_loss(a, b, logit_scale, valid, targets)
        per_pair[pair_key((m1, m2))] = loss
        if int(valid.sum()) >= 2:
            active.append(loss)
    if not active:
        return _zero_with_grad(*per_pair.values()), per_pair
    total = torch.stack(active).sum()
    return (total / len(active) if reduction == "mean" else total), per_pair


def same_label_contrastive(emb: Tensor, labels: Tensor, logit_scale: Tensor | nn.Module | float,
                           valid: Tensor | None = None) -> Tensor:
    """Supervised contrastive loss within one modality (SupCon's L_out; Khosla et al.,
    NeurIPS 2020): each sample's softmax over the *other* samples of the batch puts its
    target mass uniformly on those with the same finding vector.

    ``loss = mean_i [ -1/|P(i)| sum_{p in P(i)} log softmax_{j != i}(s * e_i . e_j)_p ]``
    over anchors i with at least one positive; ``labels`` rows with a -1 (findings
    unknown) and ``valid == False`` rows take no part. It trains a tower to cluster by
    findings directly, without waiting for the other modality's tower to be informative.
    """
    keep = ~(labels < 0).any(1)
    if valid is not None:
        keep = keep & valid.to(device=emb.device, dtype=torch.bool).reshape(-1)
    e, lab = emb[keep].float(), labels[keep]
    n = e.shape[0]
    log_scale = _log_scale_tensor(logit_scale, e)
    if n < 2:
        return _zero_with_grad(emb, log_scale)
    eye = torch.eye(n, dtype=torch.bool, device=e.device)
    logits = (log_scale.exp() * (e @ e.T)).masked_fill(eye, float("-inf"))
    positive = (lab[:, None, :] == lab[None, :, :]).all(-1) & ~eye
    anchors = positive.any(1)
    if not bool(anchors.any()):
        return _zero_with_grad(emb, log_scale)
    log_prob = F.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    per_anchor = -(log_prob * positive).sum(1) / positive.sum(1).clamp_min(1)
    return per_anchor[anchors].mean()
