"""Contrastive losses over the global batch under DDP: every process's embeddings are
gathered *with* gradients and each process computes the loss of its own rows against all
columns (open_clip's ``gather_with_grad=True, local_loss=True``).

Why this gives the single-process gradients: ``torch.distributed.nn.all_gather`` sums, in
its backward, the gradients every process computed for a rank's rows, and DDP averages
parameter gradients over the W processes. Each process returns
``W * (sum of its rows' losses) / (global row count)``, so the mean over processes equals
the single-process loss on the concatenated batch, and so do the averaged gradients.
Every process must hold the same number of rows (training uses ``drop_last``).

Without an initialised process group (or with one process) these are the ordinary
single-process losses on the local batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed._functional_collectives import all_gather_single

from medmm.losses.contrastive import _log_scale_tensor, _zero_with_grad, known_label_targets, pair_key
from medmm.losses.symile import Negatives, symile_logits

__all__ = ["gather_no_grad", "gather_with_grad", "gathered_clip_loss", "gathered_symile_loss", "world"]


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every process's ``x`` along dim 0; gradients flow back to each owner (the
    backward sums every process's gradient for a rank's rows and scatters it to that rank).
    PyTorch's functional collective, which it names as the replacement of the deprecated
    ``torch.distributed.nn.functional.all_gather``."""
    if world()[1] == 1:
        return x
    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)


def gather_no_grad(x: Tensor) -> Tensor:
    if world()[1] == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def _rows_loss(logits: Tensor, targets: Tensor | None, positive: Tensor) -> Tensor:
    """Sum over rows of the cross-entropy against the hard positive or soft target rows."""
    if targets is None:
        return F.cross_entropy(logits, positive, reduction="sum")
    t = targets / targets.sum(1, keepdim=True)
    return -(t * F.log_softmax(logits, dim=1)).sum()


def gathered_clip_loss(
    embeddings: Mapping[str, Tensor],
    pairs: Sequence[tuple[str, str]],
    logit_scale: Tensor | nn.Module | float,
    present: Mapping[str, Tensor] | None = None,
    labels: Tensor | None = None,
    label_aware_weight: float = 0.0,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`medmm.losses.contrastive.multi_modal_clip_loss` over the global batch.

    ``labels`` ([n, F], -1 rows = unknown) with ``label_aware_weight`` > 0 give the
    label-aware soft targets of the global batch (unknown rows keep the hard target).
    Under DDP each process returns its share (see the module doc), not the global value."""
    rank, size = world()
    present = present or {}
    first = next(iter(embeddings.values()))
    n = first.shape[0]
    offset = rank * n
    log_scale = _log_scale_tensor(logit_scale, first)
    scale = log_scale.exp()
    emb_all = {m: gather_with_grad(e.float()) for m, e in embeddings.items()}
    ones = torch.ones(n, dtype=torch.bool, device=first.device)
    present_all = {m: gather_no_grad(present.get(m, ones).to(first.device, torch.bool).reshape(-1)) for m in embeddings}
    labels_all = None
    if labels is not None and label_aware_weight > 0:
        labels_all = gather_no_grad(labels.to(first.device))
    per_pair: dict[str, Tensor] = {}
    active: list[Tensor] = []
    local = torch.arange(offset, offset + n, device=first.device)
    for m1, m2 in pairs:
        valid_all = present_all[m1] & present_all[m2]
        n_valid = int(valid_all.sum())
        if n_valid < 2:
            per_pair[pair_key((m1, m2))] = _zero_with_grad(embeddings[m1], embeddings[m2], log_scale)
            continue
        # positions of this process's valid rows among the globally valid ones
        position = torch.cumsum(valid_all.long(), 0) - 1
        rows = local[valid_all[local]]
        pos = position[rows]
        targets = None
        if labels_all is not None:
            # built on the whole batch, then restricted (as multi_modal_clip_loss does)
            t = known_label_targets(labels_all, label_aware_weight)[valid_all][:, valid_all]
            targets = (t[pos], t.T[pos])  # a-rows over b's, b-rows over a's (column-normalised T)
        a_all, b_all = emb_all[m1][valid_all], emb_all[m2][valid_all]
        a_loc, b_loc = emb_all[m1][rows], emb_all[m2][rows]
        ab = _rows_loss(scale * a_loc @ b_all.T, targets[0] if targets else None, pos)
        ba = _rows_loss(scale * b_loc @ a_all.T, targets[1] if targets else None, pos)
        loss = 0.5 * (ab + ba) * size / n_valid
        per_pair[pair_key((m1, m2))] = loss
        active.append(loss)
    if not active:
        return _zero_with_grad(*per_pair.values()), per_pair
    total = torch.stack(active).sum()
    return (total / len(active) if reduction == "mean" else total), per_pair


def gathered_symile_loss(reps: Sequence[Tensor], logit_scale: Tensor | nn.Module | float,
                         negatives: Negatives = "n", generator: torch.Generator | None = None) -> Tensor:
    """:func:`medmm.losses.symile.symile_loss` over the global batch (local anchors
    against gathered candidates). ``generator`` must be seeded identically on every
    process so that all draw the same O(N) shuffles."""
    rank, size = world()
    n = reps[0].shape[0]
    log_scale = _log_scale_tensor(logit_scale, reps[0])
    reps_all = [gather_with_grad(r.float() if r.dtype in (torch.float16, torch.bfloat16) else r) for r in reps]
    n_all = reps_all[0].shape[0]
    losses = []
    for i in range(len(reps)):
        anchor = reps_all[i][rank * n : (rank + 1) * n]
        others = [r for j, r in enumerate(reps_all) if j != i]
        perms = None
        if negatives == "n":
            perms = [torch.randperm(n_all, generator=generator).to(anchor.device) for _ in others]
        logits, target = symile_logits(anchor, others, negatives, row_offset=rank * n, perms=perms)
        scale = log_scale.to(logits.dtype).exp()
        losses.append(F.cross_entropy(scale * logits, target, reduction="sum") * size / n_all)
    return torch.stack(losses).mean()
