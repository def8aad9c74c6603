"""medmm.data.ecg_transforms: preprocessing against an independent scipy pipeline,
voltage preservation, NaN handling and speed."""

from __future__ import annotations

import numpy as np
from pydicom.data import get_testdata_file
from scipy.ndimage import median_filter
from scipy.signal import medfilt, resample_poly

from medmm.data.ecg_transforms import preprocess_ecg, remove_baseline
from medmm.demo.ecg_synth import synthesize_ecg
from medmm.io.ecg import read_ecg


def ecg(findings=None, seed=0):
    return synthesize_ecg(findings or {}, np.random.default_rng(seed))


def reference_preprocess(x: np.ndarray, fs: int) -> np.ndarray:
    """MoRE's steps written independently: scipy.signal.medfilt (zero-padded edges)."""
    y = resample_poly(np.nan_to_num(x.astype(np.float64)), 100, fs, axis=1, padtype="line")
    base = np.stack([medfilt(medfilt(row, 21), 61) for row in y])
    return (y - base) / 2.0


def test_shape_dtype_and_matches_reference_in_interior():
    x = ecg({"cardiomegaly": True})
    y = preprocess_ecg(x, 500)
    assert y.shape == (12, 1000) and y.dtype == np.float32 and y.flags.c_contiguous
    ref = reference_preprocess(x, 500)
    inner = slice(40, -40)  # the two implementations pad the edges differently
    np.testing.assert_allclose(y[:, inner], np.clip(ref, -3, 3)[:, inner], atol=1e-5)


def test_real_dicom_1000hz_to_model_input():
    rec = read_ecg(get_testdata_file("waveform_ecg.dcm"))
    y = preprocess_ecg(rec.signal, rec.fs)
    assert y.shape == (12, 1000) and np.isfinite(y).all()
    assert 0.2 < np.abs(y).max() <= 3.0


def test_length_is_cropped_or_padded():
    x = ecg()
    assert preprocess_ecg(x[:, :2500], 500).shape == (12, 1000)  # 5 s -> zero-padded
    np.testing.assert_array_equal(preprocess_ecg(x[:, :2500], 500)[:, 600:], 0)
    long = np.concatenate([x, x], axis=1)
    assert preprocess_ecg(long, 500).shape == (12, 1000)
    assert preprocess_ecg(x, 500, 250, seconds=8).shape == (12, 2000)


def test_nan_becomes_zero_and_does_not_spread():
    x = ecg().copy()
    x[2, 1000:1100] = np.nan
    y = preprocess_ecg(x, 500)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[[0, 1, 3]], preprocess_ecg(ecg(), 500)[[0, 1, 3]])


def test_baseline_wander_removed():
    x = ecg(seed=3)
    t = np.arange(x.shape[1]) / 500
    wander = 0.8 * np.sin(2 * np.pi * 0.25 * t + 1.0) + 0.5  # offset + respiration
    y0 = preprocess_ecg(x, 500)
    y1 = preprocess_ecg(x + wander[None, :].astype(np.float32), 500)
    res = np.abs(y1 - y0)[:, 30:-30]  # what is left of 1.3 mV (0.65 units) of wander
    # a median-filter baseline is exact on flat stretches and errs near waves
    assert np.median(res) < 0.01 and np.percentile(res, 90) < 0.05 and res.max() < 0.2
    assert np.abs(np.median(y1, axis=1)).max() < 0.05


def test_global_scaling_keeps_voltage_but_minmax_does_not():
    x = ecg(seed=1)
    y = preprocess_ecg(x, 500, clip=None)
    y2 = preprocess_ecg(2 * x, 500, clip=None)
    np.testing.assert_allclose(y2, 2 * y, rtol=1e-5, atol=1e-5)  # linear: voltage kept
    normal = preprocess_ecg(ecg(seed=1), 500)
    lvh = preprocess_ecg(ecg({"cardiomegaly": True}, seed=1), 500)
    assert np.abs(lvh).max() > 1.5 * np.abs(normal).max()
    m = preprocess_ecg(x, 500, minmax=True)
    np.testing.assert_allclose(m.min(axis=1), -1, atol=1e-6)
    np.testing.assert_allclose(m.max(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(preprocess_ecg(2 * x, 500, minmax=True), m, atol=1e-5)  # voltage lost
    flat = preprocess_ecg(np.zeros((12, 5000), np.float32), 500, minmax=True)
    np.testing.assert_array_equal(flat, 0)


def test_clip_bounds():
    x = ecg({"support_devices": True})
    y = preprocess_ecg(x, 500)
    assert np.abs(y).max() <= 3.0


def test_remove_baseline_against_medfilt():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1000)).astype(np.float32)
    got = remove_baseline(x, 100)
    ref = x - np.stack([medfilt(medfilt(r, 21), 61) for r in x.astype(np.float64)])
    np.testing.assert_allclose(got[:, 40:-40], ref[:, 40:-40], atol=1e-6)
    # edges included: the one-call implementation equals a per-lead "nearest" filter
    base = x
    for size in (21, 61):
        base = np.stack([median_filter(r, size=size, mode="nearest") for r in base])
    np.testing.assert_array_equal(got, x - base)
    np.testing.assert_array_equal(remove_baseline(x[1], 100), got[1])
