"""Small replicas of the public datasets' layouts, one per shipped cohort spec, in real
formats (DICOM by pydicom, WFDB by wfdb, NIfTI by nibabel, JPEG by Pillow, TIFF by
tifffile, CSV tables, gzipped where the dataset ships them so). Folder names, file names
and table columns are those the datasets document; identifiers follow each dataset's
scheme; every value is made up.

``REPLICAS`` maps a spec's file name (``cohorts/<name>.yaml``) to the writer of its
replica: ``REPLICAS["mimic_cxr"](root)`` fills ``root``; ``hospital_export_example`` is a
PACS export built from pydicom's real test files. Each replica has at least
``N_PATIENTS`` patients, enough for a patient-level train / val / test split, and writes
in about a second. What each dataset naturally leaves out is in it too (lateral views,
images without a label, ECGs with no X-ray within a day), so that ingest has something to
drop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import tifffile
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medmm.cohort.splits import stable_patient_split
from medmm.demo.writers import write_cxr_dicom, write_wfdb

N_PATIENTS = 12
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CHEXPERT_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices"]
REPORT = "FINDINGS: {finding}\nIMPRESSION: {impression}\n"
FINDINGS = [("No pleural effusion or pneumothorax. Heart size is normal.", "No acute cardiopulmonary process."),
            ("Small left pleural effusion. Mild cardiomegaly.", "Small left effusion, mild cardiomegaly."),
            ("Right lower lobe opacity concerning for pneumonia.", "Right lower lobe pneumonia."),
            ("Mild pulmonary edema. Enlarged cardiac silhouette.", "Mild edema and cardiomegaly.")]


# Bands of the split hash u (medmm.cohort.splits, seed 0) and how many patients each replica
# draws from them, so that every shipped spec's fractions (0.7/0.1/0.2, 0.8/0.1/0.1,
# 0.6/0.2/0.2) give train, val and test patients: u < 0.6 is train in all; [0.72, 0.78) val
# in most; [0.82, 0.88) val in PTB-XL's, test in the others; >= 0.92 test in all.
_BANDS = ((0.0, 0.6), (0.72, 0.78), (0.82, 0.88), (0.92, 1.0))


def pick_patients(make_id: Callable[[int], str], n: int = N_PATIENTS, start: int = 0) -> list[str]:
    """``n`` patient ids ``make_id(k)`` for k = start, start + 1, ..., drawn so that two fall in
    each upper band of the split hash and the rest below 0.6 (train-band ones first)."""
    quota = [n - 2 * (len(_BANDS) - 1), *[2] * (len(_BANDS) - 1)] if n >= 2 * len(_BANDS) else [n, 0, 0, 0]
    chosen: list[list[str]] = [[] for _ in _BANDS]
    k = start
    while sum(map(len, chosen)) < n:
        pid = make_id(k)
        band = next((b for b, (lo, hi) in enumerate(_BANDS)
                     if stable_patient_split([pid], (lo, hi - lo, 1 - hi), 0)[pid] == "val"), None)
        if band is not None and len(chosen[band]) < quota[band]:
            chosen[band].append(pid)
        k += 1
    return [pid for band in chosen for pid in band]


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[":".join(map(str, parts))])


def _seed(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def report_text(i: int) -> str:
    finding, impression = FINDINGS[i % len(FINDINGS)]
    return REPORT.format(finding=finding, impression=impression)


def write_cxr(path: Path, patient: str, study: str, series: int, when: datetime, *, view: str = "PA",
              modality: str = "DX", accession: str = "", size: int = 16) -> Path:
    """A real DICOM chest radiograph with StudyDate / StudyTime, ViewPosition and
    AccessionNumber as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(_seed(patient, study, series, path.name))
    write_cxr_dicom(path, rng.random((size, size)), patient_id=patient, patient_name=f"TEST^{patient}",
                    study_uid=_uid(patient, study), series_uid=_uid(patient, study, series),
                    sop_uid=_uid(patient, study, series, path.name), study_date=when.strftime("%Y%m%d"),
                    modality=modality)
    ds = pydicom.dcmread(path)
    ds.StudyTime, ds.ViewPosition, ds.AccessionNumber = when.strftime("%H%M%S"), view, accession
    ds.save_as(path)
    return path


