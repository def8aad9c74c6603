"""Report-generation metrics: BLEU-1..4 (sacrebleu), ROUGE-L (rouge-score), CIDEr-D
(pycocoevalcap's scorer) and clinical efficacy (precision / recall / F1 of the findings
that medmm's report labeler reads in the generated report against the reference).

Every text metric sees the same tokenisation (lower-cased words and punctuation marks,
``tokenize``), as the captioning convention does (the COCO toolkit's PTB tokeniser needs
Java; pycocoevalcap's CIDEr scorer itself is pure Python and is used directly on our
tokens). BLEU-n is corpus BLEU with uniform weights over 1..n-grams and the brevity
penalty (Papineni et al., 2002), without smoothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from medmm.io.labeler import label_report

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks ("XXXX" redactions stay words)."""
    return _TOKEN.findall(text.lower())


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} generated reports but {len(refs)} references")
    if not hyps:
        raise ValueError("no reports to score")


def bleu_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 in [0, 1] (sacrebleu on pre-tokenised, lower-cased text)."""
    from sacrebleu.metrics import BLEU

    _check(hyps, refs)
    h = [" ".join(tokenize(t)) for t in hyps]
    r = [[" ".join(tokenize(t)) for t in refs]]
    return {f"bleu{n}": BLEU(max_ngram_order=n, tokenize="none", smooth_method="none",
                             effective_order=False).corpus_score(h, r).score / 100.0 for n in range(1, 5)}


class _Tokens:  # rouge-score's tokenizer protocol: tokenize(text) -> list[str]
    @staticmethod
    def tokenize(text: str) -> list[str]:
        return tokenize(text)


def rouge_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over pairs (rouge-score, on our tokens):
    ``{"rouge1", "rouge2", "rouge_l"}``."""
    from rouge_score import rouge_scorer

    _check(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Tokens())
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    return {name: float(np.mean([s[key].fmeasure for s in scores]))
            for name, key in (("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rouge_l", "rougeL"))}


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over report pairs (rouge-score, on our tokens)."""
    return rouge_scores(hyps, refs)["rouge_l"]


def cider(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus CIDEr-D (Vedantam et al., 2015; pycocoevalcap's scorer, one reference each).
    Document frequencies come from the references of the scored corpus, as in the toolkit."""
    from pycocoevalcap.cider.cider import Cider

    _check(hyps, refs)
    gts = {i: [" ".join(tokenize(r))] for i, r in enumerate(refs)}
    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hyps)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def clinical_efficacy(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Micro- and macro-averaged precision / recall / F1 of the labeler's positive
    findings in the generated reports against those of the references.
    A finding absent from both sides of every pair is left out of the macro average."""
    _check(hyps, refs)
    pred = np.stack([label_report(t).as_vector() for t in hyps]).astype(bool)
    true = np.stack([label_report(t).as_vector() for t in refs]).astype(bool)
    return findings_prf(pred, true)


def findings_prf(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """P/R/F1 of binary finding matrices [N, F] (micro over all cells; macro over the
    findings present in ``pred`` or ``true``). 0/0 counts as 0, as sklearn's zero_division=0."""
    def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    micro = prf(tp.sum(), fp.sum(), fn.sum())
    used = np.flatnonzero(pred.any(0) | true.any(0))
    per = np.array([prf(tp[j], fp[j], fn[j]) for j in used]) if len(used) else np.zeros((1, 3))
    macro = per.mean(0)
    return {"ce_precision": micro[0], "ce_recall": micro[1], "ce_f1": micro[2],
            "ce_macro_precision": float(macro[0]), "ce_macro_recall": float(macro[1]), "ce_macro_f1": float(macro[2])}


def report_generation_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """All metrics of one system on one split."""
    out = {**bleu_scores(hyps, refs), "rouge_l": rouge_l(hyps, refs), "cider": cider(hyps, refs)}
    out.update(clinical_efficacy(hyps, refs))
    return {k: float(v) for k, v in out.items()}
