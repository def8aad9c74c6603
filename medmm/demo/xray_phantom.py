"""Synthetic PA chest radiographs that carry the findings of a real report.

The demo cohort pairs real IU report text with a phantom radiograph rendered here, so
that a small contrastive model has something true to learn: every finding in
:data:`medmm.io.findings.FINDINGS` is planted as a distinct structure in a distinct
place, large enough to be seen at 128 x 128, on top of nuisance variation (body size,
position, rotation, exposure, lung texture, noise) so that no two images are alike.

Conventions
-----------
* Output: float32 ``[size, size]`` in ``[0, 1]``, higher = more attenuation (white), as
  a MONOCHROME2 radiograph is displayed.
* PA view displayed as if facing the patient: the patient's **right is on the image
  left**. ``effusion_side="left"`` means the patient's left, i.e. the image right; the
  heart bulges to the image right; a pacemaker sits (usually) in the patient's left
  upper chest, image right.
* Anatomy is written in a canonical frame: ``X`` in ``[-1, 1]`` left to right, ``Y`` in
  ``[-1, 1]`` top to bottom, ``u = |X|`` (or ``side * X``) the distance from the midline
  toward the chest wall. A random similarity transform (scale, shift, rotation) maps
  image pixels into that frame, so every structure moves together.
* Tissue is an additive attenuation map ``A`` (body, minus lung air, plus bone, heart,
  fluid ...) shown as ``1 - exp(-A)`` with random exposure (gain, gamma, offset) that
  keeps it below ~0.93; metal is composited on top (up to ~0.985), so devices are
  always the brightest thing in the picture; then smooth and quantum noise.
* Every part of the picture draws from its own random stream (seeded once from the
  caller's generator), so one seed rendered with and without a finding shows the same
  patient, pose, exposure and noise: the difference image is the finding alone. That
  is what the tests measure, and what an "oracle" that treats every planted finding
  as certainly visible can rely on: a flagged finding is always drawn, never left
  out or hidden (nodules avoid the heart, bands span aerated lung, the consolidation
  grows if the lung edge clips it below its target area).

Nuisance: body size x0.90-1.10, shift +/-5 % of the side, rotation +/-4 degrees,
diaphragm height, exposure, lung-marking pattern, noise.

Findings and how each is planted (sizes at 256 px; they scale with ``size``):

================  ==========================================================
cardiomegaly      cardiothoracic ratio 0.58-0.68 (normal 0.40-0.48, emphysema
                  0.36-0.42): the cardiac silhouette widens both ways
pleural_effusion  homogeneous basal opacity, denser downward, hazy top: a
                  meniscus flat medially that climbs the lateral chest wall to
                  15-35 % of the lung height above the dome; costophrenic angle
                  and hemidiaphragm effaced. Side as given, else random
edema             bilateral perihilar "bat-wing" haze, more prominent markings,
                  5-8 Kerley B lines per side at the lateral bases
pneumothorax      one side: the lung collapses to 60-74 % (linear) toward its
                  medial base, leaving an apical / lateral rim of air that is
                  darker and has no lung markings, bounded by a thin bright
                  visceral pleural line
atelectasis       1-2 plate-like dense bands (4-6 px thick, near horizontal)
                  across the aerated lower zone of one lung
consolidation     one irregular, mottled dense patch of 10-20 % of one lung's
                  area in its upper, middle or lower zone, with air bronchograms
nodule            1-3 round dense spots 14-22 px across, in the lungs, clear of
                  the heart and of each other
support_devices   "pacemaker": metal generator (~25 x 17 px rounded rectangle,
                  85 % on the patient's left) in the upper chest, connector
                  block, two leads curving via the SVC to the right atrium and
                  ventricle; "sternotomy": 4-7 twisted wire loops in the
                  midline; "both"
emphysema         hyperinflation: taller, darker lungs, low flat diaphragm,
                  narrow vertical heart, pruned peripheral markings, wider rib
                  spacing
================  ==========================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from scipy import ndimage

from medmm.io.findings import EFFUSION_SIDES, FINDINGS

__all__ = [
    "DEVICE_KINDS",
    "device_kind_from_text",
    "planted_in_xray",
    "render_chest_xray",
    "save_contact_sheet",
]

DEVICE_KINDS: tuple[str, ...] = ("pacemaker", "sternotomy", "both")

# canonical anatomy (see module docstring for the frame)
_U_MED = 0.10  # medial lung edge (mediastinum covers it)
_U_MAX = 0.70  # lateral lung edge where the apical cap meets the wall
_LAT_SLOPE = 0.14  # the lateral wall widens downward by this per unit Y
_APEX = -0.74
_RV = 0.50  # vertical radius of the lung's rounded upper part
_DOME = {-1: 0.38, +1: 0.43}  # dome top of the right (image-left) / left hemidiaphragm
_DOME_K = 0.22  # dome curvature (lateral); the costophrenic angle sits ~0.3 below the dome top
_HILUM = (0.21, -0.10)  # (u, Y)
_HEART_B = 0.27  # vertical semi-axis
_HEART_SHEAR = 0.35  # the apex sits low and to the patient's left


def planted_in_xray() -> tuple[str, ...]:
    """The FINDINGS names the phantom can plant: all of them."""
    return tuple(FINDINGS)


_PACER = re.compile(r"\b(pacemakers?|pacers?|a?icds?|defibrillators?|leads?|pacing\s+wires?)\b", re.I)
_STERNO = re.compile(r"\b(sternotom(y|ies)|sternal\s+(wires?|sutures?|cerclage))\b", re.I)
_NEGATED = re.compile(r"\b(no|not|without|removed|removal\s+of)\b[^.;:]*$", re.I)


def _mentions(pattern: re.Pattern, text: str) -> bool:
    """A match not negated earlier in its sentence ("No pacemaker", "without ...")."""
    for m in pattern.finditer(text):
        start = max(text.rfind(".", 0, m.start()), text.rfind("\n", 0, m.start())) + 1
        if not _NEGATED.search(text[start : m.start()]):
            return True
    return False


def device_kind_from_text(report_text: str) -> str:
    """Which device to draw for a report positive for ``support_devices``.

    "pacemaker" if the text mentions pacemaker / pacer / (A)ICD / defibrillator / leads
    / pacing wires, "sternotomy" if it mentions sternotomy / sternal wires (sutures,
    cerclage), "both" if both, else "pacemaker". A mention negated earlier in its
    sentence ("No pacemaker", "without ...") does not count.
    """
    text = str(report_text or "")
    pacer, sterno = _mentions(_PACER, text), _mentions(_STERNO, text)
    if pacer and sterno:
        return "both"
    if sterno:
        return "sternotomy"
    return "pacemaker"


# ----------------------------------------------------------------------------- helpers

_F = np.float32
# independent random streams, so that a finding's draws never shift the anatomy's:
# the same seed with and without a finding gives the same patient, pose and exposure
_STREAMS: tuple[str, ...] = ("pose", "anatomy", "texture", "exposure", "noise", "effusion_side", *FINDINGS, "device")


def _edge(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask of a signed distance (negative inside), edge ``width`` wide."""
    return 0.5 - 0.5 * np.tanh(d * (1.0 / width))