def write_jpeg(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path, quality=90)
    return path


def write_ecg(record: Path, seed: int = 0, fs: int = 500, seconds: float = 10.0) -> Path:
    """A 12-lead WFDB record (format 16) of ``seconds`` at ``fs``, as MIMIC-IV-ECG and PTB-XL store them."""
    sig = np.random.default_rng(seed).normal(0, 0.2, (12, int(fs * seconds)))
    return write_wfdb(record, sig, fs, LEADS)


# ----------------------------------------------------------------------------- MIMIC


@dataclass(frozen=True)
class CxrStudy:
    subject: str
    study: str      # study_id, 8 digits (folder s<study_id>)
    when: datetime
    views: tuple[str, ...]

    @property
    def folder(self) -> str:
        return f"files/p{self.subject[:2]}/p{self.subject}/s{self.study}"

    def dicom_id(self, k: int) -> str:
        digest = hashlib.sha1(f"{self.subject}/{self.study}/{k}".encode()).hexdigest()
        return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def mimic_cxr_studies(n_patients: int = N_PATIENTS) -> list[CxrStudy]:
    """Each patient one study with a frontal (PA or AP) and a lateral view (LATERAL or LL);
    the first patient a second, frontal-only study a month later; the second patient a
    second study with a lateral view only."""
    base = datetime(2180, 1, 1, 8, 30)
    studies = []
    for i, subject in enumerate(pick_patients(lambda k: str(10000032 + 17 * k), n_patients)):
        frontal, lateral = ("PA", "LATERAL") if i % 2 == 0 else ("AP", "LL")
        studies.append(CxrStudy(subject, str(50000001 + 10 * i), base + timedelta(days=9 * i, hours=i),
                                (frontal, lateral)))
        if i == 0:
            studies.append(CxrStudy(subject, str(50000002 + 10 * i), base + timedelta(days=31), ("PA",)))
        if i == 1:
            studies.append(CxrStudy(subject, str(50000002 + 10 * i), base + timedelta(days=40), ("LL",)))
    return studies


def mimic_cxr(root: Path) -> None:
    """MIMIC-CXR v2.0.0: ``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm`` (DX, ViewPosition
    in the header), the reports of ``mimic-cxr-reports.zip`` extracted beside them
    (``files/pXX/pNNNNNNNN/sNNNNNNNN.txt``), ``cxr-record-list.csv.gz`` (subject_id,
    study_id, dicom_id, path) and ``cxr-study-list.csv.gz`` (subject_id, study_id, path
    of the report)."""
    records, studies = [], []
    for n, s in enumerate(mimic_cxr_studies()):
        for k, view in enumerate(s.views):
            rel = f"{s.folder}/{s.dicom_id(k)}.dcm"
            write_cxr(root / rel, s.subject, s.study, k + 1, s.when + timedelta(minutes=k), view=view)
            records.append({"subject_id": s.subject, "study_id": s.study, "dicom_id": s.dicom_id(k), "path": rel})
        (root / f"{s.folder}.txt").write_text(report_text(n))
        studies.append({"subject_id": s.subject, "study_id": s.study, "path": f"{s.folder}.txt"})
    pd.DataFrame(records).to_csv(root / "cxr-record-list.csv.gz", index=False)
    pd.DataFrame(studies).to_csv(root / "cxr-study-list.csv.gz", index=False)


