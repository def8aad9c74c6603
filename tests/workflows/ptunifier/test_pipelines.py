"""End to end on the tiny cohort: PTUnifier pretraining through the pretrain pipeline
(MLflow, export), then every downstream task through the finetune pipeline, from a
PTUnifier and from a contrastive checkpoint."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from medmm.pipelines.pretrain import COMMAND as PRETRAIN
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig
from tests.conftest import PTU_TINY, REPO, TINY_CONFIG, finetune_cli, last_finetune_run


def test_pretrain_pipeline_picks_the_schema_by_kind(capsys):
    from medmm.pipelines.ptunifier_pretrain import main as ptunifier_main
    from medmm.workflows.contrastive.config import PretrainConfig

    assert PRETRAIN.schema_for(PTU_TINY, []) is PTUnifierPretrainConfig
    assert PRETRAIN.schema_for(REPO / "configs/pretrain/default.yaml", []) is PretrainConfig
    assert PRETRAIN.schema_for(None, []) is PretrainConfig
    assert PRETRAIN.schema_for(None, ["kind=ptunifier"]) is PTUnifierPretrainConfig
    assert PRETRAIN.schema_for(PTU_TINY, ["kind=contrastive"]) is PretrainConfig
    assert PRETRAIN.main(lambda cfg, args: "", ["--config", str(PTU_TINY), "model.prompts.pool=3"]) == 2
    assert "unknown config key 'model.prompts.pool'" in capsys.readouterr().err
    assert ptunifier_main(["--config", str(PTU_TINY), "model.prompts.pool=3"]) == 2
    assert "unknown config key 'model.prompts.pool'" in capsys.readouterr().err
    assert PRETRAIN.main(lambda cfg, args: "", ["kind=symile"]) == 2
    assert "kind: 'symile' is not one of contrastive, ptunifier" in capsys.readouterr().err


@pytest.mark.slow
def test_ptunifier_pretraining_is_tracked_and_exported(ptunifier_pretrained):
    run = ptunifier_pretrained["run"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "ptunifier" and run.data.params["model.prompts.mode"] == "pool"
    for key in ("train/loss_epoch", "val/itc", "val/itm", "val/mlm", "test.xray_to_report.R_at_1",
                "test.report_to_xray.R_at_10", "data.n_train_studies"):
        assert key in run.data.metrics, key
    client = MlflowClient(ptunifier_pretrained["uri"])
    names = {a.path for a in client.list_artifacts(run.info.run_id, "model_export")}
    assert names == {"model_export/model.safetensors", "model_export/config.yaml"}
    assert (ptunifier_pretrained["export"] / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("task, metric", [
    ("image_classification", "test.auroc.macro"), ("text_classification", "test.auroc.macro"),
    ("retrieval", "test.xray_to_report.R_at_5"), ("vqa", "test.closed_accuracy")])
def test_every_downstream_task_from_the_ptunifier_checkpoint(ptunifier_finetunes, task, metric):
    run = ptunifier_finetunes[task]  # the session's runs (tests/conftest.py); retrieval from models:/...@champion
    assert run.data.tags["pretrained_family"] == "ptunifier" and run.data.tags["prompts_trainable"] == "false"
    assert 0.0 <= run.data.metrics[metric] <= 1.0
    assert run.data.metrics["data.n_train_studies_labelled"] > 0
    if task == "vqa":
        assert "test.closed_balanced_accuracy" in run.data.metrics and "test.abnormal_exact_match" in run.data.metrics


@pytest.mark.slow
def test_contrastive_checkpoint_retrieval_and_linear_probe(ptunifier_pretrained, tiny_cohort, capsys):
    from medmm.pipelines.pretrain import main as pretrain_main

    tmp = ptunifier_pretrained["tmp"]
    assert pretrain_main(["--config", str(TINY_CONFIG), *ptunifier_pretrained["overrides"], "trainer.max_epochs=1",
                          "trainer.limit_train_batches=2", "tracking.register_model=true",
                          "tracking.registered_name=medmm-more-tiny"]) == 0
    client = MlflowClient(ptunifier_pretrained["uri"])
    run = client.search_runs([client.get_experiment_by_name("medmm-tiny").experiment_id],
                             filter_string="params.`model.name` = 'more'")[0]
    uri = f"runs:/{run.info.run_id}/model"
    assert finetune_cli(ptunifier_pretrained, uri, "retrieval", "tracking.register_model=false") == 0
    assert last_finetune_run(ptunifier_pretrained["uri"], "retrieval").data.tags["pretrained_family"] == "more"
    assert finetune_cli(ptunifier_pretrained, uri, "image_classification", "backbone=frozen", "head=linear",
                        "tracking.register_model=false") == 0
    assert "test.auroc.macro" in last_finetune_run(ptunifier_pretrained["uri"], "image_classification").data.metrics
    assert finetune_cli(ptunifier_pretrained, uri, "vqa") == 2  # no fusion: a clear error, not a traceback
    assert "needs a PTUnifier checkpoint" in capsys.readouterr().err
    assert finetune_cli(ptunifier_pretrained, tmp / "nowhere", "retrieval") == 2
    assert "no such folder, and not an MLflow URI" in capsys.readouterr().err
