"""De-identification: PHI planted in every place the profile covers must be gone from every
output byte; the CT series must still read as the same volume."""

from __future__ import annotations

import datetime
import json
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medmm.demo.writers import write_cxr_dicom, write_dicom_series
from medmm.io.volume import read_dicom_series
from medmm.pipelines.deid import main
from medmm.workflows.deid.run import AUDIT_NAME

NAME, ID, BIRTH, STUDY_DATE = "QUIXOTE^ZEBULON", "PHI778899X", "19470311", "20190314"
PLANTED = ["Quixote", "Zebulon", ID, BIRTH, STUDY_DATE, "20190301", "ACC5550199", "Rocinante", "Sancho", "Panza",
           "555-0199", "03/11/1947", "Dulcinea", "14/03/2019"]
REPORT = ("INDICATION: Zebulon Quixote, MRN PHI778899X, DOB 03/11/1947, cough.\n"
          "COMPARISON: CT of 03/14/2019 (accession ACC5550199).\n"
          "FINDINGS: No pleural effusion. Discussed with Dr. Sancho Panza at (617) 555-0199.\n"
          "IMPRESSION: Normal chest. Electronically signed by DULCINEA^TOBOSO on 2019-03-14.\n")


def _plant(ds: Dataset, study_date: str) -> None:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, ID, BIRTH
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, "101500", "ACC5550199"
    ds.StudyDescription = f"CT chest for Zebulon Quixote {ID}"
    ds.InstitutionName = "Rocinante General Hospital"
    ds.ReferringPhysicianName = "PANZA^SANCHO"
    inner = Dataset()
    inner.PatientName, inner.PatientID, inner.PatientBirthDate = NAME, ID, BIRTH
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-D3000", "SRT", "Chest"
    region.AnatomicRegionModifierSequence = [inner]  # PHI two sequences deep
    ds.AnatomicRegionSequence = [region]
    block = ds.private_block(0x0009, "ACME PHI 1.0", create=True)
    block.add_new(0x01, "LO", "Zebulon Quixote")
    hidden = Dataset()
    hidden.PatientID = ID
    block.add_new(0x02, "SQ", [hidden])


@pytest.fixture
def phi_tree(tmp_path) -> tuple[Path, Path, np.ndarray]:
    src = tmp_path / "in" / "QUIXOTE_ZEBULON_PHI778899X"  # file names hold PHI too
    vol = np.random.default_rng(0).integers(-1000, 1500, (6, 5, 4)).astype(np.int16)
    affine = np.array([[0.7, 0, 0, -20.0], [0, 0.8, 0, 10.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    for path in write_dicom_series(vol, affine, src / "ct_20190314"):
        ds = pydicom.dcmread(path)
        _plant(ds, STUDY_DATE)
        ds.save_as(path)
    (src / "cr").mkdir()
    cr = write_cxr_dicom(src / "cr" / "Quixote.dcm", np.full((8, 8), 0.5), patient_id=ID, patient_name=NAME,
                         study_uid="1.2.3.4.5", series_uid="1.2.3.4.5.1", sop_uid="1.2.3.4.5.1.1",
                         study_date="20190301")
    ds = pydicom.dcmread(cr)
    _plant(ds, "20190301")
    ds.save_as(cr)
    burned = write_cxr_dicom(src / "cr" / "burned.dcm", np.full((8, 8), 0.2), patient_id=ID, patient_name=NAME,
                             study_uid="1.2.3.4.6", series_uid="1.2.3.4.6.1", sop_uid="1.2.3.4.6.1.1",
                             study_date="20190301")
    ds = pydicom.dcmread(burned)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned)
    (src / "report_Quixote.txt").write_text(REPORT)
    import wfdb

    ecg = np.random.default_rng(1).normal(0, 0.3, (250, 2))
    wfdb.wrsamp("ecg_PHI778899X", fs=500, units=["mV", "mV"], sig_name=["I", "II"], p_signal=ecg, fmt=["16", "16"],
                write_dir=str(src), comments=["Patient: Zebulon Quixote", "DOB: 03/11/1947"],
                base_date=date(2019, 3, 14), base_time=datetime.time(10, 15))
    (src / "notes.docx").write_bytes(b"Zebulon Quixote")  # neither DICOM nor a report: left out
    return tmp_path / "in", tmp_path / "out", vol


def _all_output_bytes(out: Path) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(out)), p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()]