def mimic_cxr_jpg(root: Path) -> None:
    """MIMIC-CXR-JPG v2.1.0: ``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``,
    ``mimic-cxr-2.0.0-metadata.csv.gz`` (dicom_id, subject_id, study_id, ViewPosition,
    StudyDate, StudyTime as numbers, ...), ``mimic-cxr-2.0.0-chexpert.csv.gz`` and
    ``mimic-cxr-2.0.0-split.csv.gz``; the reports of MIMIC-CXR extracted beside them."""
    meta, labels, split = [], [], []
    for n, s in enumerate(mimic_cxr_studies()):
        for k, view in enumerate(s.views):
            write_jpeg(root / s.folder / f"{s.dicom_id(k)}.jpg", _seed(s.study, k))
            meta.append({"dicom_id": s.dicom_id(k), "subject_id": int(s.subject), "study_id": int(s.study),
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                         "Rows": 32, "Columns": 32, "StudyDate": int(s.when.strftime("%Y%m%d")),
                         "StudyTime": float(s.when.strftime("%H%M%S.%f")[:10]),
                         "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                         "ViewCodeSequence_CodeMeaning": "postero-anterior" if view == "PA" else "lateral",
                         "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
            split.append({"dicom_id": s.dicom_id(k), "study_id": int(s.study), "subject_id": int(s.subject),
                          "split": "train"})
        labels.append({"subject_id": int(s.subject), "study_id": int(s.study),
                       **{c: (1.0 if c == "No Finding" and n % 4 == 0 else None) for c in CHEXPERT_LABELS}})
        (root / f"{s.folder}.txt").write_text(report_text(n))
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(labels).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame(split).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)


def mimic_iv_ecg_records(n_patients: int = N_PATIENTS) -> list[tuple[str, str, datetime]]:
    """(subject_id, study_id, ecg_time): every MIMIC-CXR replica patient has an ECG 90 min
    after their first X-ray study, except the third (30 h after: beyond a day); the fourth
    also one 30 h before it (the nearer one, after, wins); the first also one a year later
    (no X-ray near it)."""
    first = {}
    for s in mimic_cxr_studies(n_patients):
        first.setdefault(s.subject, s.when)
    rows = []
    for i, (subject, when) in enumerate(first.items()):
        rows.append((subject, str(40000001 + 10 * i), when + timedelta(hours=30 if i == 2 else 1.5)))
        if i == 3:
            rows.append((subject, str(40000002 + 10 * i), when - timedelta(hours=30)))
        if i == 0:
            rows.append((subject, str(40000002 + 10 * i), when + timedelta(days=365)))
    return rows


def mimic_iv_ecg(root: Path) -> None:
    """MIMIC-IV-ECG v1.0: ``files/pXXXX/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.hea`` + ``.dat``
    (WFDB, 12 leads, 500 Hz, 10 s), ``record_list.csv`` (subject_id, study_id, file_name,
    ecg_time, path) and ``machine_measurements.csv`` (one row per ECG study)."""
    records, measurements = [], []
    for i, (subject, study, when) in enumerate(mimic_iv_ecg_records()):
        rel = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
        write_ecg(root / rel, seed=_seed(study))
        stamp = when.strftime("%Y-%m-%d %H:%M:%S")
        records.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": stamp,
                        "path": rel})
        measurements.append({"subject_id": subject, "study_id": study, "cart_id": 6848296, "ecg_time": stamp,
                             **{f"report_{k}": ("Sinus rhythm" if k == 0 else "") for k in range(18)},
                             "bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter",
                             "rr_interval": 800 + i, "p_onset": 40, "p_end": 128, "qrs_onset": 170,
                             "qrs_end": 258, "t_end": 518, "p_axis": 81, "qrs_axis": 30 + i, "t_axis": 43})
    pd.DataFrame(records).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(measurements).to_csv(root / "machine_measurements.csv", index=False)


def symile_mimic(root: Path) -> None:
    """Symile-MIMIC's sources side by side: ``mimic-cxr/`` (the MIMIC-CXR replica) and
    ``mimic-iv-ecg/`` (the MIMIC-IV-ECG replica, its ECGs timed against those X-rays)."""
    mimic_cxr(root / "mimic-cxr")
    mimic_iv_ecg(root / "mimic-iv-ecg")


