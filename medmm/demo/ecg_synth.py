"""Synthetic 12-lead ECGs for the demo cohort, with planted chest-X-ray findings.

Model
-----
The heart is a single time-varying 3-D current dipole ``d(t)`` (the heart vector;
axes x = patient's left, y = inferior, z = anterior, millivolt units). Each wave (P,
QRS, ST/T) is a sum of Gaussian-shaped pulses in time, each with a fixed 3-D direction
and amplitude; beats are placed on an RR series. Every electrode ``e`` sees
``g_e * (u_e . d(t)) + noise_e(t)``:

* limb electrodes RA, LA, LL lie on an equilateral (Einthoven) triangle in the
  frontal plane at -150, -30 and +90 degrees;
* precordial electrodes V1..V6 lie around the heart in the transverse plane (V6 lateral,
  V1 anterior-right) with proximity gains (V2-V4 largest).

Leads are electrode differences: ``I = LA - RA``, ``II = LL - RA``, the other four limb
leads are computed from the float32 I and II exactly as
``III = II - I``, ``aVR = -(I + II) / 2``, ``aVL = I - II / 2``, ``aVF = II - I / 2``
(so these identities hold bit-for-bit in float32), and ``Vk = phi_Vk - WCT`` with the
Wilson central terminal ``WCT = (RA + LA + LL) / 3``. Because noise is added per
electrode, the relations also hold for the noise.

Nuisance (every record): heart rate 55-100 bpm with respiratory sinus arrhythmia and
beat-to-beat jitter; PR and QT (Bazett-scaled) intervals; QRS frontal axis -10..+70
degrees and its elevation; T-wave axis; overall amplitude x0.85-1.2 (body habitus)
and +-4 % respiratory amplitude modulation; precordial electrode placement (angle,
gain); per-electrode baseline wander (respiration 0.12-0.4 Hz plus slow drift below
0.1 Hz); mains hum (50 or 60 Hz, <= ~0.03 mV); broadband EMG-like noise.

Planted findings (:func:`planted_in_ecg`), all detectable by an ideal observer:

* ``cardiomegaly`` -> left-ventricular hypertrophy: QRS dipole x1.8-2.4, more
  posterior and slightly wider (Sokolow-Lyon S(V1) + R(V5/V6): median ~4 mV, > 3.5 mV
  in ~80 % of records, against 1.1-3.1 mV without), and a strain pattern: ST
  depression with inverted T waves in the lateral leads (I, aVL, V5, V6) in every
  record, which is what makes LVH certain to an ideal observer.
* ``support_devices`` -> ventricular pacing at a fixed 60 or 70 bpm (no RR variability):
  a pacing artifact before each beat, then a wide (about 165-180 ms), left-superior
  QRS (RV-apical pacing: QS in V1, negative in II/III/aVF) with discordant T waves;
  sinus P waves still precede each beat (atrial-sensed, ventricular-paced). The
  artifact is drawn as an ECG cart records it (with the cart's pace enhancement): a
  rectangular pulse of 2.3-5.5 ms and 10-15 mV (dipole; 0.035-0.055 mV*s), sampled by
  averaging over each sample period (so area is kept at any ``fs``), plus a small
  opposite-polarity recharge tail. A true 0.5-2 ms stimulus of the same area would be
  20-50 mV and overflow 16-bit WFDB at 1 uV resolution; one of much smaller area
  would vanish under the 100 Hz anti-aliasing filter. As is, the artifact is <= ~20 mV
  at 500 Hz and still a clear several-mV spike after anti-aliased resampling to
  100 Hz, steeper than any QRS (checked in the tests).
* ``emphysema`` -> low QRS voltage (limb-lead QRS < 0.5 mV peak-to-peak, precordial
  leads reduced too: a vertical, posteriorly directed QRS with the heart behind
  hyperinflated lungs), rightward QRS axis +100..+125 degrees, and P pulmonale (P axis
  +75..+90 degrees, P >= 0.25 mV and peaked in II).

Other findings leave the ECG unchanged. Combinations compose: LVH scales whatever QRS
the rhythm produces (native or paced; in a paced record the lateral T inversion is the
pacing's own secondary change); emphysema's attenuation and P pulmonale apply to paced
records too, but a paced QRS keeps the pacing axis; with LVH + emphysema the two
voltage effects partly cancel, while the strain pattern, right axis and P pulmonale
still mark each finding.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from medmm.io.ecg import STANDARD_LEADS
from medmm.io.findings import FINDINGS, NO_FINDING

__all__ = ["LEADS", "planted_in_ecg", "synthesize_ecg"]

LEADS: tuple[str, ...] = STANDARD_LEADS
_PLANTED: tuple[str, ...] = ("cardiomegaly", "support_devices", "emphysema")

# Precordial electrodes: angle in the transverse plane (degrees from +x towards +z),
# vertical offset, proximity gain.
_PRECORDIAL_THETA = np.array([115.0, 95.0, 72.0, 50.0, 25.0, 0.0])
_PRECORDIAL_Y = np.array([-0.05, -0.05, 0.0, 0.05, 0.05, 0.05])
_PRECORDIAL_GAIN = np.array([1.25, 1.6, 1.6, 1.5, 1.35, 1.1])
_LIMB_ANGLES = np.deg2rad([-150.0, -30.0, 90.0])  # RA, LA, LL
_LIMB_R = 1.0 / np.sqrt(3.0)  # so that lead I = d_x exactly


def planted_in_ecg() -> tuple[str, ...]:
    """The findings that change the synthetic ECG (each detectable with certainty)."""
    return _PLANTED


def _dir(alpha_deg: float, beta_deg: float) -> np.ndarray:
    """Unit vector with frontal-plane angle ``alpha`` (0 = left, +90 = inferior) and
    elevation ``beta`` towards anterior."""
    a, b = np.deg2rad(alpha_deg), np.deg2rad(beta_deg)
    return np.array([np.cos(b) * np.cos(a), np.cos(b) * np.sin(a), np.sin(b)])


def _check_findings(findings: Mapping[str, bool]) -> tuple[bool, bool, bool]:
    known = set(FINDINGS) | {NO_FINDING}
    unknown = [k for k in findings if k not in known]
    if unknown:
        raise ValueError(f"unknown finding name(s) {unknown}; known: {sorted(known)}")
    return (
        bool(findings.get("cardiomegaly", False)),
        bool(findings.get("support_devices", False)),
        bool(findings.get("emphysema", False)),
    )


class _Waves:
    """Accumulates Gaussian dipole pulses: centre (s), width (s), 3-D amplitude (mV)."""

    def __init__(self) -> None:
        self.c: list[float] = []
        self.s: list[float] = []
        self.v: list[np.ndarray] = []

    def add(self, centre: float, sigma: float, vec: np.ndarray) -> None:
        self.c.append(centre)
        self.s.append(sigma)
        self.v.append(vec)

    def render(self, t: np.ndarray) -> np.ndarray:
        """Dipole ``[3, len(t)]``; each pulse is evaluated only within +-5 sigma."""
        out = np.zeros((3, t.size))
        fs = 1.0 / (t[1] - t[0]) if t.size > 1 else 1.0
        t0 = t[0]
        for c, s, v in zip(self.c, self.s, self.v):
            lo = max(int(np.floor((c - 5 * s - t0) * fs)), 0)
            hi = min(int(np.ceil((c + 5 * s - t0) * fs)) + 1, t.size)
            if hi <= lo:
                continue
            z = (t[lo:hi] - c) / s
            out[:, lo:hi] += v[:, None] * np.exp(-0.5 * z * z)[None, :]
        return out


def _box_pulse(n: int, fs: float, start: float, width: float) -> tuple[int, np.ndarray]:
    """Samples of a unit-height rectangular pulse ``[start, start+width)`` averaged over
    each sample period (sample k covers ``[k/fs, (k+1)/fs)``): area is preserved however
    narrow the pulse. Returns (first index, weights)."""
    k0 = int(np.floor(start * fs))
    k1 = int(np.floor((start + width) * fs))
    ks = np.arange(k0, k1 + 1)
    lo = np.maximum(ks / fs, start)
    hi = np.minimum((ks + 1) / fs, start + width)
    w = np.clip(hi - lo, 0.0, None) * fs
    keep = (ks >= 0) & (ks < n)
    if not keep.any():
        return 0, np.zeros(0)
    ks, w = ks[keep], w[keep]
    return int(ks[0]), w


def synthesize_ecg(
    findings: Mapping[str, bool],
    rng: np.random.Generator,
    *,
    fs: int = 500,
    seconds: float = 10.0,
) -> np.ndarray:
    """A synthetic 12-lead ECG, float32 ``[12, round(fs * seconds)]`` in mV, leads in
    :data:`LEADS` order. ``findings`` maps finding names (from
    :data:`medmm.io.findings.FINDINGS`) to booleans; only :func:`planted_in_ecg` change
    the ECG. Deterministic given the state of ``rng``; the random draws do not depend
    on the findings, so one seed gives the same "patient" (rate, axis, noise, ...) with
    and without any finding."""
    lvh, paced, emph = _check_findings(findings)
    if fs <= 0 or seconds <= 0:
        raise ValueError(f"fs and seconds must be positive, got fs={fs}, seconds={seconds}")
    n = int(round(fs * seconds))
    t = np.arange(n) / fs
    # Independent streams, so that the number of beats (which depends on the rhythm)
    # never shifts the draws of the noise: with one seed, records with and without a
    # finding are the same "patient" (same nuisance), differing only by the finding.
    par_rng, rr_rng, el_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 3))
    u = par_rng.uniform

    # ---- parameters: all drawn every time, in a fixed order ----------------------------
    scale = u(0.85, 1.2)
    resp_f, resp_phase = u(0.12, 0.4), u(0, 2 * np.pi)
    qtc, pr, hr, rsa = u(0.38, 0.44), u(0.13, 0.19), u(55, 100), u(0.01, 0.05)
    phase = u(0.0, 1.0)  # where in the cardiac cycle the strip starts
    # P wave: normal / P pulmonale (tall, peaked, vertical)
    p_norm = (u(0.10, 0.17), u(40, 70), u(-5, 15))
    p_pulm = (u(0.34, 0.42), u(75, 90), u(0, 10))
    # native QRS
    q_amp0 = u(1.0, 1.25)
    q_axis_norm = (u(-10, 70), u(-30, -18))
    q_axis_emph = (u(100, 125), u(-60, -48))
    sept_dir = _dir(u(170, 200), u(30, 50))
    term_dir = _dir(u(-120, -90), u(-45, -25))
    main_sigma = u(0.010, 0.012)
    # T wave: normal (concordant) / LVH strain
    t_norm = (u(0.25, 0.40), u(-10, 10), u(10, 30))
    t_strain = (u(0.30, 0.50), u(200, 225), u(20, 35))
    # findings' strengths
    lvh_k = u(1.8, 2.4)
    emph_k = u(0.32, 0.40)
    # paced rhythm
    paced_rate = 60.0 if u() < 0.5 else 70.0
    p_q_amp, p_q_alpha, p_q_beta = u(1.4, 1.8), u(-70, -35), u(-40, -25)
    p_sig1, p_sig2 = u(0.020, 0.024), u(0.026, 0.030)
    p_t_amp, p_t_da, p_t_db = u(0.35, 0.55), u(-15, 15), u(-10, 10)
    spike_area, spike_height = u(0.035, 0.055), u(10.0, 15.0)  # mV*s, mV (dipole)
    spike_width = spike_area / spike_height  # 2.3 - 5.5 ms
    spike_dir = _dir(u(60, 120), u(0, 40))
    av_delay = u(0.14, 0.18)

    k_lvh = lvh_k if lvh else 1.0
    k_emph = emph_k if emph else 1.0
    p_amp, p_alpha, p_beta = p_pulm if emph else p_norm
    if emph:
        p_parts = ((-0.006, 0.0125, 0.8, 5, 8), (0.010, 0.014, 0.3, -5, -8))
    else:
        p_parts = ((-0.012, 0.016, 0.7, 10, 15), (0.014, 0.018, 0.6, -10, -15))
    if paced:
        q_amp = p_q_amp * k_lvh * k_emph
        q_alpha, q_beta = p_q_alpha, p_q_beta
        t_amp = p_t_amp * min(k_lvh, 1.6) * k_emph
        t_dir = -_dir(q_alpha + p_t_da, q_beta + p_t_db)  # discordant
        rate = paced_rate
    else:
        q_amp = q_amp0 * k_lvh * k_emph
        q_alpha, q_beta = q_axis_emph if emph else q_axis_norm
        if lvh:  # strain: T away from the lateral leads, with ST depression
            q_beta -= 8.0  # LVH: more posterior QRS (deeper S in V1)
            main_sigma += 0.0015
            t_amp = t_strain[0] * k_emph**0.5
            t_dir = _dir(t_strain[1], t_strain[2])
        else:
            t_amp = t_norm[0] * k_emph
            t_dir = _dir(float(np.clip(q_alpha, 15, 60)) + t_norm[1], t_norm[2])
        rate = hr
    q_dir = _dir(q_alpha, q_beta)

    # ---- beat times ----------------------------------------------------------------
    rr_mean = 60.0 / rate
    beats: list[tuple[float, float]] = []  # (QRS reference time, RR)
    tb = (phase - 1.0) * rr_mean
    while tb < seconds + 0.3:
        if paced:  # fixed rate
            rr = rr_mean
        else:  # respiratory sinus arrhythmia + jitter
            rr = rr_mean * (
                1 + rsa * np.sin(2 * np.pi * resp_f * tb + resp_phase) + rr_rng.normal(0, 0.012)
            )
        beats.append((tb, rr))
        tb += rr

    # ---- dipole ----------------------------------------------------------------------
    waves = _Waves()
    spikes: list[float] = []
    for tb, rr in beats:
        qt = qtc * np.sqrt(rr)
        if paced:
            ts = tb  # pacing artifact time = QRS onset
            spikes.append(ts)
            p_centre = ts - av_delay
            waves.add(ts + 0.045, p_sig1, 0.5 * q_amp * _dir(q_alpha + 30, q_beta + 10))
            waves.add(ts + 0.100, p_sig2, q_amp * q_dir)
            t_centre = ts + qt + 0.05 - 0.09
        else:
            p_centre = tb - pr
            waves.add(tb - 0.026, 0.007, 0.12 * q_amp * sept_dir)
            waves.add(tb, main_sigma, q_amp * q_dir)
            waves.add(tb + 0.024, 0.009, 0.28 * q_amp * term_dir)
            t_centre = tb + qt - 0.135
            if lvh:
                waves.add(tb + 0.11, 0.04, 0.12 * t_dir)
        for dt, sig, frac, da, db in p_parts:
            waves.add(p_centre + dt, sig, frac * p_amp * _dir(p_alpha + da, p_beta + db))
        waves.add(t_centre - 0.03, 0.05, 0.55 * t_amp * t_dir)
        waves.add(t_centre + 0.012, 0.038, 0.6 * t_amp * t_dir)
    dip = waves.render(t)
    dip *= scale * (1 + 0.04 * np.sin(2 * np.pi * resp_f * t + resp_phase))[None, :]

    if spikes:  # pacing artifacts, added after scaling (device output, not tissue)
        tau = 0.02
        tail_len = int(np.ceil(6 * tau * fs))
        tail = np.exp(-np.arange(tail_len) / (tau * fs))
        tail *= 1.0 / tail.sum()  # unit area in samples
        for ts in spikes:
            k0, w = _box_pulse(n, fs, ts, spike_width)
            if w.size:
                dip[:, k0:k0 + w.size] += (spike_height * w)[None, :] * spike_dir[:, None]
            k1 = int(np.floor((ts + spike_width) * fs)) + 1
            lo, hi = max(k1, 0), min(k1 + tail_len, n)
            if hi > lo:
                # recharge: 10 % of the pulse area, opposite polarity
                amp = -0.1 * spike_area * fs
                dip[:, lo:hi] += (amp * tail[lo - k1:hi - k1])[None, :] * spike_dir[:, None]

    # ---- electrodes ------------------------------------------------------------------
    ue = el_rng.uniform
    limb = _LIMB_R * np.stack(
        [np.cos(_LIMB_ANGLES), np.sin(_LIMB_ANGLES), np.zeros(3)], axis=1
    )  # [3 electrodes, 3]
    theta = np.deg2rad(_PRECORDIAL_THETA + el_rng.normal(0, 5, 6))
    gain = _PRECORDIAL_GAIN * ue(0.9, 1.1, 6)
    prec = gain[:, None] * np.stack(
        [np.cos(theta), _PRECORDIAL_Y + el_rng.normal(0, 0.05, 6), np.sin(theta)], axis=1
    )
    elec = np.concatenate([limb, prec], axis=0) @ dip  # [9, n]: RA LA LL V1..V6

    # ---- noise per electrode -----------------------------------------------------------
    wander_k = np.exp(ue(np.log(0.2), np.log(1.5)))
    drift_f = ue(0.02, 0.1)
    drift_phase = ue(0, 2 * np.pi)
    elec += (ue(0, 0.12, 9) * wander_k)[:, None] * np.sin(
        2 * np.pi * resp_f * t + resp_phase + ue(-0.3, 0.3, 9)[:, None]
    )
    elec += (ue(0, 0.12, 9) * wander_k)[:, None] * np.sin(
        2 * np.pi * drift_f * t + drift_phase + ue(-0.5, 0.5, 9)[:, None]
    )
    mains_f = 50.0 if el_rng.random() < 0.5 else 60.0
    mains_amp = ue(0.002, 0.015)
    elec += (mains_amp * ue(0.0, 1.0, 9))[:, None] * np.sin(
        2 * np.pi * mains_f * t + ue(0, 2 * np.pi) + ue(-0.2, 0.2, 9)[:, None]
    )
    emg = np.exp(ue(np.log(0.002), np.log(0.02)))
    elec += (emg * ue(0.5, 1.5, 9))[:, None] * el_rng.standard_normal((9, n))

    # ---- leads -----------------------------------------------------------------------
    ra, la, ll = elec[0], elec[1], elec[2]
    out = np.empty((12, n), dtype=np.float32)
    lead_i = (la - ra).astype(np.float32)
    lead_ii = (ll - ra).astype(np.float32)
    out[0] = lead_i
    out[1] = lead_ii
    out[2] = lead_ii - lead_i
    out[3] = -(lead_i + lead_ii) / 2
    out[4] = lead_i - lead_ii / 2
    out[5] = lead_ii - lead_i / 2
    wct = (ra + la + ll) / 3.0
    out[6:] = (elec[3:] - wct[None, :]).astype(np.float32)
    return out
