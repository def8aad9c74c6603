"""Report generation checks the pretrained model's encoders before building: ``decoder.use_ecg``
on a model without an ECG encoder is a one-line error, and no run is opened."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from medmm.config.core import ConfigError, build_config
from medmm.workflows.report.config import ReportConfig
from tests.conftest import TINY_REPORT_CONFIG
from tests.workflows.retrieve.test_index_modalities import xray_report_model


def test_encoders_needed_follow_use_ecg():
    cfg = build_config(ReportConfig, TINY_REPORT_CONFIG, ["decoder.use_ecg=true"])
    assert cfg.encoders_needed() == ("xray", "ecg")
    cfg.check_pretrained_encoders(["xray", "ecg", "report"])
    with pytest.raises(ConfigError, match=r"^decoder.use_ecg: the pretrained model has no ecg encoder "
                                          r"\(it encodes xray, report\); set decoder.use_ecg=false"):
        cfg.check_pretrained_encoders(["xray", "report"])
    with pytest.raises(ConfigError, match="needs the pretrained model's xray encoder; the model encodes ecg, report"):
        cfg.check_pretrained_encoders(["ecg", "report"])
    build_config(ReportConfig, TINY_REPORT_CONFIG, ["decoder.use_ecg=false"]).check_pretrained_encoders(
        ["xray", "report"])


def test_use_ecg_on_a_model_without_ecg_fails_before_a_run(tiny_cohort, tmp_path, capsys):
    from medmm.pipelines.report import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "--config", str(TINY_REPORT_CONFIG), f"data.root={tiny_cohort}",
                 f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}", f"tracking.uri={uri}",
                 f"pretrained.source={xray_report_model(tmp_path / 'model')}", "decoder.use_ecg=true"])
    err = capsys.readouterr().err
    assert code == 2 and "decoder.use_ecg: the pretrained model has no ecg encoder" in err
    assert len(err.strip().splitlines()) == 1
    assert not MlflowClient(uri).search_experiments() or not MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()])