# ----------------------------------------------------------------------------- PTB-XL, CheXpert


def ptbxl(root: Path) -> None:
    """PTB-XL v1.0.3: ``records500/00000/NNNNN_hr.hea`` + ``.dat`` (500 Hz, 10 s) and
    ``records100/00000/NNNNN_lr`` (100 Hz), ``ptbxl_database.csv`` (its 28 columns;
    patient_id a float column) and ``scp_statements.csv``. Three patients have two records."""
    rows = []
    patients = pick_patients(lambda k: str(15709 + 3 * k))
    for i in range(N_PATIENTS + 3):
        ecg_id, patient = i + 1, float(patients[i % N_PATIENTS])
        hr, lr = f"records500/00000/{ecg_id:05d}_hr", f"records100/00000/{ecg_id:05d}_lr"
        write_ecg(root / hr, seed=ecg_id)
        write_ecg(root / lr, seed=ecg_id, fs=100)
        rows.append({"ecg_id": ecg_id, "patient_id": patient, "age": 56.0, "sex": i % 2, "height": None,
                     "weight": 63.0, "nurse": 2.0, "site": 0.0, "device": "CS-12   E",
                     "recording_date": f"1984-11-{ecg_id:02d} 09:17:34",
                     "report": "sinusrhythmus periphere niederspannung",
                     "scp_codes": "{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}", "heart_axis": None,
                     "infarction_stadium1": None, "infarction_stadium2": None, "validated_by": None,
                     "second_opinion": False, "initial_autogenerated_report": False, "validated_by_human": True,
                     "baseline_drift": None, "static_noise": None, "burst_noise": None, "electrodes_problems": None,
                     "extra_beats": None, "pacemaker": None, "strat_fold": 1 + i % 10, "filename_lr": lr,
                     "filename_hr": hr})
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    pd.DataFrame({"Unnamed: 0": ["NORM", "SR"], "description": ["normal ECG", "sinus rhythm"],
                  "diagnostic": [1.0, None], "form": [None, None], "rhythm": [None, 1.0],
                  "diagnostic_class": ["NORM", None], "diagnostic_subclass": ["NORM", None],
                  "Statement Category": ["Normal/abnormal", "Rhythm"], "SCP-ECG Statement Description":
                  ["normal ECG", "sinus rhythm"], "AHA code": [1.0, 21.0], "aECG REFID": [None, None],
                  "CDISC Code": [None, None], "DICOM Code": [None, None]}).to_csv(root / "scp_statements.csv",
                                                                                   index=False)


def chexpert_labels(seed: int) -> dict[str, float | None]:
    """One study's 14 observations as CheXpert's labeler writes them: a third of the studies
    'No Finding' (1.0) and nothing else, the others a few findings each, positive (1.0),
    negative (0.0) or uncertain (-1.0), the rest blank."""
    rng = np.random.default_rng(seed)
    labels: dict[str, float | None] = {c: None for c in CHEXPERT_LABELS}
    if rng.random() < 1 / 3:
        labels["No Finding"] = 1.0
        return labels
    for column in rng.choice(CHEXPERT_LABELS[1:], size=3, replace=False):
        labels[str(column)] = float(rng.choice([1.0, 1.0, 0.0, -1.0]))
    return labels


