"""medmm.demo.labs: ranges, determinism and the planted shifts."""

from __future__ import annotations

import numpy as np
import pytest

from medmm.demo.labs import LAB_NAMES, LAB_UNITS, planted_in_labs, synthesize_labs
from medmm.io.findings import FINDINGS

N = 400


def draw(findings, n=N, offset=0):
    rows = [synthesize_labs(findings, np.random.default_rng(offset + s)) for s in range(n)]
    return {k: np.array([r[k] for r in rows]) for k in LAB_NAMES}


def test_contract():
    assert LAB_NAMES == ("bnp", "wbc", "crp", "hemoglobin", "creatinine", "sodium")
    assert set(LAB_UNITS) == set(LAB_NAMES)
    labs = synthesize_labs({}, np.random.default_rng(0))
    assert tuple(labs) == LAB_NAMES
    assert all(isinstance(v, float) and np.isfinite(v) for v in labs.values())
    assert planted_in_labs() == ("edema", "consolidation")
    assert set(planted_in_labs()) <= set(FINDINGS)
    with pytest.raises(ValueError, match="unknown finding"):
        synthesize_labs({"oedema": True}, np.random.default_rng(0))


def test_deterministic_and_other_findings_unchanged():
    assert synthesize_labs({}, np.random.default_rng(3)) == synthesize_labs({}, np.random.default_rng(3))
    assert synthesize_labs({}, np.random.default_rng(3)) != synthesize_labs({}, np.random.default_rng(4))
    others = {f: True for f in FINDINGS if f not in ("edema", "consolidation", "cardiomegaly")}
    for s in range(5):
        assert synthesize_labs(others, np.random.default_rng(s)) == synthesize_labs({}, np.random.default_rng(s))


def test_normal_ranges_plausible():
    d = draw({})
    assert 5 <= d["bnp"].min() and d["bnp"].max() < 200 and 20 < np.median(d["bnp"]) < 60
    assert 3 <= d["wbc"].min() and d["wbc"].max() <= 11
    assert d["crp"].min() >= 0 and d["crp"].max() < 10
    assert 9 < d["hemoglobin"].min() and d["hemoglobin"].max() < 19
    assert 0.4 < d["creatinine"].min() and d["creatinine"].max() < 1.7
    assert 132 <= d["sodium"].min() and d["sodium"].max() <= 146
    for k in LAB_NAMES:
        assert d[k].std() > 0  # real spread


def test_edema_raises_bnp_with_certainty():
    normal = draw({})
    edema = draw({"edema": True}, offset=10_000)
    assert edema["bnp"].min() > normal["bnp"].max()  # separable: observable
    assert np.median(edema["bnp"]) > 10 * np.median(normal["bnp"])
    both = draw({"edema": True, "cardiomegaly": True}, offset=20_000)
    assert both["bnp"].min() > normal["bnp"].max()
    for k in ("wbc", "crp", "hemoglobin", "creatinine", "sodium"):
        assert abs(np.median(edema[k]) - np.median(normal[k])) < 0.15 * abs(np.median(normal[k])) + 0.5


def test_cardiomegaly_raises_bnp_only_mildly():
    normal = draw({})
    cm = draw({"cardiomegaly": True}, offset=30_000)
    assert 1.8 < np.median(cm["bnp"]) / np.median(normal["bnp"]) < 3.5
    assert cm["bnp"].min() < normal["bnp"].max()  # overlapping: not observable with certainty
    assert "cardiomegaly" not in planted_in_labs()


def test_consolidation_raises_wbc_and_crp_with_certainty():
    normal = draw({})
    cons = draw({"consolidation": True}, offset=40_000)
    assert cons["wbc"].min() > normal["wbc"].max()
    assert cons["crp"].min() > normal["crp"].max()
    assert np.median(cons["crp"]) > 20 * np.median(normal["crp"])
    assert abs(np.median(cons["bnp"]) - np.median(normal["bnp"])) < 15
