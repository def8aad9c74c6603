"""Cohort ingest of every shipped spec over a replica of its dataset's layout, in real file
formats: what is found, linked and dropped (by category), and the ids, times and links
each dataset's own mapping tables give."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmm.cohort.captions import caption_from_labels
from medmm.cohort.ingest import IngestStats, ingest, sidecar_path, unreadable_path
from medmm.cohort.manifest import Manifest, file_sha256
from medmm.cohort.spec import load_cohort_spec
from medmm.data.decoded_cohort import decode_cohort, load_xray_input
from tests.cohort import replicas

REPO = Path(__file__).resolve().parents[2]
LATERALS = {"ViewPosition=LL": 7, "ViewPosition=LATERAL": 6}

# Per replica: files a rule matched, patients, studies and rows by modality in the manifest,
# links made, and what was dropped by category and reason (files; studies for the last).
EXPECTED = {
    "mimic_cxr": (40, 12, 13, {"xray": 13, "report": 13}, 13,
                  {"not selected": LATERALS, "lacking a required modality": {"no xray": 1}}),
    "mimic_cxr_jpg": (40, 12, 13, {"xray": 13, "report": 13}, 13,
                      {"not selected": LATERALS, "lacking a required modality": {"no xray": 1}}),
    "mimic_iv_ecg": (14, 12, 14, {"ecg": 14, "ecg_measurements": 14, "report": 14}, 28, {}),
    "ptbxl": (15, 12, 15, {"ecg": 15, "report": 15}, 15, {}),
    "chexpert": (21, 12, 14, {"xray": 14, "report": 14}, 14,
                 {"not selected": {"Frontal/Lateral=Lateral": 7, "report row Frontal/Lateral=Lateral": 7}}),
    "tcga": (12, 12, 12, {"wsi": 12, "genomics": 12, "clinical": 12}, 24,
             {"lacking a required modality": {"no wsi": 1}}),
    "amos": (27, 13, 13, {"ct": 10, "mr": 3, "label": 13}, 0, {"lacking a required modality": {"no label": 1}}),
    "btcv": (24, 12, 12, {"ct": 12, "label": 12}, 0, {}),
    "symile_mimic": (54, 11, 11, {"xray": 11, "report": 11, "ecg": 11}, 24,
                     {"not selected": LATERALS, "lacking a required modality": {"no xray": 15, "no ecg": 3}}),
    "hospital_export_example": (34, 12, 12, {"xray": 12, "report": 12, "ecg": 1}, 13, {
        "unreadable": {"truncated": 1},
        "not selected": {"BodyPartExamined=EXTREMITY": 1, "Modality=(none)": 1, "Modality=CT": 1, "Modality=MR": 1,
                         "Modality=NM": 1},
        "not claimed": {"not DICOM by content": 1}, "unlinked": {"report": 2},
        "lacking a required modality": {"no xray": 1}}),
}


def run(name: str, root: Path, workers: int = 1) -> tuple[pd.DataFrame, IngestStats]:
    stats = ingest(load_cohort_spec(REPO / "cohorts" / f"{name}.yaml"), root, root / "manifest.parquet",
                   workers=workers, chunk=4)
    return pd.read_parquet(root / "manifest.parquet"), stats


def replica(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    root.mkdir()
    replicas.REPLICAS[name](root)
    return root


def studies_of(table: pd.DataFrame) -> dict[str, set[str]]:
    return {s: set(g["modality"]) for s, g in table.groupby("study_id")}


def test_every_shipped_spec_with_file_rules_has_a_replica():
    with_rules = {p.stem for p in (REPO / "cohorts").glob("*.yaml") if load_cohort_spec(p).files}
    assert with_rules - {"demo"} == set(replicas.REPLICAS) == set(EXPECTED)  # demo: its own generator


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replica_figures(name, tmp_path):
    files, patients, studies, rows, links, dropped = EXPECTED[name]
    table, stats = run(name, replica(name, tmp_path))
    assert (stats.n_files_seen, stats.n_patients, stats.n_studies, stats.n_links) == (files, patients, studies, links)
    assert table["modality"].value_counts().to_dict() == rows
    assert stats.dropped == dropped
    assert set(table.drop_duplicates("patient_id")["split"]) == {"train", "val", "test"}  # enough to train on
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    assert table.groupby("study_id")["patient_id"].nunique().max() == 1
    row = table[table["path"].str.len() > 0].iloc[-1]
    assert not row["sha256"] or len(row["sha256"]) == 64


def test_mimic_cxr_ids_from_the_record_and_study_lists_and_only_new_files_read_again(tmp_path):
    root = replica("mimic_cxr", tmp_path)
    table, stats = run("mimic_cxr", root, workers=2)  # the process pool
    first = replicas.mimic_cxr_studies()[0]
    study = table[table["study_id"] == first.study]
    # patient and study from the mapping tables (the header's StudyInstanceUID is not the study_id)
    assert set(study["patient_id"]) == {first.subject} and set(study["modality"]) == {"xray", "report"}
    xray = study[study["modality"] == "xray"].iloc[0]
    assert xray["path"] == f"{first.folder}/{first.dicom_id(0)}.dcm"  # the frontal view; the lateral left out
    assert xray["time"] == first.when.isoformat()  # StudyDate / StudyTime of the header
    assert xray["series_id"].startswith("1.2.826.0.1.3680043.8.498.")  # SeriesInstanceUID of the header
    assert file_sha256(root / xray["path"]) == xray["sha256"]
    assert stats.n_files_read == stats.n_files_seen and stats.n_files_reused == 0
    assert not list(root.glob(".ingest-*")) and not list(root.glob(".*.tmp"))  # working files removed

    again, stats2 = run("mimic_cxr", root)
    assert stats2.n_files_read == 0 and stats2.n_files_reused == stats.n_files_seen
    pd.testing.assert_frame_equal(again, table)

    report = root / f"{first.folder}.txt"
    report.write_text("IMPRESSION: changed.\n")
    os.utime(report, ns=(report.stat().st_atime_ns, report.stat().st_mtime_ns + 10**9))
    third, stats3 = run("mimic_cxr", root)
    assert stats3.n_files_read == 1
    assert third.loc[third["path"] == f"{first.folder}.txt", "sha256"].iloc[0] == file_sha256(report)
    pd.testing.assert_frame_equal(third[third["modality"] == "xray"], table[table["modality"] == "xray"])


def test_symile_mimic_links_the_nearest_ecg_within_24h(tmp_path):
    table, _ = run("symile_mimic", replica("symile_mimic", tmp_path))
    cxr = replicas.mimic_cxr_studies()
    ecgs = {}
    for subject, study, when in replicas.mimic_iv_ecg_records():
        ecgs.setdefault(subject, []).append((study, when))
    linked = table[table["modality"] == "ecg"].set_index("study_id")["linked_from"].to_dict()
    fourth = next(s for s in cxr if s.subject == list(ecgs)[3])
    after, before = ecgs[fourth.subject]  # 1.5 h after the X-ray, 30 h before it
    assert linked[fourth.study] == after[0]
    third = next(s for s in cxr if s.subject == list(ecgs)[2])  # its only ECG is 30 h later
    assert third.study not in set(table["study_id"]) and third.subject not in set(table["patient_id"])
    ecg = table[table["modality"] == "ecg"].iloc[0]
    hea = tmp_path / "symile_mimic" / ecg["path"]
    assert ecg["sha256"] == file_sha256(hea, (hea.with_suffix(".dat"),))  # a WFDB record's hash covers its .dat


def test_mimic_iv_ecg_time_and_measurements_from_its_tables(tmp_path):
    table, _ = run("mimic_iv_ecg", replica("mimic_iv_ecg", tmp_path))
    subject, study, when = replicas.mimic_iv_ecg_records()[0]
    rows = table[table["study_id"] == study].set_index("modality")
    assert set(rows.index) == {"ecg", "ecg_measurements", "report"} and set(rows["patient_id"]) == {subject}
    assert rows.loc["ecg", "time"] == when.isoformat() and rows.loc["ecg_measurements", "row_key"] == study
    assert rows.loc["report", "text"] == "Sinus rhythm"  # the machine statements report_0 ... report_17, blanks left out
    assert Manifest.load(tmp_path / "mimic_iv_ecg").studies().set_index("study_id").loc[study, "report_text"] == \
        "Sinus rhythm"


def test_mimic_cxr_jpg_takes_ids_time_and_view_from_the_metadata_table(tmp_path):
    table, _ = run("mimic_cxr_jpg", replica("mimic_cxr_jpg", tmp_path))
    first = replicas.mimic_cxr_studies()[0]
    xray = table[(table["study_id"] == first.study) & (table["modality"] == "xray")]
    assert xray["path"].tolist() == [f"{first.folder}/{first.dicom_id(0)}.jpg"]  # by dicom_id; the lateral left out
    assert xray["time"].tolist() == [first.when.isoformat()]  # StudyDate + StudyTime (a number: 83000.0)
    assert xray["patient_id"].tolist() == [first.subject]


def test_ptbxl_and_chexpert_patients_and_studies_from_their_tables(tmp_path):
    table, _ = run("ptbxl", replica("ptbxl", tmp_path))
    database = pd.read_csv(tmp_path / "ptbxl/ptbxl_database.csv")
    expected = {str(e): str(int(p)) for e, p in zip(database["ecg_id"], database["patient_id"])}
    assert dict(zip(table["study_id"], table["patient_id"])) == expected  # '15709.0' -> '15709'
    ecgs, reports = table[table["modality"] == "ecg"], table[table["modality"] == "report"]
    assert ecgs["path"].str.startswith("records500/").all() and ecgs["text"].isna().all()
    assert (reports["path"] == "ptbxl_database.csv").all()
    assert set(reports["text"]) == {"sinusrhythmus periphere niederspannung"}  # the 'report' column
    assert set(reports["study_id"]) == set(ecgs["study_id"])

    table, _ = run("chexpert", replica("chexpert", tmp_path))
    assert table["study_id"].str.fullmatch(r"patient\d{5}/study\d").all()  # studyN repeats across patients
    xrays, reports = table[table["modality"] == "xray"], table[table["modality"] == "report"]
    assert xrays["path"].str.endswith("_frontal.jpg").all()
    assert set(reports["study_id"]) == set(xrays["study_id"])  # each frontal image's labels, as its study's report
    labels = pd.read_csv(tmp_path / "chexpert/train.csv").set_index("Path")
    first = reports.iloc[0]
    row = labels.loc[first["row_key"]]
    assert first["text"] == caption_from_labels({c: row[c] for c in replicas.CHEXPERT_LABELS}, first["row_key"])
    assert {"patient64541/study1", "patient64542/study1"} <= set(table["study_id"])  # valid.csv read too


def test_tcga_genomics_and_survival_join_each_slide_study(tmp_path):
    table, _ = run("tcga", replica("tcga", tmp_path))
    assert {frozenset(m) for m in studies_of(table).values()} == {frozenset({"wsi", "genomics", "clinical"})}
    genomics = table[table["modality"] == "genomics"].set_index("patient_id")["row_key"]
    assert genomics.to_dict() == {case: f"{case}-01" for case in replicas.tcga_cases()}
    assert (table.loc[table["modality"] == "wsi", "path"].str.endswith((".svs", ".pt"))).all()


def test_amos_routes_ct_and_mr_by_case_number(tmp_path):
    table, _ = run("amos", replica("amos", tmp_path))
    images = table[table["modality"].isin(["ct", "mr"])].set_index("study_id")["modality"]
    assert all((m == "mr") == (int(s.removeprefix("amos_")) >= 500) for s, m in images.items())
    assert "amos_0401" not in set(table["study_id"])  # imagesTs: no label


def test_demo_cohort_ingest_matches_its_generator(tiny_cohort, tmp_path):
    ingest(load_cohort_spec(REPO / "cohorts/demo.yaml"), tiny_cohort, tmp_path / "m.parquet", workers=1)
    table = pd.read_parquet(tmp_path / "m.parquet")
    generated = pd.read_parquet(tiny_cohort / "manifest.parquet")
    cols = ["patient_id", "study_id", "modality", "path", "sha256"]
    files = table[table["modality"] != "labs"][cols].sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(files, generated[cols].sort_values(cols).reset_index(drop=True))
    assert (table["modality"] == "labs").sum() == generated["study_id"].nunique()


def test_unreadable_files_are_listed_by_reason_not_fatal(tmp_path):
    root = replica("ptbxl", tmp_path)
    dat = root / "records500/00000/00002_hr.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2])
    (root / "records500/00000/00009_hr.hea").write_text("this is not a WFDB header\n")
    table, stats = run("ptbxl", root)
    assert (table["modality"] == "ecg").sum() == 13 and stats.problems == {"truncated": 1, "cannot parse": 1}
    assert (table["modality"] == "report").sum() == 13  # the two records' reports go with their studies
    assert stats.dropped["unreadable"] == {"cannot parse": 1, "truncated": 1}
    listed = pd.read_csv(unreadable_path(root / "manifest.parquet")).set_index("path")
    assert listed.loc["records500/00000/00002_hr.hea", "reason"] == "truncated"
    assert "signal file holds" in listed.loc["records500/00000/00002_hr.hea", "problem"]
    assert listed.loc["records500/00000/00009_hr.hea", "reason"] == "cannot parse"
    files = pd.read_parquet(sidecar_path(root / "manifest.parquet"))
    assert files["problem"].notna().sum() == 2
    dat.unlink()
    _, stats = run("ptbxl", root)
    assert stats.problems == {"missing signal file": 1, "cannot parse": 1}


def test_a_jpeg_cohort_decodes_for_training(tmp_path):
    root = replica("mimic_cxr_jpg", tmp_path)
    run("mimic_cxr_jpg", root)
    manifest = Manifest.load(root)
    cohort = decode_cohort(manifest, image_size=16, ecg_fs=100, workers=1)
    studies = manifest.studies()
    assert len(cohort) == len(studies) == 13 and not cohort.skipped
    i = int(np.flatnonzero(cohort.study_ids == studies["study_id"].iloc[0])[0])
    expected = load_xray_input(root / studies["xray"].iloc[0], 16)
    np.testing.assert_allclose(cohort.xray[i].astype(np.float32), expected, atol=1e-3)  # float16 cache
    assert all(text.strip() for text in cohort.report_text) and not cohort.present["ecg"].any()


def test_cli_summary_and_errors(tmp_path, capsys):
    from medmm.pipelines.ingest import main

    root = replica("btcv", tmp_path)
    out = tmp_path / "m.parquet"
    assert main(["--spec", str(REPO / "cohorts/btcv.yaml"), "--root", str(root), "--out", str(out),
                 "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert len(pd.read_parquet(out)) == 24 and "12 patients, 12 studies, 24 rows" in printed
    assert "files: 27 under the root, 24 matched a rule" in printed and "dropped: nothing" in printed

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nroot: .\nmodalities: [ct]\nfiles: [{modality: mr, format: nifti}]\n")
    assert main(["--spec", str(bad), "--root", str(tmp_path)]) == 2
    assert "not listed in 'modalities'" in capsys.readouterr().err
    assert main(["--spec", str(REPO / "cohorts/ptbxl.yaml"), "--root", str(root)]) == 2
    assert "ptbxl_database.csv" in capsys.readouterr().err

    # the spec of another dataset on this tree: nothing matches, and the error says what the tree holds
    assert main(["--spec", str(REPO / "cohorts/amos.yaml"), "--root", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no file under the root matched any rule; the root holds 27 files (.nii.gz 26, .json 1)" in err
    assert "'images*/amos_*.nii.gz'" in err and "check 'pattern'" in err and len(err.strip().splitlines()) == 1
    # the right spec, pointed one folder too high
    assert main(["--spec", str(REPO / "cohorts/btcv.yaml"), "--root", str(tmp_path), "--out", str(out)]) == 2
    assert "24 files would match one folder further down" in capsys.readouterr().err


def test_a_spec_that_leaves_no_row_is_an_error(tmp_path):
    root = replica("chexpert", tmp_path)
    spec = load_cohort_spec(REPO / "cohorts/chexpert.yaml")
    spec.tables[0].select = {"Frontal/Lateral": ["Oblique"]}
    spec.tables[1].select = {"Frontal/Lateral": ["Oblique"]}
    with pytest.raises(Exception, match="leaves no row for the manifest.*not selected 28 "
                                        r"\(Frontal/Lateral=Frontal 14, Frontal/Lateral=Lateral 7, "
                                        r"report row Frontal/Lateral=Lateral 7\)"):
        ingest(spec, root, root / "manifest.parquet", workers=1)
    assert not (root / "manifest.parquet").exists()