def _gauss(q2: np.ndarray) -> np.ndarray:
    """exp(-q2) for q2 >= 0, cut at q2 = 30 (far below visibility): avoids the very slow
    denormal floats that exp of large negative float32 numbers produces."""
    return np.exp(-np.minimum(q2, 30.0))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _lung_sdf(u, Y, dome, dome_k, apex=_APEX, u_max=_U_MAX):
    """Approximate signed distance to one lung (negative inside), in canonical units.

    ``u`` is the distance from the midline toward that lung's chest wall. The lung is a
    rounded cap (half an ellipse) on straight walls, cut below by the diaphragm dome,
    a parabola ``dome + k * ((u - peak) / half_width)**2`` that is shallow medially
    (the heart sits on it) and steep laterally, where it meets the chest wall in a
    sharp costophrenic angle.
    """
    rh = (u_max - _U_MED) / 2.0
    uc = _U_MED + rh
    yc = apex + _RV
    e = np.sqrt(((u - uc) * (1.0 / rh)) ** 2 + ((Y - yc) * (1.0 / _RV)) ** 2) - 1.0
    u_lat = u_max + _LAT_SLOPE * (Y - yc)
    walls = np.maximum(_U_MED - u, u - u_lat)
    upper = np.where(Y < yc, e * rh, walls)
    t = (u - (uc - 0.05)) * (1.0 / rh)
    k = np.where(t < 0, _F(0.3 * dome_k), _F(dome_k))
    base = Y - (dome + k * t * t)
    return np.maximum(upper, base)


def _wall_u(Y, apex=_APEX):
    """The lateral lung edge (inner chest wall) at height ``Y``."""
    return _U_MAX + _LAT_SLOPE * (Y - (apex + _RV))


def _costophrenic_y(dome, dome_k, apex=_APEX):
    """Height of the costophrenic angle (lateral end of the dome)."""
    rh = (_U_MAX - _U_MED) / 2.0
    t = (_wall_u(dome + 0.2, apex) - (_U_MED + rh - 0.05)) / rh
    return dome + dome_k * t * t


@lru_cache(maxsize=1)
def _lung_area() -> float:
    """One lung's area (canonical units, normal anatomy), by counting a fine grid."""
    g = np.linspace(0.0, 1.0, 501)
    uu, yy = np.meshgrid(g, 2.0 * g - 1.0)
    return float((_lung_sdf(uu, yy, _DOME[-1], _DOME_K) < 0).sum() * (g[1] - g[0]) * 2.0 * (g[1] - g[0]))


