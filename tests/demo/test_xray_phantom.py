"""The synthetic chest radiograph: deterministic, in range, and each planted finding
changes a measurable property of the image where (and how) it should.

Each finding is checked counterfactually: the same seed rendered with and without it
gives the same patient, pose, exposure and noise (the renderer gives every part its
own random stream), so the difference image isolates the finding.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medmm.demo.xray_phantom import device_kind_from_text, planted_in_xray, render_chest_xray, save_contact_sheet
from medmm.io.findings import FINDINGS

SEEDS = (0, 1, 2, 3)
S = 256


def pair(name: str, seed: int, size: int = S, **kw) -> tuple[np.ndarray, np.ndarray]:
    without = render_chest_xray({}, np.random.default_rng(seed), size=size, **kw)
    with_ = render_chest_xray({name: True}, np.random.default_rng(seed), size=size, **kw)
    return without, with_


def heart_width(img: np.ndarray) -> int:
    """Widest run of bright (soft-tissue) pixels through the mediastinum, over rows at
    mid-heart level (above the diaphragm for every pose): the cardiac diameter as read
    off a film."""
    n = img.shape[0]
    best = 0
    img = ndimage.gaussian_filter(img.astype(np.float64), 2.0)  # blur away lung markings
    lung_level = np.percentile(img[int(0.3 * n) : int(0.6 * n)], 15)
    for row in range(int(0.47 * n), int(0.58 * n)):
        line = img[row]
        centre = int(np.argmax(line[int(0.4 * n) : int(0.6 * n)])) + int(0.4 * n)
        thr = lung_level + 0.6 * (line[centre] - lung_level)
        bright = ndimage.binary_closing(line > thr, np.ones(3))
        lab, _ = ndimage.label(bright)
        if lab[centre]:
            best = max(best, int((lab == lab[centre]).sum()))
    return best


def thin_band(img: np.ndarray) -> np.ndarray:
    """Band-pass at the width of lung markings (~2 px): thin lines, not ribs or noise."""
    x = img.astype(np.float64)
    return ndimage.gaussian_filter(x, 0.7) - ndimage.gaussian_filter(x, 1.5)


# ----------------------------------------------------------------------------- basics


def test_planted_in_xray_is_every_finding():
    assert planted_in_xray() == tuple(FINDINGS)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_range_shape_dtype(size):
    for seed in (0, 1):
        findings = {f: bool((seed + i) % 2) for i, f in enumerate(FINDINGS)}
        img = render_chest_xray(findings, np.random.default_rng(seed), size=size, device_kind="both")
        assert img.shape == (size, size) and img.dtype == np.float32
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        assert img.std() > 0.1  # real contrast, not a flat field


def test_deterministic_by_seed_and_varied_across_seeds():
    f = {"nodule": True, "support_devices": True}
    a = render_chest_xray(f, np.random.default_rng(42))
    b = render_chest_xray(f, np.random.default_rng(42))
    c = render_chest_xray(f, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_normal_anatomy_dark_lungs_bright_mediastinum():
    for seed in SEEDS:
        img = render_chest_xray({}, np.random.default_rng(seed))
        n = img.shape[0]
        lungs = np.r_[img[int(0.35 * n) : int(0.5 * n), int(0.2 * n) : int(0.3 * n)].ravel(),
                      img[int(0.35 * n) : int(0.5 * n), int(0.7 * n) : int(0.8 * n)].ravel()]
        spine = img[int(0.35 * n) : int(0.5 * n), int(0.47 * n) : int(0.53 * n)]
        abdomen = img[int(0.9 * n) :, int(0.35 * n) : int(0.65 * n)]
        assert spine.mean() > lungs.mean() + 0.2
        assert abdomen.mean() > lungs.mean() + 0.2


def test_any_combination_renders():
    rng = np.random.default_rng(123)
    for seed in range(12):
        findings = {f: bool(rng.random() < 0.5) for f in FINDINGS}
        if seed == 0:
            findings = dict.fromkeys(FINDINGS, True)
        side = [None, "left", "right", "bilateral"][seed % 4]
        kind = ["pacemaker", "sternotomy", "both"][seed % 3]
        img = render_chest_xray(findings, np.random.default_rng(seed), effusion_side=side, device_kind=kind, size=128)
        assert img.shape == (128, 128) and np.isfinite(img).all() and 0.0 <= img.min() <= img.max() <= 1.0


def test_contact_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    save_contact_sheet(out, size=64)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        render_chest_xray({"pneumonia": True}, rng)
    with pytest.raises(ValueError):
        render_chest_xray({}, rng, effusion_side="middle")
    with pytest.raises(ValueError):
        render_chest_xray({}, rng, device_kind="stent")


# ----------------------------------------------------------------------------- findings


def test_cardiomegaly_widens_the_heart():
    for seed in SEEDS:
        normal, big = pair("cardiomegaly", seed)
        w0, w1 = heart_width(normal), heart_width(big)
        assert w1 > 1.15 * w0, (seed, w0, w1)  # CTR >= 0.58 vs <= 0.48: ratio >= 1.2
        # the silhouette grows to both sides of the midline, nothing changes at the apices
        grown = np.nonzero(((big - normal) > 0.1).any(axis=0))[0]
        assert grown.min() < 0.4 * S and grown.max() > 0.6 * S
        assert np.abs(big - normal)[: int(0.3 * S)].max() < 0.05


@pytest.mark.parametrize("side", ["right", "left", "bilateral"])
def test_pleural_effusion_whitens_the_base_of_the_given_side(side):
    for seed in SEEDS[:3]:
        a, b = pair("pleural_effusion", seed, effusion_side=side)
        d = b - a
        lower = slice(int(0.55 * S), int(0.85 * S))
        image_left = d[lower, : S // 2].mean()  # the patient's right
        image_right = d[lower, S // 2 :].mean()
        upper = np.abs(d[: int(0.35 * S)]).mean()
        expect_left, expect_right = side in ("right", "bilateral"), side in ("left", "bilateral")
        assert (image_left > 0.03) == expect_left and (image_right > 0.03) == expect_right, (seed, image_left, image_right)
        assert upper < 0.005  # the apices are untouched
        assert d.min() > -0.02  # fluid only adds density


def test_edema_is_bilateral_and_perihilar():
    for seed in SEEDS:
        a, b = pair("edema", seed)
        d = b - a
        rows = slice(int(0.35 * S), int(0.6 * S))
        hilar_l, hilar_r = d[rows, int(0.25 * S) : int(0.42 * S)].mean(), d[rows, int(0.58 * S) : int(0.75 * S)].mean()
        apex = d[int(0.12 * S) : int(0.25 * S), int(0.15 * S) : int(0.85 * S)].mean()
        assert hilar_l > 0.03 and hilar_r > 0.03, (seed, hilar_l, hilar_r)
        assert apex < 0.5 * min(hilar_l, hilar_r)


def test_pneumothorax_dark_rim_without_markings_and_pleural_line():
    for seed in SEEDS:
        a, b = pair("pneumothorax", seed)
        d = b - a
        rim = d < -0.05
        assert rim.mean() > 0.02, seed  # a sizeable darker region ...
        cols = np.nonzero(rim.any(axis=0))[0]
        assert cols.max() < S // 2 + 10 or cols.min() > S // 2 - 10  # ... on one side only
        # apical / lateral: the rim reaches higher and further out than the remaining lung
        rr, cc = np.nonzero(rim)
        assert rr.min() < 0.3 * S and np.abs(cc - S / 2).max() > 0.3 * S
        # the markings are gone: in the rim, the change removes the thin lines the
        # normal lung had there (ribs and noise stay), so it anti-correlates with them
        inner = rim & ~ndimage.binary_dilation(~rim, iterations=4)  # off the rim's edges
        corr = np.corrcoef(thin_band(a)[inner], thin_band(b - a)[inner])[0, 1]
        assert corr < -0.1, (seed, corr)
        line = d > 0.04
        assert line.sum() > 40  # a thin bright visceral pleural line
        assert (ndimage.binary_dilation(line, iterations=3) & rim).any()  # bordering the rim


def test_atelectasis_plate_like_band_in_a_lower_zone():
    for seed in SEEDS:
        a, b = pair("atelectasis", seed)
        lab, n = ndimage.label((b - a) > 0.08)
        assert n >= 1
        sizes = ndimage.sum(np.ones_like(lab), lab, range(1, n + 1))
        biggest = int(np.argmax(sizes)) + 1
        rr, cc = np.nonzero(lab == biggest)
        height, width = rr.max() - rr.min() + 1, cc.max() - cc.min() + 1
        assert width > 3 * height and width > 0.12 * S, (seed, height, width)  # a flat plate
        assert rr.mean() > 0.4 * S, seed  # low in the chest


def test_consolidation_large_focal_patch_one_side():
    for seed in SEEDS:
        a, b = pair("consolidation", seed)
        patch = (b - a) > 0.08
        frac = patch.mean()
        assert 0.01 < frac < 0.12, (seed, frac)  # 10-20 % of one lung, clipped to the lung
        cols = np.nonzero(patch.any(axis=0))[0]
        assert cols.max() < S // 2 + 10 or cols.min() > S // 2 - 10
        rr, cc = np.nonzero(patch)
        aspect = (cc.max() - cc.min() + 1) / (rr.max() - rr.min() + 1)
        assert 0.3 < aspect < 3.5  # a blob, not a band


def test_nodules_small_round_spots():
    for seed in SEEDS:
        a, b = pair("nodule", seed)
        lab, n = ndimage.label((b - a) > 0.05)
        assert 1 <= n <= 3, (seed, n)
        for k in range(1, n + 1):
            area = (lab == k).sum()
            diameter = 2 * np.sqrt(area / np.pi)
            assert 12 <= diameter <= 24, (seed, diameter)
            sl = ndimage.find_objects(lab)[k - 1]
            assert 0.6 < area / ((sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start)) < 0.95  # round
        assert ((b - a) != 0).mean() < 0.035  # nothing else changed


def test_nodule_size_scales_with_image_size():
    a, b = pair("nodule", 5, size=128)
    lab, n = ndimage.label((b - a) > 0.05)
    for k in range(1, n + 1):
        assert 6 <= 2 * np.sqrt((lab == k).sum() / np.pi) <= 12


def test_pacemaker_metal_in_upper_chest():
    for seed in SEEDS:
        a, b = pair("support_devices", seed, device_kind="pacemaker")
        device = (b - a) > 0.05
        smooth = ndimage.gaussian_filter(b, 1.0)  # (pixel noise off the metal)
        metal = device & (smooth > float(ndimage.gaussian_filter(a, 1.0).max()) + 0.03)  # > any anatomy
        yy, xx = np.mgrid[-4:5, -4:5]
        can = ndimage.binary_opening(metal, structure=(yy**2 + xx**2) <= 16)  # thin leads drop out
        assert can.sum() > 150, seed  # the generator can ...
        assert np.median(np.nonzero(can)[0]) < 0.45 * S  # ... in the upper chest
        leads = device & ~ndimage.binary_dilation(can, iterations=2)
        assert leads.sum() > 80 and np.nonzero(leads)[0].max() > 0.5 * S, seed  # leads reach the heart


def test_sternotomy_wires_in_the_midline():
    for seed in SEEDS:
        a, b = pair("support_devices", seed, device_kind="sternotomy")
        wires = (b - a) > 0.05
        lab, n = ndimage.label(wires)
        assert 4 <= n <= 7 * 2, (seed, n)  # 4-7 loops (a twist may separate)
        cc = np.nonzero(wires)[1]
        assert np.abs(cc - S / 2).max() < 0.2 * S


def test_both_devices():
    a, b = pair("support_devices", 0, device_kind="both")
    p = pair("support_devices", 0, device_kind="pacemaker")[1]
    assert ((b - a) > 0.05).sum() > ((p - a) > 0.05).sum()


def test_emphysema_darker_larger_lungs_lower_diaphragm():
    for seed in SEEDS:
        a, b = pair("emphysema", seed)
        dark = np.percentile(a, 25)
        assert (b < dark).mean() > 1.3 * (a < dark).mean(), seed
        # the diaphragm sits lower: along columns through the right lung (image left; the
        # left has the gastric bubble under it), the lowest dark (aerated) pixel moves down
        for col in (int(0.25 * S), int(0.32 * S)):
            thr = 0.5 * (np.percentile(a[:, col], 10) + np.percentile(a[:, col], 90))
            low_a = np.nonzero(a[:, col] < thr)[0].max()
            low_b = np.nonzero(b[:, col] < thr)[0].max()
            assert low_b > low_a + 0.03 * S, (seed, col, low_a, low_b)


def test_findings_distinct_from_each_other():
    """Every finding leaves its own footprint: the difference images of two findings
    are far from identical."""
    diffs = {}
    for name in FINDINGS:
        a, b = pair(name, 11)
        diffs[name] = (b - a).ravel()
    names = list(FINDINGS)
    for i, x in enumerate(names):
        assert np.abs(diffs[x]).sum() > 0, x
        for y in names[i + 1 :]:
            cos = diffs[x] @ diffs[y] / (np.linalg.norm(diffs[x]) * np.linalg.norm(diffs[y]))
            assert cos < 0.8, (x, y, cos)


# ----------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Left-sided pacemaker with leads in the right atrium and ventricle.", "pacemaker"),
        ("Dual-chamber pacer in place.", "pacemaker"),
        ("AICD unchanged.", "pacemaker"),
        ("Defibrillator generator overlies the left chest.", "pacemaker"),
        ("Status post median sternotomy.", "sternotomy"),
        ("Intact sternal wires.", "sternotomy"),
        ("Sternotomy wires and a left chest pacemaker.", "both"),
        ("No pacemaker. Sternal wires intact.", "sternotomy"),
        ("Support devices in place.", "pacemaker"),
        ("", "pacemaker"),
    ],
)
def test_device_kind_from_text(text, kind):
    assert device_kind_from_text(text) == kind
