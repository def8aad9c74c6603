"""The demo cohort: real Indiana University chest X-ray report text paired with a
synthetic chest X-ray (DICOM), 12-lead ECG (WFDB) and labs row that carry the findings
of their own study's report, plus a manifest, a patient-level split, what the cohort's
ideal observer knows (``reference_model.json``: which findings each modality carries) and
the chance and oracle levels of every evaluation metric on the test split
(``reference_levels.json``).

Deterministic by seed: each study draws from its own generator seeded by (seed, index),
so the cohort is the same whether it is built by one process or several.

Structure (``build_demo_cohort(structure=...)``):

* ``"pairwise"`` (default): every modality is drawn from its report's findings alone, so
  every dependence between modalities is pairwise (X-ray <-> ECG through cardiomegaly,
  support devices and emphysema; X-ray <-> labs through edema and consolidation).
* ``"higher_order"``: a test of higher-order (Symile-style) learning, as Symile-MIMIC's
  X-ray <-> ECG + labs setting. The studies are chosen so that half the reports have
  :data:`INTERACTION_FINDING` (cardiomegaly), c. Each study draws a fair bit ``a`` of
  its own; its ECG shows :data:`ECG_PATTERN` (a paced rhythm) iff ``a`` and its labs
  show :data:`LAB_PATTERN` (BNP raised, >= ~250 pg/mL against <= ~160) iff
  ``b = a XOR c``. The ECG and labs carry nothing else of the report (no other planted
  finding), so ``a`` and ``b`` are each independent of everything in the X-ray and report
  and, c being balanced, of each other: the mutual information of X-ray <-> ECG and of
  X-ray <-> labs is zero, while ECG + labs determine c (``c = a XOR b``). The X-ray and
  report are as in the pairwise cohort. ``interaction.csv`` lists a, b and c per study.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid

from medmm.cohort.manifest import Manifest, file_sha256, patient_level_split
from medmm.demo.ecg_synth import LEADS, planted_in_ecg, synthesize_ecg
from medmm.demo.iu_reports import default_iu_source, load_iu_reports
from medmm.demo.labs import planted_in_labs, synthesize_labs
from medmm.demo.writers import write_cxr_dicom, write_wfdb
from medmm.demo.xray_phantom import device_kind_from_text, planted_in_xray, render_chest_xray
from medmm.io.findings import FINDINGS
from medmm.io.reports import format_report, read_report
from medmm.metrics.reference_levels import (
    REFERENCE_LEVELS_FILE,
    REFERENCE_MODEL_FILE,
    ReferenceModel,
    levels_from_model,
)

MODALITY_FILES = {"xray": "xray.dcm", "ecg": "ecg.hea", "report": "report.txt"}
DIRECTIONS = (("xray", "report"), ("ecg", "report"), ("report", "xray"), ("report", "ecg"), ("xray", "ecg"),
              ("ecg", "xray"))
ZERO_SHOT_MODALITIES = ("xray", "ecg")


@dataclass(frozen=True)
class StudySpec:
    index: int
    patient_id: str
    study_id: str
    sections: dict[str, str]
    date: str


def observable_findings() -> dict[str, tuple[str, ...]]:
    """Which findings each modality carries (the report carries all of them)."""
    return {"xray": tuple(planted_in_xray()), "ecg": tuple(planted_in_ecg()), "labs": tuple(planted_in_labs()),
            "report": FINDINGS}


def _assign_patients(n_studies: int, rng: np.random.Generator) -> list[str]:
    """Most patients have one study, some two or three (so patient-level splitting matters)."""
    patients, i, p = [], 0, 0
    while i < n_studies:
        k = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
        patients.extend([f"DEMO-P{p:05d}"] * min(k, n_studies - i))
        i += k
        p += 1
    return patients


STRUCTURES = ("pairwise", "higher_order")
INTERACTION_FINDING = "cardiomegaly"  # c: in the X-ray (and report), balanced by study choice
ECG_PATTERN = "support_devices"  # a: the ECG's paced rhythm (ecg_synth's planted pacing)
LAB_PATTERN = "edema"  # b = a XOR c: the labs' raised BNP (labs' planted edema level)
INTERACTION_FILE = "interaction.csv"

MISSABLE = ("ecg", "report", "labs")  # the X-ray anchors every study


def _dropped(seed: int, index: int, missing: dict[str, float]) -> set[str]:
    """Modalities removed from this study, from their own generator (so the cohort's other
    content is identical with and without missingness)."""
    rng = np.random.default_rng([seed, index, 0x4D495353])
    draws = rng.random(len(MISSABLE))
    return {m for m, u in zip(MISSABLE, draws) if u < missing.get(m, 0.0)}


def interaction_bits(seed: int, index: int, finding: bool) -> tuple[bool, bool]:
    """The higher-order cohort's (a, b) for one study with c = ``finding``: a fair bit from
    the study's own generator, and b = a XOR c (so each of a and b is a fair bit whatever c is)."""
    a = bool(np.random.default_rng([seed, index, 0x584F52]).random() < 0.5)
    return a, a != bool(finding)


