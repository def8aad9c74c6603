"""PTUnifier's pretraining objectives: image-text contrastive (ITC), image-text matching
(ITM) with hard negatives drawn from the ITC similarities (as ALBEF does), and masked
language modelling (MLM) with whole-word masking.

Chen et al., ICCV 2023 (weights ITM 0.5, MLM 1.0, ITC 0.1; ITC temperature 0.1);
Li et al., "Align before Fuse" (ALBEF), NeurIPS 2021, for hard-negative sampling;
Devlin et al., BERT (80 / 10 / 10 replacement of the selected tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["itc_loss", "itm_loss", "mlm_loss", "sample_hard_negatives", "whole_word_mask", "word_starts"]


def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised [B, d] embeddings; row i of each is a pair."""
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def sample_hard_negatives(sim: torch.Tensor, same: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative text per image and one negative image per text, drawn with probability
    softmax(similarity) over the batch without the true partner (ALBEF).

    ``sim`` [B, B]: image i vs text j. ``same`` [B, B] bool marks candidates that are not
    true negatives (identical reports) and are never drawn, unless nothing else is left.
    Returns (text index for each image, image index for each text)."""
    n = len(sim)
    if n < 2:
        raise ValueError("hard negatives need a batch of at least 2 pairs")
    forbidden = torch.eye(n, dtype=torch.bool, device=sim.device)
    allowed = ~(forbidden | same) if same is not None else ~forbidden

    def draw(s: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        ok = torch.where(ok.any(1, keepdim=True), ok, ~forbidden)  # only duplicates left: any other
        weights = torch.softmax(s.float(), dim=1) * ok
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, ok.float())  # underflow
        return torch.multinomial(weights, 1, generator=generator)[:, 0]

    with torch.no_grad():
        return draw(sim, allowed), draw(sim.T, allowed.T)


def itm_loss(logits: torch.Tensor, is_match: torch.Tensor) -> torch.Tensor:
    """Two-way cross-entropy of [N, 2] logits against [N] match labels (1 = matched)."""
    return F.cross_entropy(logits, is_match.long())


def word_starts(tokenizer) -> torch.Tensor:
    """[vocab] bool: True where a token starts a word. A WordPiece continuation piece ("##x")
    never does, so this reproduces the fast tokenizer's ``word_ids()`` boundaries."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([not t.startswith("##") for t in vocab], dtype=torch.bool)


def whole_word_mask(ids: torch.Tensor, attention: torch.Tensor, starts: torch.Tensor, special_ids: list[int],
                    mask_id: int, vocab_size: int, probability: float = 0.15,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking: in each sequence round(probability x words) words (at least one)
    are drawn; all their tokens become MLM targets, and are replaced by [MASK] (80%), a
    random token (10%) or left as they are (10%).

    Returns (masked ids, labels with -100 where no prediction is made)."""
    device = ids.device
    special = torch.isin(ids, torch.tensor(special_ids, device=device))
    valid = attention.bool() & ~special
    is_start = valid & starts.to(device)[ids]
    # A continuation piece right after a special token (truncation) starts a word too.
    prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)
    is_start = is_start | (valid & ~prev_valid)
    word = torch.where(valid, is_start.long().cumsum(1) - 1, torch.full_like(ids, -1))
    n_words = is_start.sum(1)
    n_mask = torch.clamp((n_words.float() * probability).round().long(), min=1)
    n_mask = torch.minimum(n_mask, n_words)
    max_words = max(int(n_words.max()), 1)
    keys = torch.rand(len(ids), max_words, generator=generator).to(device)
    keys = keys.masked_fill(torch.arange(max_words, device=device)[None] >= n_words[:, None], 2.0)
    rank = keys.argsort(1).argsort(1)
    chosen_word = rank < n_mask[:, None]
    chosen = valid & chosen_word.gather(1, word.clamp(min=0))
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    u = torch.rand(ids.shape, generator=generator).to(device)
    random_tokens = torch.randint(vocab_size, ids.shape, generator=generator).to(device)
    masked = torch.where(chosen & (u < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(chosen & (u >= 0.8) & (u < 0.9), random_tokens, masked)
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the masked positions only; ``logits`` [M, V] for the M positions
    where ``labels`` [B, L] is not -100 (in row-major order)."""
    return F.cross_entropy(logits, labels[labels != -100])
