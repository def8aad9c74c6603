"""``python -m medmm.pipelines.segment`` end to end on the tiny phantom cohort: both
variants trained and scored in one MLflow run, masks that overlay their source image
(affine equal to the input's), inference from NIfTI and from a DICOM series, bad input
skipped and counted, config errors exit 2; one-modality models, mixed batches and the matched
plain head through the same command."""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmm.config.core import build_config
from medmm.io.volume import read_dicom_series, read_nifti
from medmm.pipelines.segment import main
from medmm.workflows.segment.config import SegmentConfig
from medmm.workflows.segment.run import infer, load_trained, train
from tests.workflows.segment.conftest import TINY_SEG_CONFIG, seg_overrides


@pytest.mark.slow
def test_train_tracks_both_variants_and_masks_overlay_their_source(trained, tiny_volume_cohort):
    from mlflow.tracking import MlflowClient

    outcome, tmp = trained
    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.run_id)
    metrics = run.data.metrics
    for variant in ("text", "none"):
        for modality in ("ct", "mr"):
            assert 0.0 <= metrics[f"test.{variant}.{modality}.mean.dice"] <= 1.0
            assert metrics[f"test.{variant}.{modality}.mean.hd95"] >= 0.0
        assert f"{variant}.train_loss.ct" in metrics and f"{variant}.train_loss.mr" in metrics
    assert run.data.params["variants"] == '["text", "none"]'
    assert "manifest_sha256" in run.data.tags and "metric_policy" in run.data.tags
    assert "| CT | **mean** |" in outcome.table
    cases_json = client.download_artifacts(outcome.run_id, "results/test_cases.json", str(tmp))
    test_cases = json.loads(open(cases_json).read())["test_cases"]
    assert test_cases
    for case in test_cases:
        mask_path = client.download_artifacts(outcome.run_id, f"masks/text/{case['case']}.nii.gz", str(tmp))
        mask, source = nib.load(mask_path), nib.load(tiny_volume_cohort / case["source"])
        assert mask.shape == source.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(mask.affine, source.affine)


@pytest.mark.slow
def test_infer_writes_masks_with_the_input_affine_from_nifti_and_dicom(trained, tiny_volume_cohort, tmp_path):
    outcome, _ = trained
    table = pd.read_parquet(tiny_volume_cohort / "manifest.parquet")
    row = table[table["modality"] == "ct"].iloc[0]
    nifti = tiny_volume_cohort / row["path"]
    dicom = tiny_volume_cohort / table[(table["study_id"] == row["study_id"])
                                       & (table["modality"] == "ct_dicom")].iloc[0]["path"]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, [
        f"tracking.uri={outcome.tracking_uri}", f"infer.run_id={outcome.run_id}", "infer.variant=text",
        "infer.modality=ct", f"infer.inputs=[{nifti}, {broken}, {dicom}]", f"infer.output_dir={tmp_path / 'out'}"])
    written = infer(cfg)
    assert [p.name for p in written] == ["image_mask.nii.gz", "dicom_mask.nii.gz"]  # the broken file skipped
    from_nifti, from_dicom = (read_nifti(p) for p in written)
    np.testing.assert_array_equal(from_nifti.affine, read_nifti(nifti).affine)
    np.testing.assert_allclose(from_dicom.affine, read_dicom_series(dicom).affine, atol=1e-4)
    # same scan through both readers -> the same mask
    np.testing.assert_array_equal(from_nifti.array, from_dicom.array)


@pytest.mark.slow
def test_a_corrupt_case_is_skipped_and_counted(tiny_volume_cohort, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_volume_cohort, cohort)
    table = pd.read_parquet(cohort / "manifest.parquet")
    victim = table[(table["modality"] == "mr") & (table["split"] == "train")].iloc[0]["path"]
    (cohort / victim).write_bytes(b"\x1f\x8b truncated")
    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, seg_overrides(cohort, tmp_path, "trainer.max_steps=2",
                                                                     "variants=[none]", "save_test_masks=false"))
    outcome = train(cfg)
    assert outcome.n_skipped == 1
    from mlflow.tracking import MlflowClient

    assert MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data.metrics["data.n_skipped_cases"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_a_one_modality_model_trains_and_is_scored_on_that_modality_only(modality, tiny_volume_cohort, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, seg_overrides(
        tiny_volume_cohort, tmp_path, f"data.modalities=[{modality}]", "variants=[none]", "trainer.max_steps=2",
        "save_test_masks=false"))
    outcome = train(cfg)
    metrics = MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data.metrics
    other = "mr" if modality == "ct" else "ct"
    assert metrics[f"data.n_train.{modality}"] > 0 and f"data.n_train.{other}" not in metrics
    assert f"none.train_loss.{modality}" in metrics and f"none.train_loss.{other}" not in metrics
    assert f"test.none.{modality}.mean.dice" in metrics
    assert not [k for k in metrics if k.startswith(f"test.none.{other}.")]
    assert {r["modality"] for r in outcome.summary} == {modality}


@pytest.mark.slow
def test_mixed_batches_and_the_matched_plain_head_in_one_run(tiny_volume_cohort, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = build_config(SegmentConfig, TINY_SEG_CONFIG, seg_overrides(
        tiny_volume_cohort, tmp_path, "variants=[text, none_matched]", "trainer.batching=mixed", "trainer.max_steps=4",
        "save_test_masks=false"))
    outcome = train(cfg)
    metrics = MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data.metrics
    text, matched = metrics["text.n_trainable_params"], metrics["none_matched.n_trainable_params"]
    assert abs(matched - text) <= 0.01 * text
    for variant in ("text", "none_matched"):
        assert metrics[f"{variant}.n_optimiser_steps"] == 2  # 4 batches of one modality, a CT + MR pair per step
        assert f"{variant}.train_loss.mixed" in metrics and f"{variant}.train_loss.ct" not in metrics
        assert 0.0 <= metrics[f"test.{variant}.mr.mean.dice"] <= 1.0
    model, _, _ = load_trained(outcome.run_id, "none_matched", outcome.tracking_uri)  # rebuilt to the logged size
    assert sum(p.numel() for p in model.parameters()) == matched


def test_config_errors_exit_2(capsys):
    assert main(["train", "--config", str(TINY_SEG_CONFIG), "model.backbone=vgg"]) == 2
    assert "model.backbone" in capsys.readouterr().err
    assert main(["train", "--config", str(TINY_SEG_CONFIG), "trainer.batching=shuffled"]) == 2
    assert "trainer.batching" in capsys.readouterr().err
    assert main(["infer", "--config", str(TINY_SEG_CONFIG), "tracking.uri=sqlite:///:memory:"]) == 2
