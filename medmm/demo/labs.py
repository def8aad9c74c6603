"""Synthetic admission labs for the demo cohort, with planted chest-X-ray findings.

Six common adult labs (:data:`LAB_NAMES`, units in :data:`LAB_UNITS`), drawn from
plausible adult distributions with between-patient spread and rounded to the
precision a lab reports. Skewed analytes (BNP, CRP, creatinine) are log-normal.

Planted effects:

* ``edema`` -> BNP strongly raised (log-normal, median ~1000 pg/mL, >= ~250), against
  normal BNP of median ~35 pg/mL (<= ~160). The ranges do not overlap, so edema is
  observable from the labs with certainty (:func:`planted_in_labs`).
* ``consolidation`` -> WBC raised (leukocytosis, > 12 x 10^9/L) and CRP raised
  (median ~90 mg/L, > 30 mg/L), against normal WBC < 11 and CRP < 10: observable
  with certainty.
* ``cardiomegaly`` -> BNP raised only mildly (x2.5, median ~90 pg/mL): its range
  overlaps the normal one, so cardiomegaly is *not* counted as observable in the labs
  (it is not in :func:`planted_in_labs`). With edema as well, edema's level dominates.

All other findings leave the labs at their normal distributions.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from medmm.io.findings import FINDINGS, NO_FINDING

__all__ = ["LAB_NAMES", "LAB_UNITS", "planted_in_labs", "synthesize_labs"]

LAB_NAMES: tuple[str, ...] = ("bnp", "wbc", "crp", "hemoglobin", "creatinine", "sodium")
LAB_UNITS: dict[str, str] = {
    "bnp": "pg/mL",
    "wbc": "10^9/L",
    "crp": "mg/L",
    "hemoglobin": "g/dL",
    "creatinine": "mg/dL",
    "sodium": "mmol/L",
}
# Reported precision (decimal places) per lab.
_DECIMALS = {"bnp": 0, "wbc": 1, "crp": 1, "hemoglobin": 1, "creatinine": 2, "sodium": 0}
_PLANTED: tuple[str, ...] = ("edema", "consolidation")


def planted_in_labs() -> tuple[str, ...]:
    """The findings observable with certainty in the synthetic labs. (Cardiomegaly
    raises BNP only mildly, overlapping the normal range, so it is not listed.)"""
    return _PLANTED


def _z(rng: np.random.Generator, bound: float = 3.0) -> float:
    """A standard normal draw truncated to +-bound (by clipping)."""
    return float(np.clip(rng.standard_normal(), -bound, bound))


def synthesize_labs(findings: Mapping[str, bool], rng: np.random.Generator) -> dict[str, float]:
    """One set of labs: ``{name: value}`` for every name in :data:`LAB_NAMES`, in the
    units of :data:`LAB_UNITS`. All draws happen whatever the findings, so one seed
    gives the same patient with and without a finding."""
    known = set(FINDINGS) | {NO_FINDING}
    unknown = [k for k in findings if k not in known]
    if unknown:
        raise ValueError(f"unknown finding name(s) {unknown}; known: {sorted(known)}")
    edema = bool(findings.get("edema", False))
    cardiomegaly = bool(findings.get("cardiomegaly", False))
    consolidation = bool(findings.get("consolidation", False))

    z = {name: _z(rng) for name in ("bnp", "wbc", "crp", "hemoglobin", "creatinine", "sodium")}
    z_bnp_edema, z_wbc_inf, z_crp_inf = _z(rng), _z(rng), _z(rng)

    # BNP (pg/mL): normal median 35, x e^(0.5 z) -> 7.8 .. 157
    if edema:
        bnp = 1000.0 * np.exp(0.45 * z_bnp_edema)  # 259 .. 3860
    else:
        bnp = 35.0 * np.exp(0.5 * z["bnp"])
        if cardiomegaly:
            bnp *= 2.5  # mild: 19 .. 392, overlaps both
    # WBC (10^9/L): normal 7.0 +- 1.2 -> 3.4 .. 10.6; infection: shifted log-normal,
    # 11.5 + 4 e^(0.5 z) -> 12.4 .. 29.4 (median 15.5)
    wbc = 7.0 + 1.2 * z["wbc"]
    if consolidation:
        wbc = 11.5 + 4.0 * np.exp(0.5 * z_wbc_inf)
    # CRP (mg/L): normal median 2, x e^(0.5 z) -> 0.45 .. 9.0; infection:
    # 20 + 70 e^(0.6 z) -> 31 .. 446 (median 90)
    crp = 2.0 * np.exp(0.5 * z["crp"])
    if consolidation:
        crp = 20.0 + 70.0 * np.exp(0.6 * z_crp_inf)
    # Hemoglobin (g/dL), adults of both sexes: 13.8 +- 1.4
    hemoglobin = 13.8 + 1.4 * z["hemoglobin"]
    # Creatinine (mg/dL): log-normal, median 0.9
    creatinine = 0.9 * np.exp(0.2 * z["creatinine"])
    # Sodium (mmol/L): 139.5 +- 2
    sodium = 139.5 + 2.0 * z["sodium"]

    values = {
        "bnp": bnp,
        "wbc": wbc,
        "crp": crp,
        "hemoglobin": hemoglobin,
        "creatinine": creatinine,
        "sodium": sodium,
    }
    return {k: float(round(float(values[k]), _DECIMALS[k])) for k in LAB_NAMES}
