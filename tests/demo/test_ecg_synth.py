"""medmm.demo.ecg_synth: shape, determinism, Einthoven/Goldberger relations, and
that each planted finding is measurable (also after preprocessing to 100 Hz)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, find_peaks, sosfiltfilt

from medmm.data.ecg_transforms import preprocess_ecg, remove_baseline
from medmm.demo.ecg_synth import LEADS, planted_in_ecg, synthesize_ecg
from medmm.io.findings import FINDINGS

FS = 500
I, II, III, AVR, AVL, AVF, V1, V2, V3, V4, V5, V6 = range(12)
COMBOS = [
    {},
    {"cardiomegaly": True},
    {"support_devices": True},
    {"emphysema": True},
    {"support_devices": True, "cardiomegaly": True},
    {"support_devices": True, "emphysema": True},
    {"cardiomegaly": True, "emphysema": True},
    {"cardiomegaly": True, "support_devices": True, "emphysema": True},
]


def ecg(findings, seed):
    return synthesize_ecg(findings, np.random.default_rng(seed))


# ---- simple measurements (an "observer" working on the signal only) --------------
def sokolow_lyon(x: np.ndarray) -> float:
    """S(V1) + max(R(V5), R(V6)) in mV, after baseline removal."""
    b = remove_baseline(x, FS)
    return float(-b[V1].min() + max(b[V5].max(), b[V6].max()))


def limb_amplitude(x: np.ndarray) -> float:
    """Largest peak-to-peak amplitude over the six limb leads, after baseline removal."""
    b = remove_baseline(x, FS)
    return float(np.ptp(b[:6], axis=1).max())


def beat_times(x: np.ndarray) -> np.ndarray:
    """QRS locations (samples): peaks of the 5-30 Hz band-passed precordial energy
    (precordial leads see little of the P wave, even P pulmonale)."""
    sos = butter(2, [5, 30], btype="bandpass", fs=FS, output="sos")
    e = (sosfiltfilt(sos, x[V1:].astype(np.float64), axis=1) ** 2).sum(0)
    peaks, _ = find_peaks(e, distance=int(0.3 * FS), height=0.2 * np.percentile(e, 99.5))
    return peaks


def lateral_t(x: np.ndarray) -> float:
    """Mean of V5 + V6 200-320 ms after each QRS (the T wave), baseline removed."""
    b = remove_baseline(x, FS)
    vals = [
        b[[V5, V6], p + int(0.20 * FS): p + int(0.32 * FS)].mean()
        for p in beat_times(x)
        if p + int(0.32 * FS) < x.shape[1]
    ]
    return float(np.mean(vals))


def spike_feature(x: np.ndarray) -> float:
    """Max |first difference| over all leads of the 100 Hz model input."""
    y = preprocess_ecg(x, FS, 100)
    return float(np.abs(np.diff(y, axis=1)).max())


# ---- basic contract ----------------------------------------------------------------
def test_shape_dtype_and_leads():
    assert LEADS == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    x = ecg({}, 0)
    assert x.shape == (12, 5000) and x.dtype == np.float32 and np.isfinite(x).all()
    assert synthesize_ecg({}, np.random.default_rng(0), fs=100).shape == (12, 1000)
    assert synthesize_ecg({}, np.random.default_rng(0), fs=250, seconds=4.0).shape == (12, 1000)
    assert planted_in_ecg() == ("cardiomegaly", "support_devices", "emphysema")
    assert set(planted_in_ecg()) <= set(FINDINGS)


def test_deterministic_given_seed():
    for f in COMBOS:
        np.testing.assert_array_equal(ecg(f, 7), ecg(f, 7))
    assert not np.array_equal(ecg({}, 7), ecg({}, 8))


def test_unknown_finding_raises():
    with pytest.raises(ValueError, match="unknown finding"):
        synthesize_ecg({"cardiomegally": True}, np.random.default_rng(0))


def test_other_findings_leave_ecg_unchanged():
    others = {f: True for f in FINDINGS if f not in planted_in_ecg()}
    for seed in range(3):
        np.testing.assert_array_equal(ecg(others, seed), ecg({}, seed))
        np.testing.assert_array_equal(
            ecg({**others, "cardiomegaly": True}, seed), ecg({"cardiomegaly": True}, seed)
        )


@pytest.mark.parametrize("findings", COMBOS)
def test_einthoven_goldberger_exact(findings):
    for seed in range(3):
        x = ecg(findings, seed)
        i, ii = x[I], x[II]
        np.testing.assert_array_equal(x[III], ii - i)
        np.testing.assert_array_equal(x[AVR], -(i + ii) / 2)
        np.testing.assert_array_equal(x[AVL], i - ii / 2)
        np.testing.assert_array_equal(x[AVF], ii - i / 2)
        # and in exact arithmetic, up to float32 rounding
        np.testing.assert_allclose(x[AVR] + x[AVL] + x[AVF], 0, atol=1e-5)


def test_realistic_ranges():
    for seed in range(10):
        x = ecg({}, seed)
        b = remove_baseline(x, FS)
        assert 0.5 < limb_amplitude(x) < 2.5
        assert np.abs(b).max() < 3.5  # no lead beyond 3.5 mV in a normal ECG
        rate = 60 * FS / np.median(np.diff(beat_times(x)))
        assert 50 < rate < 105
        # baseline wander and noise present but modest
        assert np.abs(x - b).max() < 1.0


# ---- planted findings ----------------------------------------------------------------
def test_cardiomegaly_raises_sokolow_lyon_and_inverts_lateral_t():
    normal = np.array([sokolow_lyon(ecg({}, s)) for s in range(20)])
    lvh = np.array([sokolow_lyon(ecg({"cardiomegaly": True}, s)) for s in range(20)])
    assert (lvh > 1.5 * normal).all()  # same patient (seed), with and without LVH
    assert (normal < 3.5).all()
    assert np.median(lvh) > 3.5 and (lvh > 3.5).mean() >= 0.7
    t_normal = np.array([lateral_t(ecg({}, s)) for s in range(20)])
    t_lvh = np.array([lateral_t(ecg({"cardiomegaly": True}, s)) for s in range(20)])
    assert (t_normal > 0).all() and (t_lvh < 0).all()  # strain: lateral T inversion


def test_pacing_spikes_survive_preprocessing_to_100hz():
    unpaced = [{}, {"cardiomegaly": True}, {"emphysema": True}, {"cardiomegaly": True, "emphysema": True}]
    paced = [
        {"support_devices": True},
        {"support_devices": True, "cardiomegaly": True},
        {"support_devices": True, "emphysema": True},
    ]
    f_unpaced = [spike_feature(ecg(f, s)) for f in unpaced for s in range(50)]
    f_paced = [spike_feature(ecg(f, 1000 + s)) for f in paced for s in range(50)]
    assert min(f_paced) > 1.1 * max(f_unpaced)  # no overlap, with a margin


def test_paced_rhythm_is_fixed_rate_and_spiky_at_500hz():
    for seed in range(5):
        x = ecg({"support_devices": True}, seed)
        lead = np.abs(x).max(axis=1).argmax()  # the lead where the artifact is largest
        a = np.abs(x[lead] - np.median(x[lead]))
        peaks, _ = find_peaks(a, height=0.5 * a.max(), distance=int(0.3 * FS))
        rr = np.diff(peaks) / FS
        assert len(peaks) >= 9
        assert np.ptp(rr) <= 2.5 / FS  # fixed rate (spike timing jitters by sampling only)
        assert np.median(60 / rr) in (pytest.approx(60, abs=0.5), pytest.approx(70, abs=0.5))
        assert a.max() > 5.0  # a sharp, large artifact
        assert np.abs(np.diff(x, axis=1)).max() > 5.0
        normal = ecg({}, seed)
        assert np.std(np.diff(beat_times(normal))) > 0  # sinus rhythm varies


def test_emphysema_lowers_limb_voltage():
    for s in range(20):
        normal, emph = limb_amplitude(ecg({}, s)), limb_amplitude(ecg({"emphysema": True}, s))
        assert emph < 0.75 * normal
        assert emph < 0.8  # QRS < 0.5 mV; P pulmonale + wander make up the rest


def test_emphysema_right_axis_and_p_pulmonale():
    for s in range(10):
        x = remove_baseline(ecg({"emphysema": True}, s), FS)
        n = remove_baseline(ecg({}, s), FS)
        beats = beat_times(ecg({"emphysema": True}, s))
        w = int(0.04 * FS)
        net_i = np.mean([x[I, p - w: p + w].sum() for p in beats if w <= p < x.shape[1] - w])
        net_avf = np.mean([x[AVF, p - w: p + w].sum() for p in beats if w <= p < x.shape[1] - w])
        axis = np.degrees(np.arctan2(net_avf / np.sin(np.pi / 3), net_i))
        assert axis > 90
        # P pulmonale: lead II's P (the tallest positive wave left when QRS is small)
        # reaches >= 0.2 mV and is taller than the same patient's normal P
        p_region = [x[II, p - int(0.2 * FS): p - int(0.06 * FS)].max() for p in beats if p > 0.2 * FS]
        p_region_n = [n[II, p - int(0.2 * FS): p - int(0.06 * FS)].max() for p in beat_times(ecg({}, s)) if p > 0.2 * FS]
        assert np.median(p_region) > 0.2 and np.median(p_region) > np.median(p_region_n)