def _modality_findings(findings: dict[str, bool], structure: str, seed: int, index: int
                       ) -> tuple[dict[str, bool], dict[str, bool], dict[str, bool]]:
    """The findings the ECG and the labs are drawn from, and the ground-truth row
    (``{}`` for the pairwise cohort, whose ECG and labs follow the report)."""
    if structure == "pairwise":
        return findings, findings, {}
    c = bool(findings.get(INTERACTION_FINDING, False))
    a, b = interaction_bits(seed, index, c)
    return {ECG_PATTERN: a}, {LAB_PATTERN: b}, {"ecg_pattern": int(a), "lab_high": int(b), "xray_finding": int(c)}


def _write_study(args: tuple[StudySpec, str, int, set[str], str]) -> dict[str, str]:
    spec, out, seed, dropped, structure = args
    rng = np.random.default_rng([seed, spec.index])
    folder = Path(out) / "patients" / spec.patient_id / spec.study_id
    folder.mkdir(parents=True, exist_ok=True)
    report_text = format_report(spec.sections, strict=False)  # real text may hold "WORD:" mid-sentence
    if "report" not in dropped:
        (folder / MODALITY_FILES["report"]).write_text(report_text, encoding="utf-8")
    report = read_report(report_text)
    findings = report.labels.findings
    ecg_findings, lab_findings, truth = _modality_findings(findings, structure, seed, spec.index)

    image = render_chest_xray(findings, rng, effusion_side=report.labels.effusion_side,
                              device_kind=device_kind_from_text(report.text))
    uid = lambda kind: generate_uid(entropy_srcs=[f"medmm-demo:{seed}:{spec.study_id}:{kind}"])  # noqa: E731
    write_cxr_dicom(
        folder / MODALITY_FILES["xray"], image,
        patient_id=spec.patient_id, patient_name=f"DEMO^{spec.patient_id}",
        study_uid=uid("study"), series_uid=uid("series"), sop_uid=uid("sop"), study_date=spec.date,
        modality="CR" if rng.random() < 0.5 else "DX",
        photometric="MONOCHROME1" if rng.random() < 0.2 else "MONOCHROME2",
    )
    ecg = synthesize_ecg(ecg_findings, rng, fs=500, seconds=10.0)
    if "ecg" not in dropped:
        write_wfdb(str(folder / "ecg"), ecg, 500, LEADS)
    labs = synthesize_labs(lab_findings, rng)
    if "labs" in dropped:
        labs = {k: float("nan") for k in labs}
    return {"study_id": spec.study_id, **{k: float(v) for k, v in labs.items()}, **truth}


def _sections(rep) -> dict[str, str]:
    return {k: rep.sections[k] for k in ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION") if rep.sections.get(k)}


def _balanced(order: np.ndarray, usable: list, n_studies: int | None) -> np.ndarray:
    """The first reports of ``order`` with and without :data:`INTERACTION_FINDING`, half
    each (``n_studies`` in all, rounded down to even; default: as many as the rarer side allows)."""
    has = np.array([bool(read_report(format_report(_sections(usable[i]), strict=False)).labels.findings.get(
        INTERACTION_FINDING, False)) for i in order])
    most = int(min(has.sum(), (~has).sum()))
    half = most if n_studies is None else n_studies // 2
    if half > most:
        raise ValueError(f"n_studies: a higher-order cohort holds at most {2 * most} studies "
                         f"(half with {INTERACTION_FINDING}), got {n_studies}")
    rank = np.where(has, np.cumsum(has), np.cumsum(~has))  # 1-based rank within its side
    return order[rank <= half]  # in the permutation's order


def _study_specs(n_studies: int | None, seed: int, iu_source: str | Path | None,
                 structure: str = "pairwise") -> list[StudySpec]:
    reports = load_iu_reports(iu_source or default_iu_source())
    usable = [r for r in reports if r.sections.get("FINDINGS") or r.sections.get("IMPRESSION")]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(usable))
    if structure == "higher_order":
        order = _balanced(order, usable, n_studies)
    elif n_studies is not None:
        order = order[:n_studies]
    patients = _assign_patients(len(order), rng)
    specs = []
    for i, idx in enumerate(order):
        sections = _sections(usable[idx])
        day = pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 1500)))
        specs.append(StudySpec(i, patients[i], f"DEMO-S{i:05d}", sections, day.strftime("%Y%m%d")))
    return specs


