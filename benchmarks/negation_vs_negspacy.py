"""Negation in medmm's report labeler against negspacy (NegEx as a spaCy component) on the
Indiana University chest X-ray reports.

Mentions: every finding mention that :func:`medmm.io.labeler.find_mentions` finds in the
FINDINGS + IMPRESSION text of the IU reports. Both systems judge the same mention in the
same sentence: negspacy gets medmm's mention span as the sentence's only entity
(``spacy.blank("en")`` + ``sentencizer`` + ``negex`` with a clinical termset), so only
the negation decision differs, not mention finding or sentence splitting.

Reported (``benchmarks/results/negation_vs_negspacy.json``):

* agreement of the two on every mention, and the count of each kind of disagreement;
* precision / recall / F1 / accuracy of "negated" against the hand-labelled sample in
  ``tests/io/data/negation_gold.jsonl``: 200 mentions, 100 drawn at random from the
  mentions where medmm and negspacy (``en_clinical``) agreed and 100 from those where they
  disagreed. Each row carries ``weight`` = stratum size / stratum sample size, so weighted
  counts estimate the figures over all mentions; a stratified bootstrap gives 95%
  intervals of the difference. Gold classes: ``negated`` (stated absent, resolved or
  removed), ``affirmed`` (present, including stable / improving), ``uncertain`` (hedged:
  "may represent", "A versus B", "cannot exclude"), ``hypothetical`` (only asked about:
  "evaluation for pneumothorax is limited"). "Negated" is the first class; a second score
  also counts hypothetical mentions as negated.

Needs spaCy and negspacy, which medmm does not depend on::

    pip install spacy negspacy
    python benchmarks/negation_vs_negspacy.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np

from medmm.demo.iu_reports import default_iu_source, load_iu_reports
from medmm.io.labeler import Mention, find_mentions, split_sentences
from medmm.training.precision import cpu_identity

REPO = Path(__file__).resolve().parent.parent
GOLD = REPO / "tests" / "io" / "data" / "negation_gold.jsonl"
TERMSETS = ("en_clinical", "en_clinical_sensitive")
SAMPLED_WITH = "en_clinical"  # the termset whose disagreements defined the gold sample's strata


def load_gold(path: Path = GOLD) -> list[dict]:
    """The hand-labelled (finding, sentence, span) rows."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def medmm_negated(row: dict) -> bool | None:
    """medmm's negation of the gold row's mention (matched by finding and overlapping span),
    None when the labeler no longer finds that mention."""
    for m in find_mentions(row["sentence"]):
        if m.finding == row["finding"] and m.start < row["end"] and row["start"] < m.end:
            return m.negated
    return None


def weighted_scores(predicted: list[bool], rows: list[dict], negated: frozenset[str] = frozenset({"negated"})) -> dict:
    """Precision / recall / F1 / accuracy of "negated", each row counting its ``weight``
    (an estimate over every mention), and the unweighted counts."""
    gold = np.array([r["gold"] in negated for r in rows])
    pred = np.array(predicted, dtype=bool)
    w = np.array([r["weight"] for r in rows])
    tp, fp, fn = (float(w[pred & gold].sum()), float(w[pred & ~gold].sum()), float(w[~pred & gold].sum()))
    precision, recall = tp / max(tp + fp, 1e-12), tp / max(tp + fn, 1e-12)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "accuracy": float(w[pred == gold].sum() / w.sum()),
        "sample_tp_fp_fn_tn": [int((pred & gold).sum()), int((pred & ~gold).sum()), int((~pred & gold).sum()),
                               int((~pred & ~gold).sum())],
    }


def _iu_mentions() -> list[tuple[str, Mention]]:
    """(sentence, mention) for every mention in FINDINGS + IMPRESSION of the IU reports."""
    out = []
    for report in load_iu_reports(default_iu_source()):
        text = "\n\n".join(report.sections[k] for k in ("FINDINGS", "IMPRESSION") if k in report.sections)
        if text:
            sentences = split_sentences(text)
            out.extend((sentences[m.sentence], m) for m in find_mentions(text))
    return out


