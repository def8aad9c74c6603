"""The labeler's negation against a hand-labelled sample of IU report mentions
(tests/io/data/negation_gold.jsonl), scored as benchmarks/negation_vs_negspacy.py scores it.

The sample: 200 (finding, sentence, span) mentions drawn at random from the 13,546 mentions
the labeler finds in the IU reports, 100 where medmm and negspacy (NegEx, ``en_clinical``)
agreed on negation and 100 where they disagreed; each row's ``weight`` is the size of its
stratum over the stratum's sample size. The benchmark (which needs spaCy and negspacy)
compares the two; this test needs neither."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from medmm.io.findings import FINDINGS
from medmm.io.labeler import split_sentences
from tests.conftest import load_benchmark

bench = load_benchmark("negation_vs_negspacy")

GOLD_CLASSES = {"negated", "affirmed", "uncertain", "hypothetical"}


@pytest.fixture(scope="module")
def gold() -> list[dict]:
    return bench.load_gold()


def test_gold_sample_is_well_formed(gold):
    assert Counter(r["stratum"] for r in gold) == {"agree": 100, "disagree": 100}
    for r in gold:
        assert set(r) == {"finding", "sentence", "start", "end", "gold", "stratum", "weight"}
        assert r["finding"] in FINDINGS and r["gold"] in GOLD_CLASSES
        assert 0 <= r["start"] < r["end"] <= len(r["sentence"])
        assert split_sentences(r["sentence"]) == [r["sentence"]]  # one sentence, as the labeler splits
        # public IU text only: no report id, path or file name
        assert not re.search(r"CXR\d+|[/\\]\w+\.\w{2,4}\b|\.(?:xml|dcm|txt)\b", r["sentence"], re.IGNORECASE)
    # one weight per stratum: its population over its sample size
    weights = {s: {r["weight"] for r in gold if r["stratum"] == s} for s in ("agree", "disagree")}
    assert all(len(w) == 1 for w in weights.values())
    assert weights["agree"].pop() * 100 + weights["disagree"].pop() * 100 == pytest.approx(13546)


def test_labeler_negation_against_the_hand_labels(gold):
    """Measured (benchmarks/results/negation_vs_negspacy.json): precision 0.999, recall
    1.000 of "negated" over all mentions (weighted); 3 of 200 sample rows wrong, all
    positive-looking negations: a study compared with a prior ("the effusion is not
    XXXX to be significantly different"), a recommendation ("to allow clearing of
    opacities"), and a question ("evaluation for pneumothorax is limited")."""
    ours = [bench.medmm_negated(r) for r in gold]
    assert None not in ours, "a gold mention is no longer found by the labeler"
    scores = bench.weighted_scores(ours, gold)
    assert scores["recall"] >= 0.995 and scores["precision"] >= 0.995, scores
    wrong = [r["sentence"] for r, neg in zip(gold, ours) if neg != (r["gold"] == "negated")]
    assert len(wrong) <= 3, wrong


def test_weighted_scores_by_hand():
    rows = [{"gold": "negated", "weight": 2.0}, {"gold": "affirmed", "weight": 1.0},
            {"gold": "uncertain", "weight": 1.0}, {"gold": "negated", "weight": 1.0}]
    s = bench.weighted_scores([True, True, False, False], rows)
    # weighted tp 2, fp 1, fn 1: precision 2/3, recall 2/3, accuracy (2 + 1) / 5
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(3 / 5) and s["sample_tp_fp_fn_tn"] == [1, 1, 1, 1]
    assert bench.weighted_scores([True, True, False, False], rows, frozenset({"negated", "uncertain"}))["recall"] == \
        pytest.approx(2 / 4)
