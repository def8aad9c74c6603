"""De-identify, then ingest: the hospital-style export (reports named by accession number)
de-identified for ``cohorts/hospital_export_example.yaml`` is ingested by that same spec
with the same links, each key mapped to its pseudonym, and no original identifier left in
any output path or byte."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.uid import UID

from medmm.cohort.deid_dicom import DicomDeidentifier
from medmm.cohort.ingest import ingest
from medmm.cohort.pseudonym import pseudonym, pseudonym_uid
from medmm.cohort.spec import load_cohort_spec
from medmm.io.errors import MedmmInputError
from medmm.workflows.deid.run import pseudonymous_path, run
from tests.cohort import replicas

REPO = Path(__file__).resolve().parents[3]
SPEC = REPO / "cohorts/hospital_export_example.yaml"
KEY = b"link-key-test"


def _identifiers(root: Path) -> set[str]:
    """Every patient ID, accession number, instance UID and person name in the export's headers
    (of five characters or more: pydicom's files have StudyIDs such as '2')."""
    found = set()
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix == ".txt":
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)

        def grab(_, elem):
            if elem.keyword in ("PatientID", "AccessionNumber", "StudyID") and elem.value:
                found.add(str(elem.value))
            elif elem.VR == "UI" and elem.value and not str(elem.value).startswith("1.2.840.10008."):
                found.add(str(elem.value))  # not the standard's own UIDs
            elif elem.VR == "PN" and elem.value:
                found.add(str(elem.value))  # whole (dicognito's stand-in names share common words)
        ds.walk(grab)
    return {v for v in found if len(v) >= 5}


def _keys(table: pd.DataFrame, modality: str) -> set[tuple[str, str, str]]:
    rows = table[table["modality"] == modality]
    return set(zip(rows["path"].map(lambda p: Path(p).name.split(".")[0]), rows["study_id"], rows["patient_id"]))


def test_the_spec_that_links_the_export_links_its_deidentified_copy(hospital_export, tmp_path):
    out = tmp_path / "deid"
    outcome = run(hospital_export, out, KEY, spec=SPEC)
    assert outcome.exit_code == 1 and outcome.summary_counts["dicom_unreadable"] == 1  # the cut CR
    assert outcome.summary_counts["dicomdir_left_out"] == 1

    spec = load_cohort_spec(SPEC)
    raw_stats = ingest(spec, hospital_export, tmp_path / "raw.parquet", workers=1)
    deid_stats = ingest(spec, out, tmp_path / "deid.parquet", workers=1)
    assert raw_stats.n_links == deid_stats.n_links == 13  # 12 reports by accession, the ECG by time
    assert deid_stats.dropped["unlinked"] == raw_stats.dropped["unlinked"] == {"report": 2}

    # each link is the raw one, every key replaced by its keyed pseudonym
    raw, deid = pd.read_parquet(tmp_path / "raw.parquet"), pd.read_parquet(tmp_path / "deid.parquet")
    assert len(deid) == len(raw)
    assert _keys(deid, "report") == {(pseudonym(acc, KEY), pseudonym_uid(study, KEY), pseudonym(patient, KEY))
                                     for acc, study, patient in _keys(raw, "report")}
    columns = ["study_id", "patient_id", "linked_from"]
    for modality in ("xray", "ecg"):
        expected = {(pseudonym_uid(study, KEY), pseudonym(patient, KEY), linked and pseudonym_uid(linked, KEY))
                    for study, patient, linked in raw.loc[raw["modality"] == modality, columns].itertuples(
                        index=False, name=None)}
        assert set(deid.loc[deid["modality"] == modality, columns].itertuples(index=False, name=None)) == expected

    # no original identifier in any output path or byte (headers, reports, audit log)
    identifiers = _identifiers(hospital_export)
    assert {"ACC1001", "HOSP9999"} <= identifiers and len(identifiers) > 60
    outputs = [p for p in out.rglob("*") if p.is_file()]
    assert len(outputs) == 17 + 15 + 1  # DICOM written, reports (and the README), audit log
    for path in outputs:
        rel, data = path.relative_to(out).as_posix(), path.read_bytes()
        for value in identifiers:
            assert value not in rel and value.lower() not in rel.lower(), f"an identifier in {rel}"
            assert value.encode() not in data and value.lower().encode() not in data.lower(), \
                f"an identifier in {rel}"
    # the layout names of the spec's patterns are kept, every other name is a pseudonym
    assert {p.relative_to(out).parts[0] for p in outputs} == {"dicom", "reports", "deid_audit.jsonl"}


def test_one_value_one_pseudonym_across_patients(tmp_path):
    paths = [replicas.write_cxr(tmp_path / f"{p}.dcm", p, "s", 1, replicas.datetime(2024, 1, 1 + k),
                                accession="SHARED01") for k, p in enumerate(["P1", "P2"])]
    before = [pydicom.dcmread(p) for p in paths]
    after = [pydicom.dcmread(p) for p in paths]
    deid = DicomDeidentifier(KEY)
    for ds in after:
        deid.deidentify(ds)
    # one accession number under two patients: one pseudonym (dicognito's own are per patient)
    assert after[0].AccessionNumber == after[1].AccessionNumber == pseudonym("SHARED01", KEY)
    for old, new in zip(before, after):
        assert new.PatientID == pseudonym(old.PatientID, KEY) != old.PatientID
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            uid = UID(new[keyword].value)
            assert uid == pseudonym_uid(old[keyword].value, KEY) and uid.is_valid and uid.startswith("2.25.")
        assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
        assert new.SOPClassUID == old.SOPClassUID  # what the object is stays
        assert new.file_meta.TransferSyntaxUID == old.file_meta.TransferSyntaxUID


def test_names_map_to_the_pseudonyms_their_values_get_in_headers():
    rel = Path("HOSP0001/1.2.840.10008.99.7/ACC1001.dcm")
    assert pseudonymous_path(KEY, rel) == Path(pseudonym("HOSP0001", KEY), pseudonym_uid("1.2.840.10008.99.7", KEY),
                                               pseudonym("ACC1001", KEY) + ".dcm")
    # a UID-named report keeps no digit of the UID; a dotted name is pseudonymised whole
    assert pseudonymous_path(KEY, Path("1.2.840.10008.99.7.txt")).name == pseudonym_uid("1.2.840.10008.99.7", KEY) \
        + ".txt"
    assert pseudonymous_path(KEY, Path("John.Doe.DCM")).name == pseudonym("John.Doe", KEY) + ".DCM"
    assert pseudonymous_path(KEY, Path("reports/x.txt"), frozenset({"reports"})).parts[0] == "reports"


def test_a_spec_literal_that_names_a_patient_is_refused(hospital_export, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.read_text().replace('"reports/*.txt"', '"reports/ACC1001.txt"'))
    with pytest.raises(MedmmInputError, match="holds a patient's name or ID") as caught:
        run(hospital_export, tmp_path / "deid", KEY, spec=spec)
    assert "ACC1001" not in str(caught.value)
    assert not (tmp_path / "deid").exists()
