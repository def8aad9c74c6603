"""Cohort ingest over small replicas of each public layout, in real file formats."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medmm.cohort.ingest import ingest, sidecar_path
from medmm.cohort.manifest import file_sha256
from medmm.cohort.spec import load_cohort_spec
from tests.cohort import replicas

REPO = Path(__file__).resolve().parents[2]


def run(name: str, root: Path, workers: int = 1) -> tuple[pd.DataFrame, object]:
    stats = ingest(load_cohort_spec(REPO / "cohorts" / f"{name}.yaml"), root, root / "manifest.parquet",
                   workers=workers, chunk=2)
    return pd.read_parquet(root / "manifest.parquet"), stats


def studies_of(table: pd.DataFrame) -> dict[str, set[str]]:
    return {s: set(g["modality"]) for s, g in table.groupby("study_id")}


def test_mimic_cxr_groups_by_content_patient_study_series_and_reads_only_new_files(tmp_path):
    replicas.mimic_cxr(tmp_path)
    table, stats = run("mimic_cxr", tmp_path, workers=2)  # the process pool
    xr = table[table["modality"] == "xray"]
    # the file without extension or preamble is DICOM by content; notes.dcm is not
    assert sorted(Path(p).name for p in xr["path"]) == ["aaaa1111.dcm", "bbbb2222", "cccc3333.dcm", "dddd4444.dcm"]
    assert set(table["patient_id"]) == {"10000032", "10000033"}
    assert studies_of(table) == {"50000001": {"xray", "report"}, "50000002": {"xray", "report"},
                                 "50000003": {"xray", "report"}}
    assert xr[xr["study_id"] == "50000001"]["series_id"].nunique() == 2  # two series from the headers
    files = pd.read_parquet(sidecar_path(tmp_path / "manifest.parquet"))
    assert (files.loc[files["path"].str.endswith("notes.dcm"), "rule"] == -1).all()
    row = table.iloc[0]
    assert file_sha256(tmp_path / row["path"]) == row["sha256"]
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    assert stats.n_files_read == stats.n_files_seen and stats.n_files_reused == 0
    assert not list(tmp_path.glob(".ingest-*")) and not list(tmp_path.glob(".*.tmp"))  # working files removed

    replicas.write_cxr(tmp_path / "files/p10/p10000034/s50000004/eeee5555.dcm", "10000034", "s4", 1, "21800606")
    (tmp_path / "files/p10/p10000034/s50000004.txt").write_text("IMPRESSION: Small left effusion.\n")
    again, stats2 = run("mimic_cxr", tmp_path, workers=2)
    assert stats2.n_files_read == 2 and stats2.n_files_reused == stats.n_files_seen
    assert "50000004" in set(again["study_id"])
    old = again[again["study_id"] != "50000004"].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, table.reset_index(drop=True))  # splits of old patients did not move

    report = tmp_path / "files/p10/p10000033/s50000003.txt"
    report.write_text("IMPRESSION: changed.\n")
    os.utime(report, ns=(report.stat().st_atime_ns, report.stat().st_mtime_ns + 10**9))
    third, stats3 = run("mimic_cxr", tmp_path)
    assert stats3.n_files_read == 1
    assert third.loc[third["path"].str.endswith("s50000003.txt"), "sha256"].iloc[0] == file_sha256(report)


def test_symile_mimic_links_the_nearest_ecg_within_24h(tmp_path):
    replicas.mimic_cxr(tmp_path / "mimic-cxr")
    replicas.mimic_iv_ecg(tmp_path / "mimic-iv-ecg")
    table, stats = run("symile_mimic", tmp_path)
    ecg = table[table["modality"] == "ecg"].set_index("study_id")["linked_from"]
    # s50000001 (2180-01-01 08:30): ECG 40000001 at 10:00 (1.5 h); 40000002 (2 days later) not
    # s50000003 (2180-05-05 09:00): 40000003 at 23:00 (14 h) beats 40000004 the day before (30 h)
    assert ecg.to_dict() == {"50000001": "40000001", "50000003": "40000003"}
    # s50000002 has no ECG within 24 h: dropped (required xray + ecg), as are ECG-only studies
    assert studies_of(table) == {"50000001": {"xray", "report", "ecg"}, "50000003": {"xray", "report", "ecg"}}
    assert stats.n_links == 2 and stats.n_dropped_studies == 5


def test_mimic_iv_ecg_and_machine_measurements(tmp_path):
    replicas.mimic_iv_ecg(tmp_path)
    table, _ = run("mimic_iv_ecg", tmp_path)
    assert studies_of(table) == {s: {"ecg", "ecg_measurements"} for s in ("40000001", "40000002", "40000003",
                                                                          "40000004")}
    ecg = table[table["modality"] == "ecg"].set_index("study_id")
    assert ecg.loc["40000003", "time"] == "2180-05-05T23:00:00"
    assert ecg.loc["40000001", "patient_id"] == "10000032"
    # a WFDB record's hash covers its .dat too
    hea = tmp_path / ecg.loc["40000001", "path"]
    assert ecg.loc["40000001", "sha256"] == file_sha256(hea, (hea.with_suffix(".dat"),))


def test_ptbxl_takes_patients_from_the_table(tmp_path):
    replicas.ptbxl(tmp_path)
    table, _ = run("ptbxl", tmp_path)
    assert dict(zip(table["study_id"], table["patient_id"])) == {"1": "15709", "2": "13243", "3": "15709"}
    assert table.groupby("patient_id")["split"].nunique().max() == 1


def test_chexpert_study_ids_are_unique_across_patients(tmp_path):
    replicas.chexpert(tmp_path)
    table, _ = run("chexpert", tmp_path)
    assert set(table["study_id"]) == {"patient00001/study1", "patient00001/study2", "patient00002/study1",
                                      "patient64541/study1"}
    assert table[table["study_id"] == "patient00001/study1"]["series_id"].tolist() == ["view1_frontal",
                                                                                      "view2_lateral"]


def test_tcga_slides_bags_genomics_and_survival_join_per_patient(tmp_path):
    replicas.tcga(tmp_path)
    table, stats = run("tcga", tmp_path)
    assert studies_of(table) == {"TCGA-A1-A0SB-01": {"wsi", "genomics", "clinical"},
                                 "TCGA-A2-A0CM-01": {"wsi", "genomics", "clinical"}}
    gen = table[table["modality"] == "genomics"].set_index("patient_id")["row_key"]
    assert gen.to_dict() == {"TCGA-A1-A0SB": "TCGA-A1-A0SB-01", "TCGA-A2-A0CM": "TCGA-A2-A0CM-01"}
    assert stats.n_dropped_studies == 1  # TCGA-ZZ-ZZZZ has genomics but no slide


def test_amos_and_btcv_volumes_with_labels(tmp_path):
    replicas.amos(tmp_path / "amos")
    table, _ = run("amos", tmp_path / "amos")
    assert studies_of(table) == {"amos_0001": {"ct", "label"}, "amos_0507": {"mr", "label"}}  # 0002 lacks a label
    replicas.btcv(tmp_path / "btcv")
    table, _ = run("btcv", tmp_path / "btcv")
    assert studies_of(table) == {"0001": {"ct", "label"}, "0002": {"ct", "label"}}


def test_demo_cohort_ingest_matches_its_generator(tiny_cohort, tmp_path):
    ingest(load_cohort_spec(REPO / "cohorts/demo.yaml"), tiny_cohort, tmp_path / "m.parquet", workers=1)
    table = pd.read_parquet(tmp_path / "m.parquet")
    generated = pd.read_parquet(tiny_cohort / "manifest.parquet")
    cols = ["patient_id", "study_id", "modality", "path", "sha256"]
    files = table[table["modality"] != "labs"][cols].sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(files, generated[cols].sort_values(cols).reset_index(drop=True))
    assert (table["modality"] == "labs").sum() == generated["study_id"].nunique()


def test_unreadable_files_are_counted_not_fatal(tmp_path):
    replicas.ptbxl(tmp_path)
    (tmp_path / "records500/00000/00009_hr.hea").write_text("this is not a WFDB header\n")
    table, stats = run("ptbxl", tmp_path)
    assert len(table) == 3 and stats.n_problems == 1
    files = pd.read_parquet(sidecar_path(tmp_path / "manifest.parquet"))
    assert files.loc[files["path"].str.contains("00009"), "problem"].iloc[0]


def test_cli_writes_the_manifest_and_rejects_a_bad_spec(tmp_path, capsys):
    from medmm.pipelines.ingest import main

    replicas.btcv(tmp_path / "btcv")
    out = tmp_path / "m.parquet"
    assert main(["--spec", str(REPO / "cohorts/btcv.yaml"), "--root", str(tmp_path / "btcv"), "--out", str(out),
                 "--workers", "1"]) == 0
    assert len(pd.read_parquet(out)) == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nroot: .\nmodalities: [ct]\nfiles: [{modality: mr, format: nifti}]\n")
    assert main(["--spec", str(bad), "--root", str(tmp_path)]) == 2
    assert "not listed in 'modalities'" in capsys.readouterr().err
    assert main(["--spec", str(REPO / "cohorts/ptbxl.yaml"), "--root", str(tmp_path / "btcv")]) == 2
    assert "ptbxl_database.csv" in capsys.readouterr().err
