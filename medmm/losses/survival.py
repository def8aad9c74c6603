"""Survival losses: Cox partial likelihood (Efron or Breslow ties), the discrete-time
hazard NLL of MCAT / CMTA, and the CMTA L1 alignment to stop-gradient targets."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["alignment_l1", "cox_partial_nll", "discrete_time_nll"]


def cox_partial_nll(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                    ties: Literal["efron", "breslow"] = "efron") -> torch.Tensor:
    """Negative log partial likelihood of a Cox model, divided by the number of events.

    For each distinct event time t_j with d_j events D_j and risk set R_j (Efron 1977):
        log L = sum_j [ sum_{i in D_j} r_i - sum_{l=0}^{d_j-1} log( sum_{k in R_j} e^{r_k}
                                                              - l/d_j sum_{i in D_j} e^{r_i} ) ]
    Breslow drops the l/d_j correction. Vectorised over event times; stabilised by the max.
    """
    r = risk.reshape(-1)
    time = time.reshape(-1).to(r.dtype)
    event = event.reshape(-1).bool()
    if not event.any():
        return r.sum() * 0.0  # no event in the batch: no information, zero gradient
    shift = r.detach().max()
    w = torch.exp(r - shift)
    event_times = torch.unique(time[event])  # [J]
    at_risk = (time[None, :] >= event_times[:, None]).to(r.dtype)  # [J, n]
    tied = ((time[None, :] == event_times[:, None]) & event[None, :]).to(r.dtype)  # [J, n]
    d = tied.sum(1)  # [J]
    s_risk = at_risk @ w
    s_tied = tied @ w
    if ties == "efron":
        l = torch.arange(int(d.max().item()), dtype=r.dtype, device=r.device)[None, :]  # [1, Dmax]
        valid = l < d[:, None]
        frac = torch.where(valid, l / d[:, None], torch.zeros_like(l))
        denom = torch.log(s_risk[:, None] - frac * s_tied[:, None]) + shift
        log_denoms = (denom * valid).sum(1)
    elif ties == "breslow":
        log_denoms = d * (torch.log(s_risk) + shift)
    else:
        raise ValueError(f"ties must be 'efron' or 'breslow', got {ties!r}")
    log_lik = (tied @ r) - log_denoms
    return -log_lik.sum() / d.sum()


def discrete_time_nll(logits: torch.Tensor, bin_index: torch.Tensor, censored: torch.Tensor,
                      alpha: float = 0.0, eps: float = 1e-7) -> torch.Tensor:
    """Discrete-time hazard NLL of MCAT / CMTA (after Zadeh & Schmid 2020), mean over the batch.

    h = sigmoid(logits) over K bins, S(k) = prod_{j<=k} (1 - h_j), S(-1) = 1; y the bin of the
    event or censoring time, c = 1 when censored:
        loss = -(1-c) [log S(y-1) + log h(y)] - c log S(y)
    ``alpha`` up-weights the uncensored term: (1-alpha) * loss + alpha * uncensored term.
    """
    y = bin_index.reshape(-1, 1).long()
    c = censored.reshape(-1, 1).to(logits.dtype)
    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)  # surv_pad[:, k] = S(k-1)
    s_before = torch.gather(surv_pad, 1, y).clamp_min(eps)
    h_at = torch.gather(hazards, 1, y).clamp_min(eps)
    s_at = torch.gather(surv_pad, 1, y + 1).clamp_min(eps)
    uncensored = -(1 - c) * (torch.log(s_before) + torch.log(h_at))
    censored_term = -c * torch.log(s_at)
    loss = (1 - alpha) * (uncensored + censored_term) + alpha * uncensored
    return loss.mean()


def alignment_l1(translated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CMTA alignment: L1 between a translated representation and its modality's own
    representation, the latter a stop-gradient target (it is not pulled toward the
    translation; only the translator learns)."""
    return F.l1_loss(translated, target.detach())
