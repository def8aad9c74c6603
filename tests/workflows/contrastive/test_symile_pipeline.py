"""Pretraining with Symile, missing modalities, labs and GradCache, end to end on a tiny
demo cohort whose train/val studies lack 30% of ECGs and reports."""

from __future__ import annotations

import numpy as np
import pytest

from medmm.config.core import build_config
from medmm.workflows.contrastive.config import PretrainConfig
from tests.conftest import TINY_CONFIG, iu_source, tiny_overrides


@pytest.fixture(scope="module")
def missing_cohort(tmp_path_factory):
    from medmm.demo.generator import build_demo_cohort

    root = tmp_path_factory.mktemp("missing") / "demo"
    build_demo_cohort(root, n_studies=60, seed=2, workers=1, iu_source=iu_source(),
                      missing={"ecg": 0.3, "report": 0.3, "labs": 0.2})
    return root


def test_generator_drops_modalities_of_train_and_val_only(missing_cohort):
    from medmm.cohort.manifest import Manifest

    studies = Manifest.load(missing_cohort).studies()
    train_val = studies[studies["split"] != "test"]
    assert train_val["ecg"].isna().any() and train_val["report"].isna().any()
    assert studies["xray"].notna().all()
    assert studies.loc[studies["split"] == "test", ["ecg", "report"]].notna().all().all()


@pytest.mark.slow
def test_symile_pretraining_with_missing_modalities_labs_and_grad_cache(missing_cohort, tmp_path):
    from medmm.data.datamodule import PretrainDataModule
    from medmm.workflows.contrastive.run import run

    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(
        missing_cohort, tmp_path, "loss.name=symile", "model.modalities=[xray,ecg,report,labs]",
        "loss.modalities=[xray,ecg,labs,report]", "model.labs.hidden=[16,32]", "trainer.max_epochs=1",
        "trainer.grad_cache_chunk=6"))
    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["labs"].shape[1] == 12 and set(batch["present"]) == {"xray", "ecg", "report", "labs"}
    assert float(batch["labs"][:, :6].min()) >= 0 and float(batch["labs"][:, :6].max()) <= 1
    assert (~np.asarray(dm.cohort.present["ecg"])).sum() > 0 and (dm.cohort.labels < 0).any()
    outcome = run(cfg)
    assert np.isfinite(outcome.metrics["xray_to_report.R@1"])
    assert 0.0 <= outcome.metrics["xray_from_ecg-labs.acc10"] <= 1.0  # Symile-MIMIC's task, chance 0.1
