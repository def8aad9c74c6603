"""A hospital-style PACS export (pydicom's real test files re-keyed: CR chest radiographs,
an extremity CR, CT, MR, NM, a DICOM waveform ECG, a CR cut at half its size, a DICOMDIR,
and reports named by accession number) ingested by ``cohorts/hospital_export_example.yaml``:
only chest radiographs are X-rays, reports join them by accession, the ECG joins by time,
and everything left out is counted by category."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medmm.cohort.ingest import ingest, unreadable_path
from medmm.cohort.scan import dicom_header
from medmm.cohort.spec import CohortSpec, load_cohort_spec
from medmm.io.ecg import read_ecg
from medmm.pipelines.ingest import main
from tests.cohort import replicas

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "cohorts/hospital_export_example.yaml"


def header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def test_hospital_export(hospital_export, capsys, monkeypatch):
    monkeypatch.setenv("MEDMM_PROGRESS", "1")
    out = hospital_export / "manifest.parquet"
    assert main(["--spec", str(SPEC), "--root", str(hospital_export), "--workers", "1"]) == 0
    printed = capsys.readouterr()
    table = pd.read_parquet(out)

    # only chest radiographs are X-rays: CT, MR, NM, the extremity CR and the DICOMDIR are not
    xray = table[table["modality"] == "xray"]
    headers = {p: header(hospital_export / p) for p in xray["path"]}
    assert len(xray) == 12 and {h.Modality for h in headers.values()} == {"CR", "DX"}
    assert {h.BodyPartExamined for h in headers.values()} == {"CHEST"}
    assert any("." not in Path(p).name for p in xray["path"])  # the file without extension nor preamble

    # each report joins the X-ray study whose AccessionNumber names it
    accession_study = {h.AccessionNumber: h.StudyInstanceUID for h in headers.values()}
    reports = table[table["modality"] == "report"]
    assert len(reports) == 12
    for _, row in reports.iterrows():
        assert row["study_id"] == accession_study[Path(row["path"]).stem]
        assert row["patient_id"] == headers[xray[xray["study_id"] == row["study_id"]]["path"].iloc[0]].PatientID

    # the DICOM waveform ECG is an ecg, joined to its patient's X-ray study taken two hours before
    ecg = table[table["modality"] == "ecg"]
    assert len(ecg) == 1 and Path(ecg["path"].iloc[0]).name == "ECG0001.dcm"
    ecg_header = header(hospital_export / ecg["path"].iloc[0])
    assert ecg["linked_from"].iloc[0] == ecg_header.StudyInstanceUID
    assert ecg["study_id"].iloc[0] == accession_study["ACC1001"] and ecg["patient_id"].iloc[0] == \
        ecg_header.PatientID
    assert read_ecg(hospital_export / ecg["path"].iloc[0]).n_leads == 12

    # the cut CR is listed as unreadable, with its reason
    listed = pd.read_csv(unreadable_path(out))
    assert listed["reason"].tolist() == ["truncated"] and "compressed frame" in listed["problem"].iloc[0]
    assert header(hospital_export / listed["path"].iloc[0]).Modality == "CR"

    # the summary: counts by category, never an identifier or a path of the export
    assert "12 patients, 12 studies, 25 rows" in printed.out and "links made 13" in printed.out
    assert ("dropped: unreadable 1 (truncated 1); not selected 5 (BodyPartExamined=EXTREMITY 1, Modality=(none) 1, "
            "Modality=CT 1, Modality=MR 1, Modality=NM 1); not claimed 1 (not DICOM by content 1); "
            "unlinked 2 (report 2); studies lacking a required modality 1 (no xray 1)") in printed.out
    assert "ingest: read files" in printed.err  # the progress bar
    for identifier in ("HOSP", "ACC1", "ACC2", "EXPORT/S", "TEST^"):
        assert identifier not in printed.out + printed.err


def test_routing_by_sop_class_and_modality(hospital_export):
    spec = CohortSpec(name="routed", root=hospital_export, modalities=["xray", "ct", "mr"], files=[
        {"modality": "xray", "format": "dicom", "pattern": "dicom/**",
         "select": {"SOPClassUID": ["Computed Radiography Image Storage",
                                    "Digital X-Ray Image Storage - For Presentation"]}},
        {"modality": "ct", "format": "dicom", "pattern": "dicom/**", "select": {"Modality": "ct"}},
        {"modality": "mr", "format": "dicom", "pattern": "dicom/**", "select": {"Modality": "MR"}}])
    stats = ingest(spec, hospital_export, hospital_export / "m.parquet", workers=1)
    table = pd.read_parquet(hospital_export / "m.parquet")
    routed = {m: {header(hospital_export / p).Modality for p in g["path"]} for m, g in table.groupby("modality")}
    assert routed == {"xray": {"CR", "DX"}, "ct": {"CT"}, "mr": {"MR"}}  # the extremity CR is an X-ray here
    # a SOP class is shown by its name, the first rule's reason counts (the NM file is a
    # Secondary Capture, as pydicom's JPEG-lossy.dcm is)
    assert stats.dropped["not selected"] == {"SOPClassUID=12-lead ECG Waveform Storage": 1,
                                             "SOPClassUID=Secondary Capture Image Storage": 1,
                                             "SOPClassUID=(none)": 1}


def test_links_by_study_uid_and_accession_through_a_mapping_table(tmp_path):
    root = tmp_path / "export"
    dx = [replicas.write_cxr(root / f"dicom/IM{i}.dcm", f"RAW{i}", f"s{i}", 1, replicas.datetime(2024, 1, 1 + i),
                             accession=acc) for i, acc in enumerate(["A1", "A2", "A2", "A3"])]
    uid = [header(p).StudyInstanceUID for p in dx]
    (root / "reports").mkdir()
    (root / f"reports/{uid[0]}.txt").write_text("IMPRESSION: by UID.\n")
    (root / "reports/A2.txt").write_text("IMPRESSION: one accession, two studies.\n")
    (root / "reports/P9_A3.txt").write_text("IMPRESSION: another patient's accession.\n")
    # the hospital's mapping of accession numbers to pseudonymous patient ids
    pd.DataFrame({"AccessionNumber": ["A1", "A2", "A3"], "MRN": ["P1", "P2", "P3"]}).to_csv(root / "map.csv",
                                                                                           index=False)
    spec = CohortSpec(name="keys", root=root, modalities=["xray", "report", "note"], files=[
        {"modality": "xray", "format": "dicom", "pattern": "dicom/*.dcm"},
        {"modality": "report", "format": "text", "pattern": "reports/1.*.txt",
         "ids": r"reports/(?P<study_uid>[\d.]+)\.txt$"},
        {"modality": "note", "format": "text", "pattern": "reports/*.txt",
         "ids": r"reports/(?:(?P<patient>P\d)_)?(?P<accession>A\d)\.txt$"}],
        tables=[{"path": "map.csv", "accession_column": "AccessionNumber", "patient_column": "MRN"}],
        links=[{"anchor": "xray", "attach": "report", "by": "study_uid"},
               {"anchor": "xray", "attach": "note", "by": "accession"}])
    stats = ingest(spec, root, root / "m.parquet", workers=1)
    table = pd.read_parquet(root / "m.parquet")
    xray = table[table["modality"] == "xray"].set_index("path")
    # the mapping table's patient wins over the header's PatientID
    assert xray["patient_id"].to_dict() == {"dicom/IM0.dcm": "P1", "dicom/IM1.dcm": "P2", "dicom/IM2.dcm": "P2",
                                            "dicom/IM3.dcm": "P3"}
    assert table.loc[table["modality"] == "report", "study_id"].tolist() == [uid[0]]
    notes = table[table["modality"] == "note"].set_index("study_id")["patient_id"]
    # A2's note is copied to both A2 studies; P9's note names A3, an X-ray of P3: not joined, it
    # stays P9's own (a per-patient item, as it has no study)
    assert notes.to_dict() == {uid[1]: "P2", uid[2]: "P2", "P9/note": "P9"}
    assert stats.n_links == 3 and stats.dropped == {} and stats.n_unidentified == 0


@pytest.mark.parametrize("name, fraction, problem", [
    ("CT_small.dcm", 0.5, "truncated: the pixel data declares 32768 bytes"),   # native pixel data
    ("MR_small_bigendian.dcm", 0.5, "truncated: the pixel data declares 8192 bytes"),
    ("JPEG-lossy.dcm", 0.5, "truncated: a compressed frame declares"),          # encapsulated frames
    ("CT_small.dcm", 0.05, "truncated: the file ends before its pixel data"),
    ("waveform_ecg.dcm", 0.05, "truncated: an element declares more bytes than the file holds"),
    ("CT_small.dcm", 1.0, None), ("JPEG-lossy.dcm", 1.0, None), ("waveform_ecg.dcm", 1.0, None),
])
def test_a_cut_dicom_is_found_from_its_header(tmp_path, name, fraction, problem):
    data = Path(get_testdata_file(name)).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    _, _, found = dicom_header(path)
    assert found == problem if problem is None else found.startswith(problem)


def test_the_shipped_example_spec_is_the_one_tested():
    example = load_cohort_spec(SPEC)
    assert [link.by for link in example.links] == ["accession", "time"]
    assert example.files[0].accepted() == {"Modality": ["CR", "DX"], "BodyPartExamined": ["CHEST"]}
