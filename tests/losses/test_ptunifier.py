"""PTUnifier objectives against hand computation; whole-word masking against the
tokenizer's own word ids."""

from __future__ import annotations

import numpy as np
import torch

from medmm.losses.ptunifier import itc_loss, itm_loss, sample_hard_negatives, whole_word_mask, word_starts


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def test_itc_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = an @ bn.T / 0.1
    want = -0.5 * (np.diag(_log_softmax(logits)).mean() + np.diag(_log_softmax(logits.T)).mean())
    got = itc_loss(torch.tensor(a), torch.tensor(b), 0.1)
    assert abs(float(got) - want) < 1e-9


def test_itm_loss_matches_hand_computation():
    logits = np.array([[0.2, 1.5], [2.0, -1.0], [0.0, 0.3]])
    match = np.array([1, 0, 0])
    want = -np.mean(_log_softmax(logits)[np.arange(3), match])
    assert abs(float(itm_loss(torch.tensor(logits), torch.tensor(match))) - want) < 1e-9


def test_hard_negatives_follow_similarity_and_skip_partners_and_duplicates():
    sim = torch.full((4, 4), -50.0)
    sim.fill_diagonal_(50.0)
    sim[0, 2] = sim[1, 3] = sim[2, 0] = sim[3, 1] = 40.0  # the hardest negatives
    sim[0, 1] = 45.0  # harder still, but text 1 is the same report as text 0
    same = torch.eye(4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    gen = torch.Generator().manual_seed(0)
    neg_txt, neg_img = sample_hard_negatives(sim, same, gen)
    assert neg_txt.tolist() == [2, 3, 0, 1]
    assert neg_img.tolist() == [2, 3, 0, 1]
    # Uniform similarities: drawn from the other rows only, all of them eventually.
    drawn = set()
    for _ in range(50):
        t, i = sample_hard_negatives(torch.zeros(3, 3), None, gen)
        assert (t != torch.arange(3)).all() and (i != torch.arange(3)).all()
        drawn.update(zip(range(3), t.tolist()))
    assert len(drawn) == 6


def test_word_boundaries_equal_the_tokenizer_word_ids(tokenizer):
    starts = word_starts(tokenizer)
    text = "Bibasilar atelectasis; cardiomegaly with pneumothorax and XXXX-XXXX granulomas."
    enc = tokenizer(text)
    ids, word_ids = enc["input_ids"], enc.word_ids()
    ours = [None if i in tokenizer.all_special_ids else 0 for i in ids]
    w = -1
    for pos, i in enumerate(ids):
        if ours[pos] is not None:
            w += int(starts[i])
            ours[pos] = w
    assert ours == word_ids


def test_whole_word_masking_masks_whole_words_at_15_percent(tokenizer):
    from tests.conftest import REPORTS

    texts = REPORTS * 60
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    gen = torch.Generator().manual_seed(0)
    masked, labels = whole_word_mask(ids, mask, word_starts(tokenizer), list(tokenizer.all_special_ids),
                                     tokenizer.mask_token_id, len(tokenizer), 0.15, gen)
    chosen = labels != -100
    assert (labels[chosen] == ids[chosen]).all()
    assert not chosen[torch.isin(ids, torch.tensor(tokenizer.all_special_ids))].any()
    assert not chosen[mask == 0].any()
    words_total = words_masked = 0
    for r, text in enumerate(texts):
        word_ids = tokenizer(text).word_ids()
        per_word: dict[int, set[bool]] = {}
        for pos, w in enumerate(word_ids):
            if w is not None:
                per_word.setdefault(w, set()).add(bool(chosen[r, pos]))
        assert all(len(v) == 1 for v in per_word.values()), "a word was masked only in part"
        words_total += len(per_word)
        words_masked += sum(v == {True} for v in per_word.values())
    assert 0.12 <= words_masked / words_total <= 0.2
    replaced = masked[chosen]
    frac_mask = float((replaced == tokenizer.mask_token_id).float().mean())
    frac_kept = float((replaced == ids[chosen]).float().mean())
    assert 0.7 < frac_mask < 0.9 and 0.03 < frac_kept < 0.2
    assert (masked[~chosen] == ids[~chosen]).all()