@lru_cache(maxsize=16)
def _bspline_taps(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (4, size) into a (cells + 4) grid and cubic B-spline weights (4, size),
    scaled so that white noise on the grid comes out with about unit variance."""
    t = (np.arange(size) + 0.5) / size * cells + 1.5
    i = np.floor(t).astype(np.intp)
    f = t - i
    w = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3]) / 6.0
    w /= np.sqrt((w**2).sum(axis=0)).mean()
    idx = np.stack([i - 1, i, i + 1, i + 2])
    w = w.astype(_F)
    idx.setflags(write=False)
    w.setflags(write=False)
    return idx, w


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, about unit-variance smooth noise with ~``cells`` blobs across.

    Separable 4-tap gathers rather than a matrix product: no BLAS, so no BLAS thread
    pool spinning up (and fighting other processes) on a small machine."""
    idx, w = _bspline_taps(size, cells)
    low = rng.standard_normal((cells + 4, cells + 4)).astype(_F)
    rows = sum(low[idx[k]] * w[k][:, None] for k in range(4))  # (size, cells + 4)
    return sum(rows[:, idx[k]] * w[k][None, :] for k in range(4))


def _splat(points_rc: np.ndarray, size: int) -> np.ndarray:
    """Bilinear splat of unit-weight (row, col) points into a size x size image."""
    r, c = points_rc[:, 0], points_rc[:, 1]
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    fr, fc = r - r0, c - c0
    idx, wts = [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        idx.append(rr[ok] * size + cc[ok])
        wts.append(w[ok])
    out = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=size * size)
    return out.reshape(size, size)


def _resample_curve(xy: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline every ``step`` (canonical units)."""
    seg = np.diff(xy, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    n = max(int(cum[-1] / step) + 1, 2)
    t = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(t, cum, xy[:, 0]), np.interp(t, cum, xy[:, 1])], axis=1)


def _spline(ctrl: np.ndarray, n: int = 160) -> np.ndarray:
    """Catmull-Rom curve through control points (canonical X, Y)."""
    p = np.vstack([ctrl[:1], ctrl, ctrl[-1:]])
    t = np.linspace(0.0, 1.0, max(n // (len(ctrl) - 1), 4), endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3))
    out.append(ctrl[-1:])
    return np.vstack(out)


class _Frame:
    """Pixel grid <-> canonical anatomy frame under a random similarity transform."""

    def __init__(self, size: int, scale: float, shift: tuple[float, float], angle: float):
        self.size, self.scale, self.shift, self.angle = size, scale, shift, angle
        g = (np.arange(size, dtype=_F) + 0.5) * (2.0 / size) - 1.0
        x, y = (g - shift[0])[None, :], (g - shift[1])[:, None]  # x: columns, y: rows (down)
        ca, sa = math.cos(angle) / scale, math.sin(angle) / scale
        self.X = ca * x + sa * y
        self.Y = ca * y - sa * x
        self.px = 2.0 / size / scale  # one output pixel in canonical units

    def to_rc(self, xy: np.ndarray) -> np.ndarray:
        """Canonical (X, Y) points -> pixel (row, col)."""
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        X, Y = xy[:, 0] * self.scale, xy[:, 1] * self.scale
        x = ca * X - sa * Y + self.shift[0]
        y = sa * X + ca * Y + self.shift[1]
        return np.stack([(y + 1.0) / 2.0 * self.size - 0.5, (x + 1.0) / 2.0 * self.size - 0.5], axis=1)

    def lines(self, polylines: list[np.ndarray], width_px: float) -> np.ndarray:
        """Thin lines along canonical polylines, ~``width_px`` wide, peak ~1."""
        if not polylines:
            return np.zeros((self.size, self.size), _F)
        pts = np.vstack([_resample_curve(p, self.px * 0.5) for p in polylines])
        img = _splat(self.to_rc(pts), self.size)
        sigma = max(width_px / 2.355, 0.5)
        img = ndimage.gaussian_filter(img, sigma, truncate=2.5)
        # unit points every half pixel along a line peak at ~2 / (sqrt(2 pi) sigma)
        return np.clip(img * (math.sqrt(2 * math.pi) * sigma / 2.0), 0.0, 1.0).astype(_F)


# ----------------------------------------------------------------------------- render


def render_chest_xray(
    findings: Mapping[str, bool],
    rng: np.random.Generator,
    *,
    effusion_side: str | None = None,
    device_kind: str = "pacemaker",
    size: int = 256,
) -> np.ndarray:
    """Render one synthetic PA chest radiograph carrying ``findings``.

    Args:
        findings: finding name -> present; names from FINDINGS (missing = absent,
            unknown names raise ValueError).
        rng: the only source of randomness. It is consumed by a fixed amount (one
            draw of per-part seeds) whatever the findings, and each part of the
            picture has its own stream: the same generator state with and without a
            finding gives the same patient, pose, exposure and noise, differing only
            where the finding is planted.
        effusion_side: "left", "right" or "bilateral" (the patient's side; image
            right is the patient's left); None picks one at random (right 40 %,
            left 30 %, bilateral 30 %).
        device_kind: "pacemaker", "sternotomy" or "both" (drawn if support_devices).
        size: output side in pixels (>= 32). Sizes in pixels quoted for findings are
            at 256 and scale with ``size``.

    Returns:
        float32 ``[size, size]`` in ``[0, 1]``, higher = more attenuation (white).
    """
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown finding name(s) {sorted(unknown)}; expected names from {FINDINGS}")
    if effusion_side is not None and effusion_side not in EFFUSION_SIDES:
        raise ValueError(f"effusion_side must be one of {EFFUSION_SIDES} or None, got {effusion_side!r}")
    if device_kind not in DEVICE_KINDS:
        raise ValueError(f"device_kind must be one of {DEVICE_KINDS}, got {device_kind!r}")
    if int(size) < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    size = int(size)
    on = {name: bool(findings.get(name, False)) for name in FINDINGS}
    seeds = rng.integers(0, 2**63 - 1, size=len(_STREAMS), dtype=np.int64)
    g = {name: np.random.default_rng(int(s)) for name, s in zip(_STREAMS, seeds)}

    # ---------------------------------------------------------------- pose (nuisance)
    pose = g["pose"]
    frame = _Frame(
        size,
        scale=pose.uniform(0.90, 1.10),
        shift=(pose.uniform(-0.10, 0.10), pose.uniform(-0.10, 0.10)),  # +/- 5 % of the side
        angle=math.radians(pose.uniform(-4.0, 4.0)),
    )
    X, Y, px = frame.X, frame.Y, frame.px
    u = np.abs(X)
    left = X > 0  # image right = the patient's left

    # ---------------------------------------------------------------- anatomy
    an = g["anatomy"]
    emph = on["emphysema"]
    dome_shift = an.uniform(-0.04, 0.04)
    drop = 0.17 if emph else 0.0
    dome_r = _DOME[-1] + dome_shift + drop
    dome_l = _DOME[+1] + dome_shift + drop + an.uniform(-0.02, 0.03)
    dome_k = _DOME_K * (0.25 if emph else an.uniform(0.85, 1.15))
    apex = _APEX - (0.05 if emph else 0.0)
    dome = np.where(left, _F(dome_l), _F(dome_r))
    air_strength = an.uniform(1.05, 1.20) * (1.35 if emph else 1.0)
    normal_ctr, big_ctr, emph_ctr = an.uniform(0.40, 0.48), an.uniform(0.58, 0.68), an.uniform(0.36, 0.42)
    knob_r = an.uniform(0.045, 0.06)

    # body: neck, shoulders, chest wall
    shoulder = _smoothstep((Y + 1.0) * (1.0 / 0.30))
    body_hw = 0.30 + 0.66 * shoulder + 0.02 * Y
    body = _edge(u - body_hw, 2.0 * px)
    thickness = np.sqrt(np.clip(1.0 - (u / (body_hw + 0.05)) ** 2, 0.02, 1.0))
    A = 1.75 * body * thickness

    lung_sdf = _lung_sdf(u, Y, dome, dome_k, apex=apex)
    lung = _edge(lung_sdf, 1.2 * px)

    # heart: two sheared half-ellipses (small right border, bulging left border with a low
    # apex) resting on the diaphragm; their horizontal extent sets the CTR
    thoracic_hw = _wall_u(0.5 * (dome_r + dome_l) + 0.1, apex)  # widest inner chest
    ctr = big_ctr if on["cardiomegaly"] else (emph_ctr if emph else normal_ctr)
    heart_w = ctr * 2.0 * thoracic_hw
    hb = _HEART_B * (1.1 if emph else 1.0) * (1.0 + 0.6 * max(ctr - 0.45, 0.0))
    shear = _HEART_SHEAR * (0.5 if emph else 1.0)
    heart_geo = _Heart(width=heart_w, b=hb, shear=shear, cy=0.5 * (dome_r + dome_l) + 0.10 - hb)
    heart = _edge(heart_geo.sdf(X, Y), 1.5 * px)

    # mediastinum: central column widening to the heart, aortic knob on the patient's left
    med_hw = 0.105 + 0.04 * _smoothstep((Y + 0.45) * 2.0)
    mediast = _edge(np.abs(X - 0.015) - med_hw, 2.0 * px) * _edge(-(Y + 0.97), 3 * px)
    kx, ky = (X - 0.125) * (1.0 / knob_r), (Y + 0.38) * (1.0 / (1.3 * knob_r))
    mediast = np.maximum(mediast, _edge((np.sqrt(kx * kx + ky * ky) - 1.0) * knob_r, 1.5 * px))
    lung_tissue = lung * (1.0 - heart) * (1.0 - mediast)  # what projects as aerated lung
    air_depth = 0.55 + 0.45 * np.sqrt(np.clip(1.0 - ((u - 0.43) * (1.0 / 0.40)) ** 2, 0.0, 1.0))

    # ---------------------------------------------------------------- findings
    dome_of = {-1: dome_r, 1: dome_l}
    zeros = np.zeros_like(X)
    fluid = ptx_rim = pleural_line = consol = haze = kerley = atel = nodules = zeros

    if on["pneumothorax"]:  # the lung collapses toward its medial base: a rim of pure air
        r_ = g["pneumothorax"]
        s = 1 if r_.random() < 0.5 else -1
        f = r_.uniform(0.60, 0.74)  # linear fraction of lung that stays expanded
        us = s * X
        d_s = dome_of[s]
        au, ay = _U_MED, d_s
        collapsed = _lung_sdf(au + (us - au) * (1.0 / f), ay + (Y - ay) * (1.0 / f), d_s, dome_k, apex=apex) * f
        this_lung = _edge(_lung_sdf(us, Y, d_s, dome_k, apex=apex), 1.2 * px)
        ptx_rim = this_lung * (1.0 - _edge(collapsed, px))
        pleural_line = this_lung * _gauss((collapsed * (1.0 / (0.7 * px))) ** 2)

    if on["pleural_effusion"]:  # fluid up to a meniscus that climbs the lateral wall
        r_ = g["pleural_effusion"]
        side_name = effusion_side or str(g["effusion_side"].choice(["right", "left", "bilateral"], p=[0.4, 0.3, 0.3]))
        fluid = zeros.copy()
        for s in {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}[side_name]:
            height = _costophrenic_y(dome_of[s], dome_k, apex) - apex  # lung height
            frac = r_.uniform(0.15, 0.35)
            level = dome_of[s] - frac * height  # meniscus top (chest wall), above the dome
            us = s * X
            t = np.clip((us - _U_MED) * (1.0 / (_U_MAX - _U_MED)), 0.0, 1.0)
            # meniscus: flat medially, curving up to its top along the chest wall
            t4 = t * t
            t4 = t4 * t4
            surface = level + 0.55 * frac * height * (1.0 - t4)
            in_chest = _edge(_U_MED - 0.02 - us, px) * _edge(us - _wall_u(Y, apex) - 0.01, px)
            # hazy upper edge, denser with depth (more fluid in the beam)
            layer = _edge(surface + 0.02 - Y, 0.03) * in_chest
            depth = np.clip((Y - surface) * (1.0 / 0.10), 0.0, 1.0)
            fluid = np.maximum(fluid, layer * (0.75 + 0.25 * depth))

    if on["consolidation"]:  # one large irregular patch in one lung
        r_ = g["consolidation"]
        s = 1 if r_.random() < 0.5 else -1
        zone = int(r_.integers(0, 3))  # upper / middle / lower
        cy = (-0.42, -0.08, 0.16)[zone] + r_.uniform(-0.04, 0.04) + (0.08 * zone if emph else 0.0)
        cx = s * r_.uniform(0.44, 0.54)
        area = r_.uniform(0.10, 0.20) * _lung_area()
        ar = r_.uniform(0.75, 1.35)
        a, b = math.sqrt(area / math.pi * ar), math.sqrt(area / math.pi / ar)
        wobble = 0.40 * _smooth_noise(r_, size, 12)
        mottle = 0.85 + 0.10 * _smooth_noise(r_, size, 30)
        for _grow in range(2):  # grow once if the lung's edge clipped it below target
            ex, ey = (X - cx) * (1.0 / a), (Y - cy) * (1.0 / b)
            consol = _edge(np.sqrt(ex * ex + ey * ey) - 1.0 - wobble, 0.16) * lung_tissue
            covered = float(consol.sum()) * px * px
            if covered >= 0.9 * area:
                break
            grow = min(math.sqrt(area / max(covered, 1e-6)), 1.5)
            a, b = a * grow, b * grow
        consol = consol * mottle

    markings = _vessel_texture(g["texture"], frame, u, Y, left, prune=emph)

    if on["edema"]:  # bat-wing perihilar haze + Kerley B lines at both bases
        r_ = g["edema"]
        wu, wy = (u - (_HILUM[0] + 0.06)) * (1.0 / 0.25), (Y - (_HILUM[1] + 0.06)) * (1.0 / 0.32)
        haze = _gauss(wu * wu + wy * wy) * (0.85 + 0.2 * _smooth_noise(r_, size, 12))
        segs = []
        for s in (-1, 1):
            cp_y = _costophrenic_y(dome_of[s], dome_k, apex)
            for _ in range(int(r_.integers(5, 9))):
                yk = r_.uniform(cp_y - 0.45, cp_y - 0.08)
                uw = _wall_u(yk, apex)
                length = r_.uniform(0.07, 0.12)
                segs.append(np.array([[s * (uw + 0.01), yk], [s * (uw - length), yk + r_.uniform(-0.01, 0.01)]]))
        kerley = frame.lines(segs, 1.7)
        markings = markings * 1.4

    if on["atelectasis"]:  # plate-like bands in a lower zone
        r_ = g["atelectasis"]
        s = 1 if r_.random() < 0.5 else -1
        atel = zeros
        for i in range(int(r_.integers(1, 3))):
            yb = dome_of[s] - r_.uniform(0.18, 0.32) - 0.12 * i
            # span the aerated width at this height: from the heart border to the wall
            u_out = float(_wall_u(yb, apex)) - 0.05
            grid_u = np.linspace(0.12, u_out, 60)
            clear = heart_geo.sdf(s * grid_u, np.full_like(grid_u, yb)) > 0.0
            u_in = max(float(grid_u[np.argmax(clear)]) if clear.any() else u_out, 0.18)
            u_in = min(u_in, u_out - 0.28)  # a big heart: the band runs onto its border
            half = 0.5 * (u_out - u_in) * r_.uniform(0.8, 0.95)
            uc_ = 0.5 * (u_out + u_in) + r_.uniform(-0.3, 0.3) * (0.5 * (u_out - u_in) - half)
            tb = math.radians(r_.uniform(-8, 8))
            p0 = (s * (uc_ - half * math.cos(tb)), yb - half * math.sin(tb))
            p1 = (s * (uc_ + half * math.cos(tb)), yb + half * math.sin(tb))
            thick = r_.uniform(0.032, 0.044)  # ~4-6 px at 256
            atel = np.maximum(atel, _edge(_segment_distance(X, Y, p0, p1) - thick / 2.0, 0.7 * px))
        atel = atel * lung

    if on["nodule"]:  # 1-3 round dense spots in the lungs, clear of the heart
        r_ = g["nodule"]
        nodules = zeros
        placed: list[tuple[float, float]] = []
        for _ in range(int(r_.integers(1, 4))):
            for _try in range(50):
                s = 1 if r_.random() < 0.5 else -1
                nu, ny = r_.uniform(0.24, 0.66), r_.uniform(apex + 0.25, dome_of[s] - 0.12)
                clear = float(heart_geo.sdf(s * nu, ny)) > 0.06
                apart = all(math.hypot(s * nu - qx, ny - qy) > 0.15 for qx, qy in placed)
                if float(_lung_sdf(nu, ny, dome_of[s], dome_k, apex=apex)) < -0.07 and clear and apart:
                    break
            placed.append((s * nu, ny))
            rad = r_.uniform(14.0, 22.0) * size / 256.0 / 2.0 * px  # diameter in output pixels (10-15 mm)
            nd = np.sqrt((X - s * nu) ** 2 + (Y - ny) ** 2)
            nodules = np.maximum(nodules, _edge(nd - rad, 0.6 * px))

    # ---------------------------------------------------------------- bones
    ribs = _ribs(u, Y, px, apex, stretch=1.12 if emph else 1.0)
    clav_y = -0.82 - 0.15 * u + 0.05 * np.sin(4.0 * u)
    clav = _edge(np.abs(Y - clav_y) - 0.030, px) * _edge(np.abs(u - 0.36) - 0.30, 1.5 * px)
    spine = _edge(u - 0.075, 1.5 * px) * (0.75 + 0.25 * np.cos(Y * (2 * math.pi / 0.13)) ** 2)
    hila = _gauss(((u - _HILUM[0]) * (1.0 / 0.07)) ** 2 + ((Y - _HILUM[1]) * (1.0 / 0.13)) ** 2)

    # ---------------------------------------------------------------- assemble attenuation
    air = lung_tissue * (1.0 - fluid) * (1.0 - 0.92 * consol)
    A = A - air_strength * air_depth * air
    not_heart = (1.0 - heart) * (1.0 - mediast)
    A = A - 0.40 * ptx_rim * not_heart  # the rim holds no lung tissue at all
    A = A + (0.42 * g["texture"].uniform(0.9, 1.2)) * markings * air * (1.0 - ptx_rim)
    A = A + 0.25 * heart + 0.10 * mediast + 0.22 * hila * body
    bubble_x, bubble_y = (X - 0.42) * (1.0 / 0.12), (Y - (dome_l + 0.13)) * (1.0 / 0.06)
    A = A - (0.45 * an.uniform(0.2, 1.0)) * _edge(np.sqrt(bubble_x**2 + bubble_y**2) - 1.0, 0.15)
    A = A + 0.25 * fluid + 0.20 * consol - 0.22 * markings * consol  # air bronchograms
    A = A + 0.55 * haze * lung_tissue + 0.50 * kerley * lung
    A = A + 0.85 * atel + 0.80 * nodules + 0.60 * pleural_line * not_heart
    A = A + (0.22 * ribs + 0.30 * clav + 0.40 * spine) * body
    A = A * (1.0 + 0.05 * _smooth_noise(g["exposure"], size, 6))

    # ---------------------------------------------------------------- exposure and noise
    # tissue is kept below ~0.93 so that metal, composited on top, always shows brighter
    ex = g["exposure"]
    D = 1.0 - _gauss(np.maximum(A, 0.0) * ex.uniform(0.85, 1.15))
    D = D ** ex.uniform(0.85, 1.2)
    lo, hi = ex.uniform(-0.03, 0.04), ex.uniform(0.86, 0.93)
    D = lo + (hi - lo) * D
    if on["support_devices"]:
        metal = _devices(g["device"], frame, X, Y, px, device_kind, heart_geo)
        D = D + (0.985 - D) * metal
    nz = g["noise"]
    D = D + 0.012 * _smooth_noise(nz, size, 24)
    D = D + nz.standard_normal((size, size), dtype=_F) * (0.008 + 0.016 * np.sqrt(np.clip(1.0 - D, 0.0, 1.0)))
    return np.clip(D, 0.0, 1.0).astype(_F, copy=False)


# ----------------------------------------------------------------------------- parts


class _Heart:
    """Cardiac silhouette: a right and a left half-ellipse sharing a vertical semi-axis
    ``b``, sheared so the apex sits low on the patient's left. The right border lies
    at ``-width / 3`` and the left at ``+2 width / 3`` (a sheared ellipse reaches
    ``sqrt(a**2 + (shear * b)**2)`` sideways), so ``width`` is the measured cardiac
    width of the cardiothoracic ratio."""

    def __init__(self, width: float, b: float, shear: float, cy: float):
        self.width, self.b, self.shear, self.cy = width, b, shear, cy
        sb2 = (shear * b) ** 2
        self.a_right = math.sqrt(max((width / 3.0) ** 2 - sb2, 1e-4))
        self.a_left = math.sqrt(max((2.0 * width / 3.0) ** 2 - sb2, 1e-4))

    def sdf(self, X, Y):
        dy = Y - self.cy
        dx = X - self.shear * dy
        a = np.where(dx < 0, _F(self.a_right), _F(self.a_left))
        q = np.sqrt((dx / a) ** 2 + (dy * (1.0 / self.b)) ** 2) - 1.0
        return q * np.minimum(a, self.b)



def _segment_distance(X, Y, p0, p1):
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((X - p0[0]) * dx + (Y - p0[1]) * dy) * (1.0 / (dx * dx + dy * dy)), 0.0, 1.0)
    ex, ey = X - (p0[0] + t * dx), Y - (p0[1] + t * dy)
    return np.sqrt(ex * ex + ey * ey)


def _ribs(u, Y, px, apex, stretch=1.0):
    """Posterior ribs (arcs that rise a little off the spine, then fall toward the chest
    wall) and fainter anterior ribs (falling medially), both sides at once."""
    pitch = 0.135 * stretch
    start = -0.86
    wall = _wall_u(Y, apex) + 0.05
    t = (Y - (-0.16 * u + 0.72 * u * u) - start) * (1.0 / pitch)
    k = np.round(t)
    post = _edge(np.abs(t - k) * pitch - 0.023, px) * ((k >= 0) & (k <= 10))
    post = post * _edge(u - wall, 2 * px) * _edge(0.075 - u, 2 * px)
    v = 0.86 - u
    t2 = (Y - (0.35 * v + 0.25 * v * v) - start - 0.05) * (1.0 / pitch)
    k2 = np.round(t2)
    ant = _edge(np.abs(t2 - k2) * pitch - 0.019, px) * ((k2 >= 0) & (k2 <= 5))
    ant = ant * _edge(u - wall, 2 * px) * _edge(0.30 - u, 3 * px)
    return post + 0.45 * ant


def _vessel_texture(rng, frame, u, Y, left, prune=False):
    """Lung markings: zero crossings of noise that varies fast across angle and slowly
    along the radius from each hilum (so the lines radiate, wander and branch), about
    1.5-2 px wide, fading toward the periphery (faster with ``prune``)."""
    du, dv = u - _HILUM[0], Y - _HILUM[1]
    r = np.sqrt(du * du + dv * dv)
    turns = np.arctan2(dv, du) * (1.0 / (2 * math.pi)) + 0.5  # angle in [0, 1]
    turns = np.clip(turns + 0.016 * _smooth_noise(rng, frame.size, 10), 0.0, 1.0)
    r_frac = np.minimum(r * (1.0 / 1.1), 0.999)
    fade0 = _gauss(r * (1.0 / (0.35 if prune else 0.75)))
    bins_px = np.maximum(r, 0.03) * ((2 * math.pi) / frame.px)  # pixels per unit turn
    side = left.astype(np.int32)
    out = np.zeros_like(u)
    for n_theta, n_r, gain, r0 in ((40, 6, 1.0, 0.06), (110, 9, 0.8, 0.20), (240, 10, 0.85, 0.38)):
        grid = rng.standard_normal((2, n_theta, n_r))
        grid = ndimage.gaussian_filter1d(grid, 0.7, axis=1, mode="wrap")
        grid = grid / grid.std()
        grid = np.concatenate([grid, grid[:, :2]], axis=1).astype(_F).ravel()  # wrap pad
        ti = turns * n_theta
        ri = r_frac * (n_r - 1)
        t0f, r0f = np.floor(ti), np.floor(ri)
        ft, fr = ti - t0f, ri - r0f
        t0, r0i = t0f.astype(np.int32), r0f.astype(np.int32)
        idx = side * ((n_theta + 2) * n_r) + t0 * n_r + r0i
        g00, g01 = grid.take(idx), grid.take(idx + 1)
        g10, g11 = grid.take(idx + n_r), grid.take(idx + (n_r + 1))
        lo = g00 + (g10 - g00) * ft
        n = lo + ((g01 + (g11 - g01) * ft) - lo) * fr
        w = np.clip(bins_px * (1.0 / (1.7 * n_theta)), 1.0 / 0.6, 1.0 / 0.04)  # 1 / line width in noise units
        z = n * w
        out += _gauss(z * z) * (gain * fade0 * _smoothstep((r - r0) * (1.0 / 0.10)))
    return np.minimum(out, 1.2)


def _devices(rng, frame, X, Y, px, kind, heart):
    """Metal opacity in [0, 1] (1 = fully radio-opaque) of the support devices."""
    metal = np.zeros_like(X)
    if kind in ("pacemaker", "both"):
        s = 1 if rng.random() < 0.85 else -1  # usually the patient's left (image right)
        gx, gy = s * rng.uniform(0.42, 0.60), rng.uniform(-0.70, -0.55)
        ang = math.radians(rng.uniform(-25, 25))
        hw, hh, rr = rng.uniform(0.085, 0.11), rng.uniform(0.06, 0.075), 0.03
        dx, dy = X - gx, Y - gy
        qx = np.abs(math.cos(ang) * dx + math.sin(ang) * dy) - (hw - rr)
        qy = np.abs(math.cos(ang) * dy - math.sin(ang) * dx) - (hh - rr)
        qxp, qyp = np.maximum(qx, 0.0), np.maximum(qy, 0.0)
        box = np.sqrt(qxp * qxp + qyp * qyp) + np.minimum(np.maximum(qx, qy), 0.0) - rr
        metal = np.maximum(metal, _edge(box, 0.8 * px))
        hdx = gx - s * hw * 0.95  # connector block at the medial end, less dense
        header = _edge(np.maximum(np.abs(X - hdx) - 0.035, np.abs(Y - gy) - 0.045), 0.8 * px)
        metal = np.maximum(metal, 0.7 * header)
        start = np.array([hdx, gy])  # leads: subclavian -> SVC -> right atrium / ventricle
        via = [np.array([s * 0.20, -0.62]), np.array([-0.06, -0.40]), np.array([-0.10, -0.10])]
        ra = np.array([-0.5 * heart.a_right, heart.cy - 0.10])
        rv = np.array([0.45 * heart.a_left + heart.shear * 0.16, heart.cy + 0.16])

        def jit():
            return rng.uniform(-0.025, 0.025, 2)

        lead_v = _spline(np.vstack([start, *(v + jit() for v in via), ra + jit(), rv + jit()]))
        lead_a = _spline(np.vstack([start + [0.0, 0.02], *(v + jit() + [0.02, 0.0] for v in via), ra + [0.0, 0.05], ra + [0.06, -0.04]]))
        metal = np.maximum(metal, 0.9 * frame.lines([lead_v, lead_a], 2.2))
    if kind in ("sternotomy", "both"):
        n = int(rng.integers(4, 8))
        ys = np.linspace(-0.50, 0.10, n) + rng.uniform(-0.02, 0.02, n)
        t = np.linspace(0, 2 * math.pi, 40)
        curves = []
        for y0 in ys:
            x0 = rng.uniform(-0.02, 0.02)
            a, b = rng.uniform(0.035, 0.05), rng.uniform(0.018, 0.026)
            curves.append(np.stack([x0 + a * np.cos(t), y0 + b * np.sin(t)], axis=1))
            curves.append(np.array([[x0 + a, y0 - 0.02], [x0 + a + 0.012, y0 + 0.015]]))  # the twist
        metal = np.maximum(metal, 0.95 * frame.lines(curves, 2.2))
    return metal


def save_contact_sheet(path, *, seed: int = 0, size: int = 256, columns: int = 4) -> None:
    """Write a PNG of 12 phantoms (normal, each finding, both device kinds, a mixed case)
    titled with their findings, for eyeballing the renderer (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases: list[tuple[tuple[str, ...], str]] = [((), "pacemaker")]
    cases += [((name,), "pacemaker") for name in FINDINGS]
    cases += [(("support_devices",), "sternotomy")]
    cases += [(("cardiomegaly", "edema", "pleural_effusion", "support_devices"), "both")]
    rows = -(-len(cases) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.2 * rows))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= len(cases):
            continue
        names, kind = cases[i]
        img = render_chest_xray({n: True for n in names}, np.random.default_rng(seed * 1000 + i), device_kind=kind, size=size)
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
        title = ", ".join(names) or "no finding"
        ax.set_title(title + (f" ({kind})" if "support_devices" in names else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