def test_no_planted_phi_survives_and_the_series_reads_the_same(phi_tree, monkeypatch, capsys):
    src, out, vol = phi_tree
    monkeypatch.setenv("MEDMM_DEID_KEY", "test-key")
    before = read_dicom_series(next(src.rglob("ct_*")))
    assert main(["--in", str(src), "--out", str(out)]) == 1  # the burned-in image is refused
    assert "burned.dcm" in capsys.readouterr().err

    outputs = _all_output_bytes(out)
    # CT slices, CR, report, ECG header + signal, audit log (not the burned-in image, not the .docx)
    assert len(outputs) == 4 + 1 + 1 + 2 + 1
    for rel, data in outputs:
        for value in PLANTED + [str(pydicom.dcmread(next(src.rglob("slice0000.dcm"))).StudyInstanceUID)]:
            for variant in {value, value.upper(), value.lower()}:
                for encoded in (variant.encode(), variant.encode("utf-16-le"), variant.encode("utf-16-be")):
                    assert encoded not in data, f"{value!r} left in {rel}"
                assert variant not in rel

    dicoms = {rel: pydicom.dcmread(out / rel) for rel, _ in outputs if rel.endswith(".dcm")}
    ct = sorted((d for d in dicoms.values() if d.Modality == "CT"), key=lambda d: int(d.InstanceNumber))
    cr = next(d for d in dicoms.values() if d.Modality != "CT")
    # UIDs remapped consistently: the series and the study stay whole, and differ from the input
    assert len({d.SeriesInstanceUID for d in ct}) == 1 and len({d.StudyInstanceUID for d in ct}) == 1
    assert len({d.SOPInstanceUID for d in ct}) == 4 and ct[0].SOPInstanceUID == ct[0].file_meta.MediaStorageSOPInstanceUID
    assert cr.StudyInstanceUID != ct[0].StudyInstanceUID
    # one pseudonym and one date shift per patient: the 13-day gap between the studies is kept
    assert cr.PatientID == ct[0].PatientID != ID
    gap = date.fromisoformat(f"{ct[0].StudyDate[:4]}-{ct[0].StudyDate[4:6]}-{ct[0].StudyDate[6:]}") - \
        date.fromisoformat(f"{cr.StudyDate[:4]}-{cr.StudyDate[4:6]}-{cr.StudyDate[6:]}")
    assert gap.days == 13
    # nested sequence kept, the PHI in it replaced; private tags and free text gone
    inner = ct[0].AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0]
    assert inner.PatientID == ct[0].PatientID and str(inner.PatientName) != NAME
    assert "StudyDescription" not in ct[0] and not any(e.tag.is_private for e in ct[0].iterall())
    assert ct[0].PatientIdentityRemoved == "YES" and ct[0].DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    # pixels unchanged; the volume and its geometry read back the same
    for i, d in enumerate(ct):
        assert d.PixelData == pydicom.dcmread(next(src.rglob(f"slice{i:04d}.dcm"))).PixelData
    after = read_dicom_series([out / rel for rel, d in dicoms.items() if d.Modality == "CT"])
    np.testing.assert_array_equal(after.array, before.array)
    np.testing.assert_allclose(after.affine, before.affine)
    np.testing.assert_array_equal(before.array, vol)

    report = next((out / rel).read_text() for rel, _ in outputs if rel.endswith(".txt"))
    assert "No pleural effusion" in report and "[NAME]" in report and "[PHONE]" in report and "[DATE]" in report

    from medmm.io.ecg import read_ecg

    hea = next(out / rel for rel, _ in outputs if rel.endswith(".hea"))
    before_ecg, after_ecg = read_ecg(src / "QUIXOTE_ZEBULON_PHI778899X/ecg_PHI778899X.hea"), read_ecg(hea)
    np.testing.assert_array_equal(after_ecg.signal, before_ecg.signal)  # samples unchanged
    assert after_ecg.fs == 500

    audit = [json.loads(line) for line in (out / AUDIT_NAME).read_text().splitlines()]
    written = [a for a in audit if a["status"] == "written" and a["kind"] == "dicom"]
    assert len(written) == 5 and {a["status"] for a in audit} == {"written", "refused"}
    assert written[0]["actions"]["removed:private"] >= 3 and written[0]["actions"]["removed:StudyDescription"] == 1
    assert all(v > 0 for a in written for v in a["actions"].values())


def test_same_key_same_pseudonyms_and_burned_in_only_when_allowed(phi_tree, tmp_path, monkeypatch):
    src, out, _ = phi_tree
    key = tmp_path / "key"
    key.write_text("another-secret")
    assert main(["--in", str(src), "--out", str(out), "--key-file", str(key), "--allow-burned-in"]) == 0
    assert main(["--in", str(src), "--out", str(tmp_path / "again"), "--key-file", str(key),
                 "--allow-burned-in"]) == 0
    first, second = _all_output_bytes(out), _all_output_bytes(tmp_path / "again")
    assert [r for r, _ in first] == [r for r, _ in second]
    for (rel, a), (_, b) in zip(first, second):
        if rel.endswith(".dcm"):
            da, db = pydicom.dcmread(out / rel), pydicom.dcmread(tmp_path / "again" / rel)
            assert (da.PatientID, da.SOPInstanceUID, da.StudyDate) == (db.PatientID, db.SOPInstanceUID, db.StudyDate)
    burned = [pydicom.dcmread(out / r) for r, _ in first if r.endswith(".dcm")]
    flagged = [d for d in burned if d.get("BurnedInAnnotation") == "YES"]
    assert len(flagged) == 1 and "PatientIdentityRemoved" not in flagged[0]  # not claimed identity-free
    assert main(["--in", str(src), "--out", str(src / "inside")]) == 2


def test_report_scrubber_rules():
    from medmm.cohort.deid_text import ReportScrubber

    text, counts = ReportScrubber().scrub(
        "Pt: John Smith seen 14 March 2021, MR# 00123456, call 212-555-0143. Signed by: Ann Lee. "
        "FINDINGS: Mild cardiomegaly. No effusion since the prior of Jan 2020.")
    for phi in ("John", "Smith", "14 March 2021", "00123456", "212-555-0143", "Ann Lee", "Jan 2020"):
        assert phi not in text
    assert "Mild cardiomegaly. No effusion" in text
    assert counts["NAME"] == 2 and counts["DATE"] == 2 and counts["MRN"] == 1 and counts["PHONE"] == 1
