"""Cohort spec validation: every shipped spec loads, and a wrong one is a one-line error
that names what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmm.cohort.spec import CohortSpec, LinkRule, TableSpec, load_cohort_spec

REPO = Path(__file__).resolve().parents[2]


def spec(**extra) -> CohortSpec:
    return CohortSpec(name="x", root=".", modalities=["xray", "report", "ecg"], **extra)


def test_every_shipped_spec_loads():
    names = {load_cohort_spec(p).name for p in (REPO / "cohorts").glob("*.yaml")}
    assert {"mimic-cxr", "mimic-cxr-jpg", "mimic-iv-ecg", "ptbxl", "chexpert", "tcga", "amos", "btcv",
            "symile-mimic", "demo", "demo_pathology", "hospital-export"} <= names


def test_links_by_key_or_time_and_their_defaults():
    assert LinkRule(anchor="xray", attach="ecg").by == "time"  # specs written before keys still mean time
    assert LinkRule(anchor="xray", attach="ecg").within_hours == 24.0
    assert LinkRule(anchor="xray", attach="report", by="accession").by == "accession"
    with pytest.raises(ValueError, match="within_hours applies to by: time only"):
        LinkRule(anchor="xray", attach="report", by="accession", within_hours=2)
    with pytest.raises(ValueError, match="anchor and attach must differ"):
        LinkRule(anchor="xray", attach="xray", by="study")
    with pytest.raises(ValueError, match="by"):
        LinkRule(anchor="xray", attach="report", by="name")


def test_select_names_dicom_keywords_on_dicom_rules_only():
    rule = {"modality": "xray", "format": "dicom", "select": {"Modality": ["CR", "DX"], "ViewPosition": "PA"}}
    assert spec(files=[rule]).files[0].accepted() == {"Modality": ["CR", "DX"], "ViewPosition": ["PA"]}
    with pytest.raises(ValueError, match="'Modalty' is not a DICOM keyword"):
        spec(files=[{**rule, "select": {"Modalty": "CR"}}])
    with pytest.raises(ValueError, match="select reads DICOM header tags, so it needs format: dicom"):
        spec(files=[{**rule, "format": "image"}])
    with pytest.raises(ValueError, match="accepts no value"):
        spec(files=[{**rule, "select": {"Modality": []}}])


def test_ids_groups_are_known_ones():
    rule = {"modality": "report", "format": "text", "ids": r"reports/(?P<accession>[^/]+)\.txt$"}
    assert spec(files=[rule]).files[0].ids
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['subject'\]; known: patient, study"):
        spec(files=[{**rule, "ids": r"(?P<subject>\d+)"}])


def test_tables_list_files_by_one_key_or_hold_items():
    assert TableSpec(path="m.csv", path_column="path").join_key == "path"
    assert TableSpec(path="m.csv.gz", instance_column="dicom_id").join_key == "instance"
    assert TableSpec(path="m.csv", accession_column="acc", patient_column="mrn").join_key == "accession"
    assert TableSpec(path="m.csv", path_column="p", accession_column="acc", on="accession").join_column == "acc"
    assert TableSpec(path="labs.csv", modality="labs", key_column="id").join_key is None
    with pytest.raises(ValueError, match="give modality .* or the column that names each row's file"):
        TableSpec(path="m.csv", patient_column="mrn")
    with pytest.raises(ValueError, match="on: study_uid needs study_uid_column"):
        TableSpec(path="m.csv", path_column="p", on="study_uid")
    with pytest.raises(ValueError, match="an item table .* lists no files"):
        TableSpec(path="labs.csv", modality="labs", key_column="id", path_column="p")
    with pytest.raises(ValueError, match="text_columns and label_columns make report items: give modality: report"):
        TableSpec(path="labs.csv", modality="labs", key_column="id", text_columns=["note"])
    assert TableSpec(path="labs.csv", modality="labs", key_column="id", select={"x": "y"}).accepted() == {"x": ["y"]}
    assert TableSpec(path="m.csv", path_column="p", time_column=["StudyDate", "StudyTime"]).time_columns() == [
        "StudyDate", "StudyTime"]


def test_every_linked_and_selected_modality_is_listed():
    with pytest.raises(ValueError, match=r"modalities \['ct'\] are used but not listed"):
        spec(links=[{"anchor": "ct", "attach": "report", "by": "accession"}])
