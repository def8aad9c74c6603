"""A contrastive run's modalities are the cohort's among those its loss uses
(``PretrainConfig.modalities``), resolved before anything is built."""

from __future__ import annotations

import logging

import pytest

from medmm.config.core import ConfigError, build_config
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.preflight import PAIRED_TRAINING_MINIMUM, CohortFacts
from tests.conftest import REPO, TINY_CONFIG

DEFAULT_CONFIG = REPO / "configs/pretrain/default.yaml"


def config(*overrides: str, path=TINY_CONFIG) -> PretrainConfig:
    return build_config(PretrainConfig, path, list(overrides))


def test_an_xray_report_cohort_narrows_pairs_encoders_and_same_label_terms(caplog):
    with caplog.at_level(logging.WARNING, logger="medmm.pretrain"):
        cfg = config(path=DEFAULT_CONFIG).for_cohort(["xray", "report"])
    assert cfg.modalities == ["xray", "report"]
    assert cfg.model.modalities == ["xray", "report"]
    assert cfg.loss.pairs == [("xray", "report")]
    assert cfg.loss.same_label_modalities == ["report"]
    assert "modalities of this run: xray, report (left out with their pairs and evaluation, not in the cohort: ecg)" \
        in caplog.text
    assert cfg.for_cohort(["xray", "report"]) == cfg  # resolving again changes nothing (a resume compares configs)


def test_a_cohort_with_every_modality_keeps_the_configured_run(caplog):
    original = config()
    with caplog.at_level(logging.WARNING, logger="medmm.pretrain"):
        cfg = original.for_cohort(["xray", "ecg", "report", "labs"])  # labs: the model builds no labs encoder
    assert cfg.modalities == ["xray", "ecg", "report"]
    assert cfg.model.modalities == original.model.modalities
    assert cfg.loss.pairs == original.loss.pairs
    assert caplog.text == ""


def test_asking_for_a_modality_the_cohort_lacks_is_an_error():
    with pytest.raises(ConfigError, match=r"^modalities: the cohort has no ecg \(it has xray, report\)$"):
        config("modalities=[xray,ecg,report]").for_cohort(["report", "xray"])
    with pytest.raises(ConfigError, match="the loss contrasts no labs"):
        config("modalities=[xray,labs]").for_cohort(["xray", "report", "labs"])


def test_an_explicit_subset_trains_only_it():
    cfg = config("modalities=[ecg,report]").for_cohort(["xray", "ecg", "report"])
    assert cfg.model.modalities == ["ecg", "report"] and cfg.loss.pairs == [("ecg", "report")]


def test_a_cohort_with_no_pair_of_the_loss_is_an_error():
    with pytest.raises(ConfigError, match="loss.pairs: no pair has both modalities in the cohort, which has xray"):
        config().for_cohort(["xray", "ct"])


def test_symile_keeps_its_modalities_in_the_cohort():
    base = ("model.modalities=[xray,ecg,report,labs]", "loss.name=symile", "loss.modalities=[xray,ecg,labs]")
    cfg = config(*base).for_cohort(["xray", "labs", "report"])
    assert cfg.loss.modalities == ["xray", "labs"] and cfg.model.modalities == ["xray", "labs"]
    with pytest.raises(ConfigError, match="the Symile loss needs two of its modalities"):
        config(*base).for_cohort(["xray", "report"])


def test_a_modality_in_too_few_studies_to_pair_is_left_out_or_refused(caplog):
    facts = CohortFacts(manifest=None, modalities=("ecg", "report", "xray"),
                        studies={"train": 6, "val": 2, "test": 4},
                        studies_with={"xray": {"train": 6, "val": 2, "test": 4},
                                      "report": {"train": 6, "val": 2, "test": 4}, "ecg": {"train": 1}})
    too_few = facts.too_few(("xray", "ecg", "report"), PAIRED_TRAINING_MINIMUM)
    assert too_few == {"ecg": "1 train, 0 val, 0 test studies; pairing needs 2 / 1 / 2"}
    cfg = config()
    with caplog.at_level(logging.WARNING, logger="medmm.pretrain"):
        narrowed = cfg.for_cohort(facts.modalities, too_few=too_few)
    assert narrowed.model.modalities == ["xray", "report"] and narrowed.loss.pairs == [("xray", "report")]
    assert "in too few studies to pair: ecg (1 train, 0 val, 0 test studies; pairing needs 2 / 1 / 2)" in caplog.text
    asked = config("modalities=[xray,ecg]")
    with pytest.raises(ConfigError, match=r"^modalities: ecg is in too few studies \(1 train, 0 val, 0 test"):
        asked.for_cohort(facts.modalities, too_few=too_few)
