"""The rule-based report labeler: hand-written sentences, and agreement with the MeSH
terms that NLM indexers gave the 3,955 Indiana University reports."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medmm.io.findings import EFFUSION_SIDES, FINDINGS
from medmm.io.labeler import UNCERTAIN_POSITIVE, Labels, find_mentions, label_report, split_sentences

DEFAULT_WHEEL = "data/cache/torchxrayvision-1.5.7-py3-none-any.whl"

# (text, positive findings)
CASES: list[tuple[str, set[str]]] = [
    # cardiomegaly, and the many ways of saying the heart is normal
    ("Heart size normal.", set()),
    ("The heart is normal in size.", set()),
    ("Heart size is at the upper limits of normal.", set()),
    ("The cardiomediastinal silhouette is within normal limits for size and contour.", set()),
    ("Normal heart size and mediastinal contours.", set()),
    ("Stable, nonenlarged cardiomediastinal silhouette.", set()),
    ("Heart size is mildly enlarged.", {"cardiomegaly"}),
    # a post-trigger past a comma is about the next phrase, not the mention
    ("Heart size is enlarged, pulmonary vascularity within normal limits.", {"cardiomegaly"}),
    ("The heart is enlarged.", {"cardiomegaly"}),
    ("The heart is large.", {"cardiomegaly"}),
    ("Enlarged cardiac silhouette.", {"cardiomegaly"}),
    ("Stable mild cardiomegaly.", {"cardiomegaly"}),
    ("Borderline cardiomegaly.", {"cardiomegaly"}),
    ("The heart is not enlarged.", set()),
    ("The heart is not significantly enlarged.", set()),
    ("No cardiomegaly.", set()),
    ("Negative for cardiac enlargement.", set()),
    ("Cardiomegaly without pulmonary edema.", {"cardiomegaly"}),
    ("Stable heart size, moderately enlarged and tortuous calcified aorta.", set()),
    # pleural effusion
    ("Small left pleural effusion.", {"pleural_effusion"}),
    ("Small bilateral pleural effusions.", {"pleural_effusion"}),
    ("Blunting of the right costophrenic angle.", {"pleural_effusion"}),
    ("Mild bilateral costophrenic XXXX blunting.", {"pleural_effusion"}),
    ("Pericardial effusion.", set()),
    ("Right knee: joint effusion.", set()),
    ("No pleural effusion.", set()),
    ("There are no XXXX of a pleural effusion.", set()),
    ("No definite pleural effusion seen.", set()),
    ("Pleural effusion is not seen.", set()),
    ("Previously seen left pleural effusion has resolved.", set()),
    ("Interval resolution of the left pleural effusion.", set()),
    ("Partially resolved left pleural effusion.", {"pleural_effusion"}),
    ("No change in the small left pleural effusion.", {"pleural_effusion"}),
    ("Blunting of the costophrenic angle may represent a small effusion.", {"pleural_effusion"}),
    ("Possible small left effusion.", set()),  # uncertain: not counted
    ("Small left effusion is suspected.", set()),
    # edema
    ("Pulmonary edema.", {"edema"}),
    ("Mild interstitial edema.", {"edema"}),
    ("Mild pulmonary vascular congestion.", {"edema"}),
    ("Central pulmonary vascular prominence.", {"edema"}),
    ("No edema.", set()),
    ("No overt edema or CHF.", set()),
    ("The heart size and pulmonary vascularity appear within normal limits.", set()),
    ("Heart size and pulmonary vascular engorgement appear within limits of normal.", set()),
    ("Interstitial markings may represent edema.", set()),  # uncertain edema: not counted
    # pneumothorax
    ("Small right apical pneumothorax.", {"pneumothorax"}),
    ("No evidence of pneumothorax.", set()),
    ("Evaluation for pneumothorax is limited.", set()),
    ("Pneumothorax cannot be excluded.", {"pneumothorax"}),  # uncertain, but counted
    ("Possible small right apical pneumothorax.", {"pneumothorax"}),
    # atelectasis
    ("Bibasilar subsegmental atelectasis.", {"atelectasis"}),
    ("Discoid atelectasis in the left base.", {"atelectasis"}),
    ("Left basilar atelectatic changes.", {"atelectasis"}),
    ("Partial collapse of the left upper and lower lobes.", {"atelectasis"}),
    ("Left basilar atelectasis versus scarring.", {"atelectasis"}),
    ("Streaky opacity which may represent atelectasis.", {"consolidation"}),
    # consolidation
    ("Right lower lobe pneumonia.", {"consolidation"}),
    ("Focal airspace opacity in the right lower lobe.", {"consolidation"}),
    ("Patchy infiltrate in the lingula.", {"consolidation"}),
    ("No focal consolidation.", set()),
    ("Lungs are free of infiltrate.", set()),
    ("Lungs are clear of focal airspace disease.", set()),
    ("There is no focal air space opacity to suggest a pneumonia.", set()),
    ("6 mm nodular opacity overlies the left anterior 5th rib.", {"nodule"}),
    # nodule / granuloma / mass
    ("There is a 9 mm right lower lobe pulmonary nodule, not seen on prior exams.", {"nodule"}),
    ("Calcified granuloma in the right upper lobe.", {"nodule"}),
    ("Stable 1 cm nodule in the left lower lobe.", {"nodule"}),
    ("Right hilar mass.", {"nodule"}),
    ("Stable sequela of prior granulomatous disease.", {"nodule"}),
    ("No nodules or masses.", set()),
    ("Calcified right hilar lymph nodes.", set()),
    ("Bony overlap could obscure a small pulmonary nodule.", set()),
    # support devices
    ("Left chest wall pacemaker with leads in the right atrium and ventricle.", {"support_devices"}),
    ("Left-sided AICD in stable position.", {"support_devices"}),
    ("Median sternotomy wires.", {"support_devices"}),
    ("XXXX sternotomy XXXX are intact.", {"support_devices"}),
    ("Right chest XXXX tip in the SVC.", {"support_devices"}),
    ("Right IJ central venous catheter with tip in the SVC.", {"support_devices"}),
    ("Frontal and lateral views with overlying external cardiac monitor leads.", set()),
    ("Right internal jugular central line has been removed.", set()),
    # emphysema
    ("Emphysema.", {"emphysema"}),
    ("Hyperinflated lungs consistent with COPD.", {"emphysema"}),
    ("The lungs are hyperexpanded with flattening of the diaphragms.", {"emphysema"}),
    ("Subcutaneous emphysema in the right chest wall.", set()),
    # lists, scope and clause boundaries
    ("No pleural effusion or pneumothorax.", set()),
    ("Lungs are clear without focal airspace disease, pleural effusion, or pneumothorax.", set()),
    ("Negative for focal pulmonary consolidation, pleural effusion, or pneumothorax.", set()),
    ("No focal consolidation, large pleural effusion, or pneumothorax.", set()),
    ("Clear lungs. No effusions, edema, or pneumonia.", set()),
    ("No pneumothorax but there is a small right pleural effusion.", {"pleural_effusion"}),
    ("No pleural effusion, however there is a small right pneumothorax.", {"pneumothorax"}),
    ("No pneumothorax, stable cardiomegaly.", {"cardiomegaly"}),
    ("No cardiomegaly with bilateral small pleural effusions.", {"pleural_effusion"}),
    ("No pneumothorax. Stable cardiomegaly.", {"cardiomegaly"}),
    ("Consolidation, atelectasis, and costophrenic XXXX blunting in the left lower lobe have cleared in the interval.", set()),
    # nothing to find
    ("No acute cardiopulmonary abnormality.", set()),
    ("Normal chest x-XXXX.", set()),
    ("The lungs are clear. XXXX XXXX are intact.", set()),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:60] for c in CASES])
def test_sentences(text: str, expected: set[str]) -> None:
    labels = label_report(text)
    assert set(labels.positive) == expected, [(m.finding, m.phrase, m.negated, m.uncertain) for m in find_mentions(text)]


SIDES: list[tuple[str, str | None]] = [
    ("Small left pleural effusion.", "left"),
    ("Moderate right-sided pleural effusion.", "right"),
    ("Pleural effusion on the right.", "right"),
    ("Small bilateral pleural effusions.", "bilateral"),
    ("Small right and XXXX left pleural effusions.", "bilateral"),
    ("Bilateral pleural effusions, left greater than right.", "bilateral"),
    ("Left pleural effusion. Small right pleural effusion.", "bilateral"),
    ("Small pleural effusions.", "bilateral"),  # plural, no side
    ("Small pleural effusion.", None),
    ("Blunting of the left costophrenic angle.", "left"),
    ("Blunting of the costophrenic angles.", "bilateral"),
    ("Small left pleural effusion and right lower lobe atelectasis.", "left"),
    ("Right pleural effusion. Left lower lobe atelectasis.", "right"),
    ("Left basilar opacity compatible with some effusion.", "left"),
    ("No left effusion. Small right pleural effusion.", "right"),
    ("There is a small left pleural effusion, no definite right-sided pleural effusion.", "left"),
    ("No pleural effusion. Left lower lobe atelectasis.", None),  # side only with a positive effusion
]


@pytest.mark.parametrize("text, side", SIDES, ids=[s[0][:60] for s in SIDES])
def test_effusion_side(text: str, side: str | None) -> None:
    labels = label_report(text)
    assert labels.effusion_side == side
    assert side is None or labels.findings["pleural_effusion"]


def test_labels_api() -> None:
    lab = label_report("Cardiomegaly. Small left pleural effusion. Emphysema.")
    assert list(lab.findings) == list(FINDINGS)
    vec = lab.as_vector()
    assert vec.dtype == np.int8 and vec.shape == (len(FINDINGS),)
    assert vec.tolist() == [int(f in {"cardiomegaly", "pleural_effusion", "emphysema"}) for f in FINDINGS]
    assert not lab.no_finding and lab.effusion_side == "left"
    assert pickle.loads(pickle.dumps(lab)) == lab  # DataLoader workers pickle samples
    normal = label_report("No acute cardiopulmonary process.")
    assert normal.no_finding and normal.as_vector().sum() == 0 and normal.effusion_side is None
    assert Labels.from_positive([]) == normal
    with pytest.raises(ValueError, match="unknown findings"):
        Labels.from_positive(["fracture"])
    with pytest.raises(ValueError, match="missing"):
        Labels({"cardiomegaly": True})
    with pytest.raises(ValueError, match="effusion_side"):
        Labels.from_positive(["cardiomegaly"], effusion_side="left")
    with pytest.raises(ValueError, match="effusion_side"):
        Labels.from_positive(["pleural_effusion"], effusion_side="both")
    assert set(EFFUSION_SIDES) == {"left", "right", "bilateral"}


def test_uncertainty_policy() -> None:
    text = "Opacity may represent atelectasis. Possible small left effusion."
    assert set(label_report(text).positive) == {"consolidation"}
    assert set(label_report(text, uncertain_positive=True).positive) == {"consolidation", "pleural_effusion", "atelectasis"}
    assert set(label_report(text, uncertain_positive=False).positive) == {"consolidation"}
    assert set(label_report(text, uncertain_positive=["atelectasis"]).positive) == {"consolidation", "atelectasis"}
    with pytest.raises(ValueError, match="unknown findings"):
        label_report(text, uncertain_positive=["fracture"])
    assert UNCERTAIN_POSITIVE <= set(FINDINGS)
    m = [x for x in find_mentions(text) if x.finding == "atelectasis"]
    assert len(m) == 1 and m[0].uncertain and not m[0].negated and m[0].phrase == "atelectasis"


def test_sentence_split_and_redaction() -> None:
    assert split_sentences("Heart size normal. Nodule 1.5 cm.\n\n1. No effusion.") == [
        "Heart size normal.",
        "Nodule 1.5 cm.",
        "1. No effusion.",
    ]
    assert label_report("").no_finding and label_report("XXXX XXXX. XXXX.").no_finding
    assert label_report("FINDINGS: no effusion\nIMPRESSION: CARDIOMEGALY").positive == ("cardiomegaly",)


# ----------------------------------------------------------------------------- agreement with MeSH

# Per-finding F1 against the MeSH major terms, measured on all 3,927 IU reports with
# FINDINGS or IMPRESSION (see the printed table). Thresholds sit a little below the
# measured values so that small rule edits do not flap the test, while a real
# regression fails it. support_devices is low because indexers rarely record sternotomy
# wires (most of its ~100 false positives are reports whose only device is a sternotomy);
# on the reports that do not mention a sternotomy it is checked separately.
F1_MIN = {
    "cardiomegaly": 0.96,  # measured 0.986
    "pleural_effusion": 0.94,  # 0.965
    "edema": 0.86,  # 0.901
    "pneumothorax": 0.85,  # 0.906 (27 positives: one error moves F1 by ~0.02)
    "atelectasis": 0.95,  # 0.976
    "consolidation": 0.93,  # 0.956
    "nodule": 0.95,  # 0.979
    "support_devices": 0.78,  # 0.821; 0.953 on the reports without a sternotomy
    "emphysema": 0.96,  # 0.987
}


@pytest.fixture(scope="module")
def iu_labelled() -> list[tuple[str, str, tuple[str, ...]]]:
    """(report id, FINDINGS + IMPRESSION text, MeSH major terms) of every IU report with text."""
    from medmm.demo.iu_reports import load_iu_reports

    path = Path(os.environ.get("MEDMM_IU_REPORTS", DEFAULT_WHEEL))
    if not path.exists():
        pytest.skip(f"IU reports not found at {path}: run `make data-cache` or set MEDMM_IU_REPORTS")
    out = []
    for r in load_iu_reports(path):
        text = "\n\n".join(r.sections[k] for k in ("FINDINGS", "IMPRESSION") if k in r.sections)
        if text:
            out.append((r.report_id, text, r.mesh_major))
    return out


def _prf(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float, float, int, int, int]:
    tp = int((pred & gold).sum())
    fp = int((pred & ~gold).sum())
    fn = int((~pred & gold).sum())
    p = tp / max(1, tp + fp)
    r = tp / max(1, tp + fn)
    f1 = 2 * p * r / max(1e-12, p + r)
    return p, r, f1, tp, fp, fn


def test_agreement_with_mesh(iu_labelled: list[tuple[str, str, tuple[str, ...]]]) -> None:
    from medmm.demo.iu_reports import mesh_labels

    labels = [label_report(text) for _, text, _ in iu_labelled]
    gold_labels = [mesh_labels(mesh) for _, _, mesh in iu_labelled]
    pred = np.stack([lab.as_vector() for lab in labels]).astype(bool)
    gold = np.stack([g.as_vector() for g in gold_labels]).astype(bool)
    assert len(iu_labelled) == 3927

    lines = [f"labeler vs MeSH on {len(iu_labelled)} IU reports", f"{'finding':18s} {'P':>6s} {'R':>6s} {'F1':>6s}  tp/fp/fn"]
    f1s = {}
    for j, name in enumerate(FINDINGS):
        p, r, f1, tp, fp, fn = _prf(pred[:, j], gold[:, j])
        f1s[name] = f1
        lines.append(f"{name:18s} {p:6.3f} {r:6.3f} {f1:6.3f}  {tp}/{fp}/{fn}")

    # support_devices on the reports that do not mention a sternotomy
    j = FINDINGS.index("support_devices")
    keep = np.array(["sternotomy" not in text.lower() for _, text, _ in iu_labelled])
    p, r, f1_nost, *_ = _prf(pred[keep, j], gold[keep, j])
    lines.append(f"support_devices without sternotomy reports ({keep.sum()}): P={p:.3f} R={r:.3f} F1={f1_nost:.3f}")

    # MeSH "normal" -> no finding
    normal = np.array(["normal" in mesh for _, _, mesh in iu_labelled])
    no_find = np.array([lab.no_finding for lab in labels])
    frac_normal = float(no_find[normal].mean())
    lines.append(f"MeSH 'normal' reports labelled no_finding: {no_find[normal].sum()}/{normal.sum()} = {frac_normal:.3f}")

    # effusion side where both agree there is an effusion and MeSH states a side
    pairs = [
        (lab.effusion_side, g.effusion_side)
        for lab, g in zip(labels, gold_labels)
        if lab.findings["pleural_effusion"] and g.effusion_side is not None
    ]
    side_acc = sum(a == b for a, b in pairs) / len(pairs)
    lines.append(f"effusion side agreement: {sum(a == b for a, b in pairs)}/{len(pairs)} = {side_acc:.3f}")

    # label distribution
    counts = dict(zip(FINDINGS, pred.sum(0).tolist()))
    distinct = len({tuple(v) for v in pred.astype(int).tolist()})
    sides = Counter(lab.effusion_side for lab in labels if lab.findings["pleural_effusion"])
    lines.append(f"label counts: {counts}")
    lines.append(f"no_finding: {int(no_find.sum())}; distinct label vectors: {distinct}; effusion sides: {dict(sides)}")
    print("\n" + "\n".join(lines))

    failing = {k: round(v, 3) for k, v in f1s.items() if v < F1_MIN[k]}
    assert not failing, f"F1 below threshold: {failing}\n" + "\n".join(lines)
    assert f1_nost >= 0.92
    assert frac_normal >= 0.98
    assert side_acc >= 0.95
    assert 2000 <= no_find.sum() <= 2500 and distinct >= 60
