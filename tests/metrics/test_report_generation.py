"""Report-generation metrics against independent computations on fixed strings:
sacrebleu BLEU vs nltk and a hand count, rouge-score vs a hand LCS, pycocoevalcap CIDEr-D
vs the paper's formula written out here, clinical efficacy vs sklearn."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from medmm.metrics.report_generation import bleu_scores, cider, clinical_efficacy, findings_prf, rouge_l, tokenize

HYPS = ["The heart is normal in size. No pleural effusion or pneumothorax.",
        "Small left pleural effusion. The lungs are otherwise clear.",
        "Cardiomegaly with mild pulmonary edema. No focal consolidation."]
REFS = ["Heart size is normal. No pleural effusion or pneumothorax is seen.",
        "There is a small left pleural effusion. Lungs are clear.",
        "Stable cardiomegaly. Mild interstitial pulmonary edema. No consolidation."]


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("No XXXX effusion, stable.") == ["no", "xxxx", "effusion", ",", "stable", "."]


def test_bleu_matches_nltk_corpus_bleu():
    from nltk.translate.bleu_score import corpus_bleu

    ours = bleu_scores(HYPS, REFS)
    hyp_tokens = [tokenize(h) for h in HYPS]
    ref_tokens = [[tokenize(r)] for r in REFS]
    for n in range(1, 5):
        theirs = corpus_bleu(ref_tokens, hyp_tokens, weights=tuple([1.0 / n] * n))
        assert ours[f"bleu{n}"] == pytest.approx(theirs, abs=1e-6), n


def test_bleu1_by_hand():
    # clipped unigram matches: the x2, cat, on, mat = 5 of 6; equal lengths -> no brevity penalty
    assert bleu_scores(["the cat sat on the mat"], ["the cat is on the mat"])["bleu1"] == pytest.approx(5 / 6)
    # a hypothesis of 3 tokens against 6: precision 1, brevity penalty exp(1 - 6/3)
    assert bleu_scores(["the cat is"], ["the cat is on the mat"])["bleu1"] == pytest.approx(math.exp(-1))


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_by_hand():
    assert rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)  # LCS a c d: P = R = 3/4
    expected = []
    for h, r in zip(HYPS, REFS):
        lcs = _lcs(tokenize(h), tokenize(r))
        p, rec = lcs / len(tokenize(h)), lcs / len(tokenize(r))
        expected.append(2 * p * rec / (p + rec))
    assert rouge_l(HYPS, REFS) == pytest.approx(np.mean(expected))


def _cider_d_by_formula(hyps: list[str], refs: list[str], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al., 2015): per n = 1..4, tf-idf n-gram vectors (idf from the
    reference corpus), hypothesis counts clipped to the reference's, cosine-like product,
    Gaussian length penalty; mean over n, x10, mean over images (one reference each)."""
    def grams(tokens, n):
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    ref_tok, hyp_tok = [tokenize(r) for r in refs], [tokenize(h) for h in hyps]
    n_docs = len(refs)
    df = Counter(g for t in ref_tok for n in range(1, 5) for g in set(grams(t, n)))
    scores = []
    for h, r in zip(hyp_tok, ref_tok):
        per_n = []
        for n in range(1, 5):
            vh = {g: c * (math.log(n_docs) - math.log(max(1.0, df[g]))) for g, c in grams(h, n).items()}
            vr = {g: c * (math.log(n_docs) - math.log(max(1.0, df[g]))) for g, c in grams(r, n).items()}
            norm_h = math.sqrt(sum(v * v for v in vh.values()))
            norm_r = math.sqrt(sum(v * v for v in vr.values()))
            dot = sum(min(vh[g], vr[g]) * vr[g] for g in vh if g in vr)
            sim = dot / (norm_h * norm_r) if norm_h and norm_r else 0.0
            per_n.append(sim * math.exp(-((len(h) - len(r)) ** 2) / (2 * sigma ** 2)))
        scores.append(10.0 * np.mean(per_n))
    return float(np.mean(scores))


def test_cider_matches_the_formula():
    assert cider(HYPS, REFS) == pytest.approx(_cider_d_by_formula(HYPS, REFS), rel=1e-6)
    # a perfect copy scores higher than any of the paraphrases
    assert cider(REFS, REFS) > cider(HYPS, REFS)


def test_findings_prf_matches_sklearn():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(0)
    true = rng.random((40, 9)) < 0.3
    pred = rng.random((40, 9)) < 0.3
    pred[:, 8] = true[:, 8] = False  # a finding neither side has: left out of the macro average
    ours = findings_prf(pred, true)
    p, r, f, _ = precision_recall_fscore_support(true, pred, average="micro", zero_division=0)
    assert (ours["ce_precision"], ours["ce_recall"], ours["ce_f1"]) == pytest.approx((p, r, f))
    p, r, f, _ = precision_recall_fscore_support(true, pred, average="macro", labels=list(range(8)), zero_division=0)
    assert (ours["ce_macro_precision"], ours["ce_macro_recall"], ours["ce_macro_f1"]) == pytest.approx((p, r, f))


def test_clinical_efficacy_reads_findings_with_negation():
    refs = ["Cardiomegaly. Small left pleural effusion.", "No acute cardiopulmonary abnormality."]
    same = clinical_efficacy(refs, refs)
    assert same["ce_f1"] == 1.0
    # generated: effusion negated, cardiomegaly kept, a pneumothorax invented
    gen = ["The heart is enlarged. No pleural effusion.", "Small right pneumothorax."]
    ce = clinical_efficacy(gen, refs)
    assert ce["ce_precision"] == pytest.approx(1 / 2)  # cardiomegaly right, pneumothorax wrong
    assert ce["ce_recall"] == pytest.approx(1 / 2)  # effusion missed
    with pytest.raises(ValueError):
        clinical_efficacy(gen, refs[:1])