def chexpert(root: Path) -> None:
    """CheXpert-v1.0-small (the folder itself): ``train|valid/patientNNNNN/studyN/viewN_frontal|lateral.jpg``,
    ``train.csv`` and ``valid.csv`` (Path prefixed with ``CheXpert-v1.0-small/``, Sex, Age,
    Frontal/Lateral, AP/PA and the 14 observations, 1.0 / 0.0 / -1.0 / blank). Ten train
    patients (two with a second study) and two valid ones; every other study also has a
    lateral view."""
    tables: dict[str, list[dict]] = {"train": [], "valid": []}
    patients = [("train", p) for p in pick_patients(lambda k: f"patient{k + 1:05d}", N_PATIENTS - 2)] + \
               [("valid", f"patient{n:05d}") for n in (64541, 64542)]
    for i, (part, patient) in enumerate(patients):
        for study in range(1, 3 if i < 2 else 2):
            views = ["frontal", "lateral"] if (i + study) % 2 == 0 else ["frontal"]
            for v, view in enumerate(views, start=1):
                rel = f"{part}/{patient}/study{study}/view{v}_{view}.jpg"
                write_jpeg(root / rel, _seed(rel))
                tables[part].append({"Path": f"CheXpert-v1.0-small/{rel}", "Sex": "Female" if i % 2 else "Male",
                                     "Age": 40 + i, "Frontal/Lateral": view.capitalize(),
                                     "AP/PA": ("AP" if i % 3 else "PA") if view == "frontal" else "",
                                     **chexpert_labels(_seed(part, patient, study))})
    for part, rows in tables.items():
        pd.DataFrame(rows).to_csv(root / f"{part}.csv", index=False)


# ----------------------------------------------------------------------------- TCGA, AMOS, BTCV


def tcga_cases(n_patients: int = N_PATIENTS) -> list[str]:
    return pick_patients(lambda k: f"TCGA-{chr(65 + k % 26)}{k // 26 + 1}-A{k:03d}", n_patients)