def build_demo_cohort(out: str | Path, *, n_studies: int | None = None, seed: int = 0, workers: int = 2,
                      iu_source: str | Path | None = None,
                      split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                      missing: dict[str, float] | None = None,
                      missing_splits: tuple[str, ...] = ("train", "val"),
                      structure: str = "pairwise") -> Manifest:
    """Write the demo cohort under ``out`` and return its manifest (split by patient).

    ``missing`` (e.g. ``{"ecg": 0.3, "report": 0.3}``): each study of ``missing_splits``
    loses each listed modality with that probability, independently (its file is not
    written and has no manifest row; missing labs are an empty labs row). The test split
    stays complete by default, so metrics compare with the complete cohort's (as in
    Symile's missing-data experiment, whose test data is complete).

    ``structure``: ``"pairwise"`` (every modality follows its report's findings) or
    ``"higher_order"`` (the X-ray's cardiomegaly is the XOR of an ECG pattern and a lab
    value, each independent of the X-ray; see the module docstring), which also writes
    ``interaction.csv`` (study_id, ecg_pattern, lab_high, xray_finding).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if structure not in STRUCTURES:
        raise ValueError(f"structure: expected one of {', '.join(STRUCTURES)}, got {structure!r}")
    missing = dict(missing or {})
    unknown = sorted(set(missing) - set(MISSABLE))
    if unknown:
        raise ValueError(f"missing: cannot drop {unknown}; droppable modalities: {', '.join(MISSABLE)}")
    for m, p in missing.items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"missing: probability of {m} must be in [0, 1), got {p}")
    specs = _study_specs(n_studies, seed, iu_source, structure)
    split_of = patient_level_split([s.patient_id for s in specs], split_fractions, seed)
    dropped = {s.study_id: _dropped(seed, s.index, missing) if split_of[s.patient_id] in missing_splits else set()
               for s in specs}
    jobs = [(s, str(out), seed, dropped[s.study_id], structure) for s in specs]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            labs_rows = pool.map(_write_study, jobs, chunksize=16)
    else:
        labs_rows = [_write_study(j) for j in jobs]
    table = pd.DataFrame(labs_rows)
    truth = [c for c in ("ecg_pattern", "lab_high", "xray_finding") if c in table]
    if truth:
        table[["study_id", *truth]].to_csv(out / INTERACTION_FILE, index=False)
    table.drop(columns=truth).to_csv(out / "labs.csv", index=False)

    rows = []
    for s in specs:
        folder = Path("patients") / s.patient_id / s.study_id
        for modality, name in MODALITY_FILES.items():
            if modality in dropped[s.study_id]:
                continue
            rel = folder / name
            extra = (out / folder / "ecg.dat",) if modality == "ecg" else ()
            rows.append((s.patient_id, s.study_id, modality, rel.as_posix(), file_sha256(out / rel, extra),
                         split_of[s.patient_id]))
    manifest = Manifest(out, pd.DataFrame(rows, columns=["patient_id", "study_id", "modality", "path", "sha256",
                                                         "split"]))
    manifest.save()
    model = reference_model(structure)
    model.save(out / REFERENCE_MODEL_FILE)
    write_reference_levels(manifest, model, out / REFERENCE_LEVELS_FILE)
    return manifest


def reference_model(structure: str = "pairwise") -> ReferenceModel:
    """The demo cohort's ideal observer: the finding vocabulary, which findings each
    modality carries, and the retrieval directions and zero-shot modalities it has levels for.
    In the higher-order cohort the ECG and the labs carry no report finding on their own
    (each of their patterns is a fair coin independent of the report), so their levels are
    chance; what they carry together is the among-10 task's."""
    observable = observable_findings()
    if structure == "higher_order":
        observable = {**observable, "ecg": (), "labs": ()}
    return ReferenceModel(findings=FINDINGS, observable=observable, directions=DIRECTIONS,
                          zero_shot=ZERO_SHOT_MODALITIES)


def labels_of_split(manifest: Manifest, split: str) -> np.ndarray:
    """Finding labels [studies, findings] of one split, read from its reports by the labeler."""
    studies = manifest.studies(split)
    return np.stack([read_report(manifest.resolve(p)).labels.as_vector() for p in studies["report"]]).astype(np.int64)


def write_reference_levels(manifest: Manifest, model: ReferenceModel, path: Path) -> dict:
    """Chance / oracle levels of the test split, written to ``path``."""
    levels = levels_from_model(labels_of_split(manifest, "test"), model)
    path.write_text(json.dumps(levels, indent=2))
    return levels
