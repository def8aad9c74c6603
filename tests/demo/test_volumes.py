"""The CT + MR phantom cohort: plausible anatomy and intensities, DICOM and NIfTI that
agree, an unpaired patient-level split."""

import json

import numpy as np
import pandas as pd
import pytest

from medmm.demo.volumes import CLASSES, make_phantom
from medmm.io.volume import read_dicom_series, read_nifti


@pytest.fixture(scope="module")
def ct_and_mr():
    return {m: make_phantom(m, np.random.default_rng(5), size=32, spacing_mm=9.0) for m in ("ct", "mr")}


def world_centroid(case, cls):
    idx = np.argwhere(case.label == cls)
    return (case.affine[:3, :3] @ idx.mean(0)) + case.affine[:3, 3]


def test_every_organ_is_present_where_it_belongs(ct_and_mr):
    for case in ct_and_mr.values():
        assert set(np.unique(case.label)) == set(range(len(CLASSES)))
        liver, spleen, spine = (world_centroid(case, CLASSES.index(n)) for n in ("liver", "spleen", "spine"))
        assert liver[0] > 20 and spleen[0] < -20  # RAS: liver on the patient's right, spleen left
        assert spine[1] < liver[1] and spine[1] < -30  # spine posterior
        assert (case.label == 1).sum() > (case.label == 3).sum()  # liver larger than spleen


def test_intensities_are_those_of_each_modality(ct_and_mr):
    ct, mr = ct_and_mr["ct"], ct_and_mr["mr"]
    mean = {m: {n: float(c.image[c.label == CLASSES.index(n)].mean()) for n in CLASSES[1:]}
            for m, c in ct_and_mr.items()}
    assert 80 < mean["ct"]["liver"] < 125 and mean["ct"]["kidney"] > mean["ct"]["liver"]
    assert mean["ct"]["spine"] > 250
    assert ct.image.min() <= -990  # air outside the body
    assert mean["mr"]["liver"] > mean["mr"]["kidney"] and mr.image.min() >= 0  # magnitude image
    # The MR bias field: the same tissue differs across the volume by more than noise.
    fat = mr.image[(mr.label == 0) & (mr.image > 600)]
    assert fat.std() > 40


def test_cohort_dicom_equals_nifti_and_split_is_unpaired(tiny_volume_cohort):
    table = pd.read_parquet(tiny_volume_cohort / "manifest.parquet")
    labels = json.loads((tiny_volume_cohort / "labels.json").read_text())
    assert labels["classes"] == list(CLASSES)
    for modality in ("ct", "mr"):
        rows = table[table["modality"] == modality]
        assert set(rows["split"]) >= {"train", "test"}
        row = rows.iloc[0]
        nifti = read_nifti(tiny_volume_cohort / row["path"])
        dicom_row = table[(table["study_id"] == row["study_id"]) & (table["modality"] == f"{modality}_dicom")].iloc[0]
        series = read_dicom_series(tiny_volume_cohort / dicom_row["path"])
        assert series.metadata["modality"] == modality.upper()
        np.testing.assert_allclose(series.affine, nifti.affine, atol=1e-4)
        np.testing.assert_array_equal(series.array, nifti.array)
    ct_patients = set(table[table["modality"] == "ct"]["patient_id"])
    mr_patients = set(table[table["modality"] == "mr"]["patient_id"])
    assert not ct_patients & mr_patients