def tcga(root: Path) -> None:
    """TCGA (one project) as CMTA / MCAT use it: ``slides/<slide barcode>.svs`` (a tiled
    TIFF at 0.5 um/px, 20x) for eight cases, ``features/<slide barcode>.pt`` (a tile-feature
    bag, [tiles, 16]: as wide as medmm's tile encoder, so that both kinds train as one
    cohort) for the other four (every third case), ``genomics.csv`` (genes x sample barcodes; one sample has
    no slide) and ``clinical.csv`` (one row per case: survival months, censorship)."""
    (root / "slides").mkdir(parents=True)
    (root / "features").mkdir()
    cases = tcga_cases()
    for i, case in enumerate(cases):
        slide = f"{case}-01Z-00-DX1.{hashlib.md5(case.encode()).hexdigest().upper()[:8]}"
        if i % 3 != 2:
            tile = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
            tifffile.imwrite(root / f"slides/{slide}.svs", tile, tile=(32, 32), photometric="rgb",
                             resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 um/px
        else:
            torch.save(torch.randn(5, 16, generator=torch.Generator().manual_seed(i)), root / f"features/{slide}.pt")
    genes = {"gene": ["TP53", "BRCA1", "ERBB2", "PIK3CA"]}
    for i, case in enumerate([*cases, "TCGA-ZZ-ZZZZ"]):
        genes[f"{case}-01"] = list(np.random.default_rng(100 + i).normal(0, 1, 4).round(3))
    pd.DataFrame(genes).to_csv(root / "genomics.csv", index=False)
    # follow-up times shuffled over the cases (7 is prime to 12), so that every split spans short and long ones
    pd.DataFrame({"case_submitter_id": cases, "survival_months": [6.0 + 5 * (7 * i % 12) for i in range(len(cases))],
                  "censorship": [i % 3 == 0 for i in range(len(cases))]}).astype({"censorship": int}).to_csv(
        root / "clinical.csv", index=False)


# The classes of each dataset's dataset.json, by label value, spelt as they ship ("arotra" sic).
AMOS_LABELS = ("background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
               "arotra", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
               "prostate/uterus")
BTCV_LABELS = ("background", "spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC", "veins",
               "pancreas", "rad", "lad")
# Two organs of both datasets' label lists (value: box, CT number): spleen (1) and liver (6).
_ORGANS = {1: ((slice(2, 7), slice(2, 7), slice(2, 6)), 50), 6: ((slice(8, 14), slice(6, 13), slice(1, 7)), 100)}


def _nifti(path: Path, label: bool = False, seed: int = 0) -> None:
    """A 16 x 16 x 8 abdominal volume (0.8 x 0.8 x 2.5 mm) or its label map: the spleen and
    the liver as boxes in fat (-100 HU); the image's CT numbers shift a little with ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((16, 16, 8), np.uint8) if label else np.full((16, 16, 8), -100 + seed % 7, np.int16)
    for value, (box, hu) in _ORGANS.items():
        data[box] = value if label else hu + seed % 7
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), path)


def amos(root: Path) -> None:
    """AMOS 2022 (``amos22/``): ``imagesTr|labelsTr/amos_NNNN.nii.gz`` for nine CT cases
    (0001-0499) and three MR cases (0501 and above; two train, one test), ``imagesVa|labelsVa``
    for one CT case, and ``imagesTs`` (no labels) for one, plus ``dataset.json`` with the 15
    organ classes as the dataset names them."""
    ct = pick_patients(lambda k: f"amos_{k + 1:04d}", 9)
    mr_bands = pick_patients(lambda k: f"amos_{k + 507:04d}", 8)  # train ones first, test band last
    mr = [*mr_bands[:2], mr_bands[-1]]
    train = [case.removeprefix("amos_") for case in ct + mr]
    for case in train:
        _nifti(root / f"imagesTr/amos_{case}.nii.gz", seed=int(case))
        _nifti(root / f"labelsTr/amos_{case}.nii.gz", label=True)
    _nifti(root / "imagesVa/amos_0400.nii.gz")
    _nifti(root / "labelsVa/amos_0400.nii.gz", label=True)
    _nifti(root / "imagesTs/amos_0401.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "AMOS", "description": "MICCAI2022 Multi-Modality Abdominal Multi-Organ Segmentation Challenge",
        "modality": {"0": "CT"}, "labels": dict(enumerate(AMOS_LABELS)),
        "numTraining": len(train), "numTest": 1,
        "training": [{"image": f"./imagesTr/amos_{c}.nii.gz", "label": f"./labelsTr/amos_{c}.nii.gz"} for c in train],
        "validation": [{"image": "./imagesVa/amos_0400.nii.gz", "label": "./labelsVa/amos_0400.nii.gz"}],
        "test": [{"image": "./imagesTs/amos_0401.nii.gz"}]}))


def btcv(root: Path) -> None:
    """BTCV in the MSD-style layout of MONAI's tutorials: ``imagesTr/imgNNNN.nii.gz`` +
    ``labelsTr/labelNNNN.nii.gz`` (twelve cases), ``imagesTs/imgNNNN.nii.gz`` (two, unlabelled) and
    ``dataset.json``."""
    cases = pick_patients(lambda k: f"{k + 1:04d}")
    for case in cases:
        _nifti(root / f"imagesTr/img{case}.nii.gz", seed=int(case))
        _nifti(root / f"labelsTr/label{case}.nii.gz", label=True)
    for n in (61, 62):
        _nifti(root / f"imagesTs/img{n:04d}.nii.gz", seed=n)
    (root / "dataset.json").write_text(json.dumps({
        "name": "BTCV", "modality": {"0": "CT"}, "labels": dict(enumerate(BTCV_LABELS)),
        "training": [{"image": f"imagesTr/img{c}.nii.gz", "label": f"labelsTr/label{c}.nii.gz"} for c in cases]}))


# ----------------------------------------------------------------------------- a hospital export


def _export_copy(source: str, target: Path, *, patient: str, accession: str, study: str, when: datetime) -> Path:
    """One of pydicom's real test files, re-keyed as a study of ``patient`` taken at ``when``."""
    ds = pydicom.dcmread(get_testdata_file(source))
    ds.PatientID, ds.PatientName, ds.AccessionNumber = patient, f"TEST^{patient}", accession
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(patient, study), _uid(patient, study, "series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(patient, study, target.name)
    ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    if "AcquisitionDateTime" in ds:
        ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def hospital_export(root: Path) -> None:
    """A PACS export as a hospital hands it over (``cohorts/hospital_export_example.yaml``):
    ``dicom/EXPORT/SNNNN/IMNNNN[.dcm]`` of mixed modalities and ``reports/<ACCESSION>.txt``.

    Twelve patients with a chest radiograph each (three of them pydicom's real CR chest
    file RG1_J2KI, JPEG 2000; nine written DX files, one without extension nor preamble)
    and its report. Besides: the first patient's DICOM waveform ECG (pydicom's
    waveform_ecg) two hours after their X-ray; the second's CT (CT_small) with a report, and
    a CR of an extremity (RG3_J2KI); the third's MR (MR_small) and NM (JPEG-lossy); a
    thirteenth patient's CR cut at half its size, with a report; a DICOMDIR and a README."""
    patients = pick_patients(lambda k: f"HOSP{k + 1:04d}")
    base = datetime(2024, 3, 1, 9, 0)
    folder = root / "dicom/EXPORT"
    n_study = 0

    def study(name: str) -> Path:
        nonlocal n_study
        n_study += 1
        return folder / f"S{n_study:04d}" / name

    def report(accession: str, i: int) -> None:
        (root / "reports").mkdir(parents=True, exist_ok=True)
        (root / f"reports/{accession}.txt").write_text("EXAM: CHEST PA\n" + report_text(i))

    for i, patient in enumerate(patients):
        accession, when = f"ACC{1001 + i}", base + timedelta(days=i, hours=i % 5)
        if i < 3:
            _export_copy("RG1_J2KI.dcm", study("IM0001.dcm"), patient=patient, accession=accession,
                         study=accession, when=when)
        else:
            path = write_cxr(study("IM0001.dcm"), patient, accession, 1, when, accession=accession, size=64)
            if i == 4:  # no preamble, no 'DICM', no extension
                path.with_suffix("").write_bytes(path.read_bytes()[132:])
                path.unlink()
        report(accession, i)
    first, second, third = patients[:3]
    _export_copy("waveform_ecg.dcm", study("ECG0001.dcm"), patient=first, accession="ACC2001", study="ecg",
                 when=base + timedelta(hours=2))
    _export_copy("CT_small.dcm", study("IM0001.dcm"), patient=second, accession="ACC2002", study="ct",
                 when=base + timedelta(days=1, hours=3))
    report("ACC2002", 1)
    _export_copy("RG3_J2KI.dcm", study("IM0001.dcm"), patient=second, accession="ACC2003", study="hand",
                 when=base + timedelta(days=20))
    _export_copy("MR_small.dcm", study("IM0001.dcm"), patient=third, accession="ACC2004", study="mr",
                 when=base + timedelta(days=5))
    _export_copy("JPEG-lossy.dcm", study("IM0001.dcm"), patient=third, accession="ACC2005", study="nm",
                 when=base + timedelta(days=6))
    cut = _export_copy("RG1_J2KI.dcm", study("IM0001.dcm"), patient="HOSP9999", accession="ACC2006", study="cut",
                       when=base + timedelta(days=7))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    report("ACC2006", 2)
    (folder / "DICOMDIR").write_bytes(Path(get_testdata_file("DICOMDIR")).read_bytes())
    (root / "dicom/README.txt").write_text("Export of 2024-03-01. Images in EXPORT/, one folder per study.\n")


REPLICAS: dict[str, Callable[[Path], None]] = {
    "mimic_cxr": mimic_cxr,
    "mimic_cxr_jpg": mimic_cxr_jpg,
    "mimic_iv_ecg": mimic_iv_ecg,
    "ptbxl": ptbxl,
    "chexpert": chexpert,
    "tcga": tcga,
    "amos": amos,
    "btcv": btcv,
    "symile_mimic": symile_mimic,
    "hospital_export_example": hospital_export,
}