def _negspacy(termset_name: str):
    """A function (sentence, start, end, finding) -> negated, by negspacy's Negex."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
    from negspacy.termsets import termset

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("negex", config={"neg_termset": termset(termset_name).get_patterns()})

    def negated(sentence: str, start: int, end: int, finding: str) -> bool:
        doc = nlp.make_doc(sentence)
        doc.ents = [doc.char_span(start, end, label=finding, alignment_mode="expand")]
        for _, component in nlp.pipeline:
            doc = component(doc)
        return bool(doc.ents[0]._.negex)

    return negated


def _bootstrap_difference(a: list[bool], b: list[bool], rows: list[dict], n: int, seed: int = 0) -> dict:
    """95% intervals of (a - b) in F1 and accuracy, resampling rows within each stratum."""
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero([r["stratum"] == s for r in rows]) for s in sorted({r["stratum"] for r in rows})]
    diffs = {"f1": [], "accuracy": []}
    for _ in range(n):
        idx = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
        sub = [rows[i] for i in idx]
        sa, sb = weighted_scores([a[i] for i in idx], sub), weighted_scores([b[i] for i in idx], sub)
        for k in diffs:
            diffs[k].append(sa[k] - sb[k])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in diffs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the gold sample")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/negation_vs_negspacy.json"))
    args = parser.parse_args()
    import spacy

    t0 = time.perf_counter()
    mentions = _iu_mentions()
    medmm_s = time.perf_counter() - t0
    rows = load_gold()
    ours = [medmm_negated(r) for r in rows]
    missing = sum(v is None for v in ours)
    ours = [bool(v) for v in ours]

    agreed = [r for r in rows if r["stratum"] == "agree"]
    agreed_errors = sum(medmm_negated(r) != (r["gold"] == "negated") for r in agreed)
    result: dict = {
        "mentions": len(mentions),
        "medmm_seconds_all_mentions": round(medmm_s, 2),
        "gold_sample": {"rows": len(rows), "by_stratum": dict(Counter(r["stratum"] for r in rows)),
                        "gold_classes": dict(Counter(r["gold"] for r in rows)),
                        "stratified_on_termset": SAMPLED_WITH, "mentions_not_found_by_medmm": missing,
                        # both systems are wrong together on these; 0 of n bounds the rate by ~3 / n (95%)
                        "agreed_rows_wrong": agreed_errors,
                        "agreed_error_rate_95_upper": (3 / len(agreed)) if agreed_errors == 0 else None},
        "medmm": {"negated_mentions": sum(m.negated for _, m in mentions),
                  "gold": weighted_scores(ours, rows),
                  "gold_hypothetical_as_negated": weighted_scores(ours, rows, frozenset({"negated", "hypothetical"}))},
        "negspacy": {},
        "versions": {"spacy": spacy.__version__, "negspacy": version("negspacy")},
        "machine": {"cpu_model": cpu_identity()["cpu_model"], "cores": os.cpu_count()},
    }
    for name in TERMSETS:
        negated = _negspacy(name)
        t0 = time.perf_counter()
        theirs_all = [negated(s, m.start, m.end, m.finding) for s, m in mentions]
        seconds = time.perf_counter() - t0
        pairs = Counter((m.negated, n) for (_, m), n in zip(mentions, theirs_all))
        theirs = [negated(r["sentence"], r["start"], r["end"], r["finding"]) for r in rows]
        wins = [r for r, a, b in zip(rows, ours, theirs) if a != b]
        result["negspacy"][name] = {
            "seconds_all_mentions": round(seconds, 2),
            "negated_mentions": sum(theirs_all),
            "agreement_with_medmm": (pairs[(True, True)] + pairs[(False, False)]) / len(mentions),
            "medmm_only_negated": pairs[(True, False)],
            "negspacy_only_negated": pairs[(False, True)],
            "gold": weighted_scores(theirs, rows),
            "gold_hypothetical_as_negated": weighted_scores(theirs, rows, frozenset({"negated", "hypothetical"})),
            "gold_disagreements": {
                "medmm_right": sum((a == (r["gold"] == "negated")) for r, a, b in zip(rows, ours, theirs) if a != b),
                "negspacy_right": sum((b == (r["gold"] == "negated")) for r, a, b in zip(rows, ours, theirs) if a != b),
                "rows": len(wins),
            },
            "medmm_minus_negspacy_95ci": _bootstrap_difference(ours, theirs, rows, args.bootstrap),
        }
        # sentences where negspacy is right and medmm is not: what adopting it would fix
        result["negspacy"][name]["negspacy_right_examples"] = sorted({
            f"{r['finding']}: {r['sentence']}" for r, a, b in zip(rows, ours, theirs)
            if a != b and b == (r["gold"] == "negated")})
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("mentions", "gold_sample")}, indent=1))
    for system, scores in [("medmm", result["medmm"]["gold"])] + [
            (f"negspacy[{n}]", result["negspacy"][n]["gold"]) for n in TERMSETS]:
        print(f"{system:32s} P={scores['precision']:.3f} R={scores['recall']:.3f} F1={scores['f1']:.3f} "
              f"acc={scores['accuracy']:.4f}")


if __name__ == "__main__":
    main()
