"""The modalities of a retrieval index are those the pretrained model encodes and the cohort
holds (``index.modalities`` unset); asking for one the model has no encoder for is a one-line
error before anything is embedded or a run is opened."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from medmm.config.core import ConfigError, build_config
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.pretrained import build_model, save_pretrained_folder
from medmm.workflows.retrieve.config import IndexConfig, RetrieveConfig
from tests.conftest import TINY_CONFIG, TINY_RETRIEVE_CONFIG


def xray_report_model(folder):
    """A tiny contrastive model with X-ray and report encoders only (as pretraining on an
    X-ray + report cohort builds it), its weights as initialised."""
    cfg = build_config(PretrainConfig, TINY_CONFIG, ["model.modalities=[xray,report]", "loss.pairs=[[xray,report]]"])
    return save_pretrained_folder(build_model("more", cfg), cfg, folder)


def test_unset_modalities_are_the_models_among_the_cohorts():
    assert IndexConfig().resolve(["xray", "report"], ["ecg", "report", "xray"]) == ("xray", "report")
    assert IndexConfig().resolve(["xray", "ecg", "report"], ["report", "xray"]) == ("xray", "report")
    assert IndexConfig(modalities=["report", "xray"]).resolve(["xray", "report"], ["xray", "report"]) == \
        ("report", "xray")


def test_asking_for_what_the_model_or_cohort_lacks_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^index.modalities: the pretrained model has no ecg encoder "
                                          r"\(it encodes xray, report\)$"):
        IndexConfig(modalities=["xray", "ecg"]).resolve(["xray", "report"], ["xray", "ecg", "report"])
    with pytest.raises(ConfigError, match=r"^index.modalities: the cohort has no ecg \(it has report, xray\)$"):
        IndexConfig(modalities=["ecg"]).resolve(["xray", "ecg", "report"], ["xray", "report"])
    with pytest.raises(ConfigError, match="the pretrained model encodes ecg, of which the cohort has none"):
        IndexConfig().resolve(["ecg"], ["xray", "report"])


@pytest.mark.slow
def test_an_xray_report_model_indexes_xray_and_report_and_refuses_ecg(tiny_cohort, tmp_path, capsys):
    from medmm.pipelines.retrieve import main
    from medmm.workflows.retrieve.run import build

    model = xray_report_model(tmp_path / "model")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"data.root={tiny_cohort}", f"data.cache_dir={tmp_path / 'cache'}", f"tracking.uri={uri}",
              f"pretrained.source={model}", f"index.path={tmp_path / 'index'}"]
    # the demo cohort has ECGs; the model has no ECG encoder: no KeyError, an X-ray + report index
    outcome = build(build_config(RetrieveConfig, TINY_RETRIEVE_CONFIG, common))
    meta = json.loads((tmp_path / "index/index.json").read_text())
    assert set(meta["modalities"]) == {"xray", "report"} and not (tmp_path / "index/ecg.faiss").exists()
    run = MlflowClient(uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["index_modalities"] == "xray,report"
    assert "test.xray_to_report.R_at_1" in run.data.metrics
    assert not [k for k in run.data.metrics if "ecg" in k]

    code = main(["build", "--config", str(TINY_RETRIEVE_CONFIG), *common, f"index.path={tmp_path / 'index2'}",
                 "index.modalities=[xray,ecg]"])
    err = capsys.readouterr().err
    assert code == 2 and "index.modalities: the pretrained model has no ecg encoder (it encodes xray, report)" in err
    assert len(err.strip().splitlines()) == 1
    assert len(MlflowClient(uri).search_runs([run.info.experiment_id])) == 1  # no run opened for the refused build
