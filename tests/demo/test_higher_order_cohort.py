"""The demo cohort's higher-order variant: the X-ray's cardiomegaly is an ECG pattern XOR a
lab value, each of which is independent of the X-ray (and of the other), and a Symile
pretraining run on it (the benchmark's own code, as ``benchmarks/symile.py --section
higher_order`` runs it) ends with finite metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from medmm.demo.generator import (
    ECG_PATTERN,
    INTERACTION_FILE,
    INTERACTION_FINDING,
    LAB_PATTERN,
    build_demo_cohort,
    interaction_bits,
)
from medmm.io.ecg import read_wfdb
from medmm.io.reports import read_report
from tests.conftest import iu_source, load_benchmark

REPO = Path(__file__).resolve().parents[2]
bench = load_benchmark("symile")


def cramers_v(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cramér's V and the chi-square p-value of two binary arrays (no continuity correction)."""
    table = pd.crosstab(x, y).to_numpy()
    chi2, p, _, _ = chi2_contingency(table, correction=False)
    return math.sqrt(chi2 / len(x)), p


def test_planted_bits_are_pairwise_independent_and_the_xor_determines_the_finding():
    c = np.arange(4000) % 2  # the cohort is balanced in c
    a, b = map(np.array, zip(*(interaction_bits(7, i, bool(ci)) for i, ci in enumerate(c))))
    assert np.array_equal(a ^ b, c.astype(bool))  # the pair (ECG, labs) determines the X-ray finding
    for x, y in ((a, c), (b, c), (a, b)):  # ... while no single pair carries anything
        v, p = cramers_v(x, y)
        assert v < 0.05 and p > 0.001, (v, p)
    # the check has power: a bit that follows c in 10 % of studies is caught
    leak = np.where(np.arange(4000) % 10 == 0, c.astype(bool), a)
    assert cramers_v(leak, c)[1] < 1e-6


def test_pairwise_independence_checker_agrees_with_the_correlation():
    rng = np.random.default_rng(0)
    x = rng.random(500) < 0.5
    y = np.where(rng.random(500) < 0.3, x, rng.random(500) < 0.5)
    # for 2 x 2 tables Cramér's V is |phi|, Pearson's correlation of the two 0/1 variables
    assert cramers_v(x, y)[0] == pytest.approx(abs(np.corrcoef(x, y)[0, 1]), abs=1e-12)


@pytest.fixture(scope="module")
def higher_order_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("higher_order") / "demo"
    build_demo_cohort(root, n_studies=40, seed=3, workers=1, iu_source=iu_source(), structure="higher_order",
                      split_fractions=(0.4, 0.2, 0.4))  # >= 10 test studies for the among-10 task
    return root


def test_cohort_tables_hold_the_planted_structure(higher_order_cohort):
    root = higher_order_cohort
    truth = pd.read_csv(root / INTERACTION_FILE).merge(pd.read_csv(root / "labs.csv"), on="study_id")
    assert len(truth) == 40 and truth["xray_finding"].sum() == 20  # balanced by study choice
    assert (truth["xray_finding"] == truth["ecg_pattern"] ^ truth["lab_high"]).all()
    for col in ("ecg_pattern", "lab_high"):  # consistent with independence on these 40 studies too
        assert cramers_v(truth[col], truth["xray_finding"])[1] > 0.01
    folders = {p.name: p for p in (root / "patients").glob("*/*")}
    spikes, findings = [], []
    for row in truth.itertuples():
        labels = read_report((folders[row.study_id] / "report.txt").read_text()).labels.findings
        findings.append(labels)
        assert labels[INTERACTION_FINDING] == bool(row.xray_finding)  # the X-ray and report carry c
        signal = read_wfdb(folders[row.study_id] / "ecg.hea").signal
        spikes.append(float(np.abs(np.diff(signal, axis=1)).max()))
    # the labs show the raised BNP of LAB_PATTERN iff b, whatever the report says; the
    # other labs stay normal (consolidation's leukocytosis is not drawn)
    assert LAB_PATTERN == "edema" and ((truth["bnp"] > 200) == truth["lab_high"].astype(bool)).all()
    assert (truth["wbc"] < 11).all() and (truth["crp"] < 10).all()
    # the ECG shows the pacing spikes of ECG_PATTERN iff a
    assert ECG_PATTERN == "support_devices"
    spikes = np.array(spikes)
    paced = truth["ecg_pattern"].astype(bool).to_numpy()
    assert spikes[paced].min() > 2 * spikes[~paced].max()


def test_symile_pretraining_on_the_higher_order_cohort_ends_with_finite_metrics(higher_order_cohort, tmp_path):
    r = bench._pretrain(tmp_path, higher_order_cohort, "symile", 1,
                        [*bench.THREE_MODALITIES, "data.batch_size=8", "eval.memory_retrieval=false",
                         "trainer.precision=32-true"])
    m = r["metrics"]
    for name in ("xray_from_ecg-labs.acc10", f"xray_from_ecg-labs.zeroshot_{INTERACTION_FINDING}"):
        assert name in m and math.isfinite(m[name]) and 0.0 <= m[name] <= 1.0
    assert all(math.isfinite(v) for v in m.values())
    assert len(r["run_id"]) == 32
