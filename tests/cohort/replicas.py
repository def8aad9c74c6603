"""Small replicas of the public datasets' directory layouts, in real formats (DICOM by
pydicom, WFDB by wfdb, NIfTI by nibabel, JPEG by PIL, TIFF by tifffile, CSV tables).
Identifiers follow each dataset's scheme; all values are made up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medmm.demo.writers import write_cxr_dicom, write_wfdb

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[":".join(map(str, parts))])


def write_cxr(path: Path, patient: str, study: str, series: int, date: str, time: str = "") -> Path:
    """A real DICOM chest radiograph (8x8); optionally a StudyTime."""
    import pydicom

    rng = np.random.default_rng(abs(hash((patient, study, series))) % 2**32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cxr_dicom(path, rng.random((8, 8)), patient_id=patient, patient_name=f"TEST^{patient}",
                    study_uid=_uid(patient, study), series_uid=_uid(patient, study, series),
                    sop_uid=_uid(patient, study, series, path.name), study_date=date)
    if time:
        ds = pydicom.dcmread(path)
        ds.StudyTime = time
        ds.save_as(path)
    return path


def write_ecg(record: Path, seed: int = 0) -> Path:
    sig = np.random.default_rng(seed).normal(0, 0.2, (12, 250))
    return write_wfdb(record, sig, 500, LEADS)


def mimic_cxr(root: Path, extra_study: bool = False) -> None:
    """files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm + sNNNNNNNN.txt.

    p10000032: s50000001 (two images in two series, one without extension and without
    a preamble) and s50000002; p10000033: s50000003 plus a '.dcm' that is not DICOM."""
    f = root / "files"
    a = f / "p10/p10000032"
    write_cxr(a / "s50000001/aaaa1111.dcm", "10000032", "s1", 1, "21800101", "083000")
    raw = write_cxr(a / "s50000001/bbbb2222.dcm", "10000032", "s1", 2, "21800101", "083500")
    noext = a / "s50000001/bbbb2222"
    noext.write_bytes(raw.read_bytes()[132:])  # no preamble, no 'DICM', no extension
    raw.unlink()
    write_cxr(a / "s50000002/cccc3333.dcm", "10000032", "s2", 1, "21800201", "120000")
    b = f / "p10/p10000033"
    write_cxr(b / "s50000003/dddd4444.dcm", "10000033", "s3", 1, "21800505", "090000")
    (b / "s50000003/notes.dcm").write_text("not a DICOM file, whatever its name says")
    for rel in ("p10/p10000032/s50000001", "p10/p10000032/s50000002", "p10/p10000033/s50000003"):
        (f / f"{rel}.txt").write_text("FINDINGS: No pleural effusion.\nIMPRESSION: Normal chest.\n")
    if extra_study:
        c = f / "p10/p10000034"
        write_cxr(c / "s50000004/eeee5555.dcm", "10000034", "s4", 1, "21800606")
        (c / "s50000004.txt").write_text("IMPRESSION: Small left effusion.\n")


def mimic_iv_ecg(root: Path, rows: list[tuple[str, str, str]] | None = None) -> None:
    """files/pXXXX/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.hea/.dat + record_list.csv + machine_measurements.csv.
    ``rows``: (subject_id, study_id, ecg_time)."""
    rows = rows or [("10000032", "40000001", "2180-01-01 10:00:00"), ("10000032", "40000002", "2180-01-03 09:00:00"),
                    ("10000033", "40000003", "2180-05-05 23:00:00"), ("10000033", "40000004", "2180-05-04 03:00:00")]
    records, measurements = [], []
    for i, (subject, study, when) in enumerate(rows):
        rel = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
        write_ecg(root / rel, seed=i)
        records.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": when, "path": rel})
        measurements.append({"subject_id": subject, "study_id": study, "ecg_time": when, "rr_interval": 800 + i,
                             "qrs_axis": 30 + i})
    pd.DataFrame(records).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(measurements).to_csv(root / "machine_measurements.csv", index=False)


def ptbxl(root: Path) -> None:
    """records500/XXXXX/XXXXX_hr.hea/.dat + ptbxl_database.csv (patient_id is a float column)."""
    rows = []
    for ecg_id, patient in ((1, 15709.0), (2, 13243.0), (3, 15709.0)):
        rel = f"records500/00000/{ecg_id:05d}_hr"
        write_ecg(root / rel, seed=ecg_id)
        rows.append({"ecg_id": ecg_id, "patient_id": patient, "recording_date": f"1984-11-0{ecg_id} 09:17:34",
                     "scp_codes": "{'NORM': 100.0, 'SR': 0.0}", "filename_lr": f"records100/00000/{ecg_id:05d}_lr",
                     "filename_hr": rel})
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)


def chexpert(root: Path) -> None:
    """train|valid/patientNNNNN/studyN/viewN_frontal|lateral.jpg + train.csv."""
    from PIL import Image

    files = ["train/patient00001/study1/view1_frontal.jpg", "train/patient00001/study1/view2_lateral.jpg",
             "train/patient00001/study2/view1_frontal.jpg", "train/patient00002/study1/view1_frontal.jpg",
             "valid/patient64541/study1/view1_frontal.jpg"]
    for i, rel in enumerate(files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 10 * i, np.uint8)).save(root / rel, quality=90)
    pd.DataFrame({"Path": [f"CheXpert-v1.0-small/{r}" for r in files if r.startswith("train")],
                  "Sex": "Female", "Age": 68, "Frontal/Lateral": "Frontal", "No Finding": 1.0}).to_csv(
        root / "train.csv", index=False)


def tcga(root: Path) -> None:
    """slides/<slide barcode>.svs (a tiled TIFF), features/<barcode>.pt (a tile-feature bag),
    genomics.csv (genes x samples) and clinical.csv (one row per case, survival)."""
    import tifffile
    import torch

    (root / "slides").mkdir(parents=True)
    (root / "features").mkdir()
    tile = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(root / "slides/TCGA-A1-A0SB-01Z-00-DX1.8C2B7BF5-6A33-4A8E-9E3C-3E8F2E5A6B11.svs", tile,
                     tile=(32, 32), photometric="rgb")
    torch.save(torch.zeros(5, 8), root / "features/TCGA-A2-A0CM-01Z-00-DX1.pt")
    genes = pd.DataFrame({"gene": ["TP53", "BRCA1", "ERBB2"], "TCGA-A1-A0SB-01": [1.0, 2.0, 3.0],
                          "TCGA-A2-A0CM-01": [0.5, 0.1, 9.0], "TCGA-ZZ-ZZZZ-01": [0.0, 0.0, 0.0]})
    genes.to_csv(root / "genomics.csv", index=False)
    pd.DataFrame({"case_submitter_id": ["TCGA-A1-A0SB", "TCGA-A2-A0CM"], "survival_months": [36.2, 12.0],
                  "censorship": [1, 0]}).to_csv(root / "clinical.csv", index=False)


def _nifti(path: Path, label: bool = False) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((6, 6, 4), np.uint8 if label else np.int16)
    data[2:4, 2:4, 1:3] = 1 if label else 40
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), path)


def amos(root: Path) -> None:
    """imagesTr|imagesVa/amos_NNNN.nii.gz + labelsTr|labelsVa + dataset.json; 0001 CT, 0507 MR,
    imagesVa/amos_0002 without a label."""
    for case in ("0001", "0507"):
        _nifti(root / f"imagesTr/amos_{case}.nii.gz")
        _nifti(root / f"labelsTr/amos_{case}.nii.gz", label=True)
    _nifti(root / "imagesVa/amos_0002.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "AMOS", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "training": [{"image": f"./imagesTr/amos_{c}.nii.gz", "label": f"./labelsTr/amos_{c}.nii.gz"}
                     for c in ("0001", "0507")]}))


def btcv(root: Path) -> None:
    for case in ("0001", "0002"):
        _nifti(root / f"imagesTr/img{case}.nii.gz")
        _nifti(root / f"labelsTr/label{case}.nii.gz", label=True)
    (root / "dataset.json").write_text(json.dumps({"name": "BTCV", "modality": {"0": "CT"}}))
