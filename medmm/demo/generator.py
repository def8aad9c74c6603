"""The demo cohort: real Indiana University chest X-ray report text paired with a
synthetic chest X-ray (DICOM), 12-lead ECG (WFDB) and labs row that carry the findings
of their own study's report, plus a manifest, a patient-level split, what the cohort's
ideal observer knows (``reference_model.json``: which findings each modality carries) and
the chance and oracle levels of every evaluation metric on the test split
(``reference_levels.json``).

Deterministic by seed: each study draws from its own generator seeded by (seed, index),
so the cohort is the same whether it is built by one process or several.
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


MISSABLE = ("ecg", "report", "labs")  # the X-ray anchors every study


def _dropped(seed: int, index: int, missing: dict[str, float]) -> set[str]:
    """Modalities removed from this study, from their own generator (so the cohort's other
    content is identical with and without missingness)."""
    rng = np.random.default_rng([seed, index, 0x4D495353])
    draws = rng.random(len(MISSABLE))
    return {m for m, u in zip(MISSABLE, draws) if u < missing.get(m, 0.0)}


def _write_study(args: tuple[StudySpec, str, int, set[str]]) -> dict[str, str]:
    spec, out, seed, dropped = args
    rng = np.random.default_rng([seed, spec.index])
    folder = Path(out) / "patients" / spec.patient_id / spec.study_id
    folder.mkdir(parents=True, exist_ok=True)
    report_text = format_report(spec.sections, strict=False)  # real text may hold "WORD:" mid-sentence
    if "report" not in dropped:
        (folder / MODALITY_FILES["report"]).write_text(report_text, encoding="utf-8")
    report = read_report(report_text)
    findings = report.labels.findings

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
    ecg = synthesize_ecg(findings, rng, fs=500, seconds=10.0)
    if "ecg" not in dropped:
        write_wfdb(str(folder / "ecg"), ecg, 500, LEADS)
    labs = synthesize_labs(findings, rng)
    if "labs" in dropped:
        labs = {k: float("nan") for k in labs}
    return {"study_id": spec.study_id, **{k: float(v) for k, v in labs.items()}}


def _study_specs(n_studies: int | None, seed: int, iu_source: str | Path | None) -> list[StudySpec]:
    reports = load_iu_reports(iu_source or default_iu_source())
    usable = [r for r in reports if r.sections.get("FINDINGS") or r.sections.get("IMPRESSION")]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(usable))
    if n_studies is not None:
        order = order[:n_studies]
    patients = _assign_patients(len(order), rng)
    specs = []
    for i, idx in enumerate(order):
        rep = usable[idx]
        sections = {k: rep.sections[k] for k in ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")
                    if rep.sections.get(k)}
        day = pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 1500)))
        specs.append(StudySpec(i, patients[i], f"DEMO-S{i:05d}", sections, day.strftime("%Y%m%d")))
    return specs


def build_demo_cohort(out: str | Path, *, n_studies: int | None = None, seed: int = 0, workers: int = 2,
                      iu_source: str | Path | None = None,
                      split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                      missing: dict[str, float] | None = None,
                      missing_splits: tuple[str, ...] = ("train", "val")) -> Manifest:
    """Write the demo cohort under ``out`` and return its manifest (split by patient).

    ``missing`` (e.g. ``{"ecg": 0.3, "report": 0.3}``): each study of ``missing_splits``
    loses each listed modality with that probability, independently (its file is not
    written and has no manifest row; missing labs are an empty labs row). The test split
    stays complete by default, so metrics compare with the complete cohort's (as in
    Symile's missing-data experiment, whose test data is complete).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = dict(missing or {})
    unknown = sorted(set(missing) - set(MISSABLE))
    if unknown:
        raise ValueError(f"missing: cannot drop {unknown}; droppable modalities: {', '.join(MISSABLE)}")
    for m, p in missing.items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"missing: probability of {m} must be in [0, 1), got {p}")
    specs = _study_specs(n_studies, seed, iu_source)
    split_of = patient_level_split([s.patient_id for s in specs], split_fractions, seed)
    dropped = {s.study_id: _dropped(seed, s.index, missing) if split_of[s.patient_id] in missing_splits else set()
               for s in specs}
    jobs = [(s, str(out), seed, dropped[s.study_id]) for s in specs]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            labs_rows = pool.map(_write_study, jobs, chunksize=16)
    else:
        labs_rows = [_write_study(j) for j in jobs]
    pd.DataFrame(labs_rows).to_csv(out / "labs.csv", index=False)

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
    model = reference_model()
    model.save(out / REFERENCE_MODEL_FILE)
    write_reference_levels(manifest, model, out / REFERENCE_LEVELS_FILE)
    return manifest


def reference_model() -> ReferenceModel:
    """The demo cohort's ideal observer: the finding vocabulary, which findings each
    modality carries, and the retrieval directions and zero-shot modalities it has levels for."""
    return ReferenceModel(findings=FINDINGS, observable=observable_findings(), directions=DIRECTIONS,
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
