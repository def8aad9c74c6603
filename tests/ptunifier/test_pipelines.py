"""End to end on the tiny cohort: PTUnifier pretraining through the pretrain pipeline
(MLflow, export), then every downstream task through the finetune pipeline, from a
PTUnifier and from a contrastive checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medmm.config.ptunifier import PTUnifierPretrainConfig
from medmm.pipelines.pretrain import config_class
from tests.conftest import REPO, TINY_CONFIG, tiny_overrides
from tests.ptunifier.conftest import PTU_TINY


def test_pretrain_pipeline_picks_the_schema_by_model_name(capsys):
    from medmm.config.pretrain import PretrainConfig
    from medmm.pipelines.pretrain import main

    assert config_class(PTU_TINY, []) is PTUnifierPretrainConfig
    assert config_class(REPO / "configs/pretrain/default.yaml", []) is PretrainConfig
    assert config_class(None, ["model.name=ptunifier"]) is PTUnifierPretrainConfig
    assert main(["--config", str(PTU_TINY), "model.prompts.pool=3"]) == 2
    assert "unknown config key 'model.prompts.pool'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pretrained(tiny_cohort, tmp_path_factory):
    from medmm.pipelines.pretrain import main

    tmp = tmp_path_factory.mktemp("ptu")
    overrides = tiny_overrides(tiny_cohort, tmp)
    assert main(["--config", str(PTU_TINY), *overrides, "trainer.limit_train_batches=3"]) == 0
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("medmm-tiny").experiment_id])[0]
    export = next(Path(tmp / "runs" / run.info.run_id).glob("export"))
    return {"tmp": tmp, "uri": uri, "run": run, "export": export, "overrides": overrides}


@pytest.mark.slow
def test_ptunifier_pretraining_is_tracked_and_exported(pretrained):
    run = pretrained["run"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "ptunifier" and run.data.params["model.prompts.mode"] == "pool"
    for key in ("train/loss_epoch", "val/itc", "val/itm", "val/mlm", "test.xray_to_report.R_at_1",
                "test.report_to_xray.R_at_10", "data.n_train_studies"):
        assert key in run.data.metrics, key
    client = MlflowClient(pretrained["uri"])
    names = {a.path for a in client.list_artifacts(run.info.run_id, "model_export")}
    assert names == {"model_export/model.safetensors", "model_export/config.yaml"}
    assert (pretrained["export"] / "model.safetensors").is_file()


def _finetune(pretrained, checkpoint, task, *extra):
    from medmm.pipelines.finetune import main

    tmp = pretrained["tmp"]
    over = [f"checkpoint={checkpoint}", f"data.root={pretrained['overrides'][0].split('=', 1)[1]}",
            f"data.cache_dir={tmp / 'cache'}", f"tracking.uri={pretrained['uri']}", f"output_dir={tmp / 'ft'}",
            "epochs=1", "limit_train_batches=2", "data.batch_size=8", f"tracking.run_name={task}", *extra]
    return main(["--config", str(REPO / f"configs/finetune/{task}.yaml"), *over])


def _last_run(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("medmm-finetune")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'",
                              order_by=["attributes.start_time DESC"])[0]


@pytest.mark.slow
@pytest.mark.parametrize("task, metric", [
    ("image_classification", "test.auroc.macro"), ("text_classification", "test.auroc.macro"),
    ("retrieval", "test.xray_to_report.R_at_5"), ("vqa", "test.closed_accuracy")])
def test_every_downstream_task_from_the_ptunifier_checkpoint(pretrained, task, metric):
    assert _finetune(pretrained, pretrained["export"], task, "data.label_fraction=0.5") == 0
    run = _last_run(pretrained["uri"], task)
    assert run.data.tags["pretrained_family"] == "ptunifier" and run.data.tags["prompts_trainable"] == "false"
    assert 0.0 <= run.data.metrics[metric] <= 1.0
    assert run.data.metrics["data.n_train_studies_labelled"] > 0
    if task == "vqa":
        assert "test.closed_balanced_accuracy" in run.data.metrics and "test.abnormal_exact_match" in run.data.metrics


@pytest.mark.slow
def test_contrastive_checkpoint_retrieval_and_linear_probe(pretrained, tiny_cohort, capsys):
    from medmm.pipelines.pretrain import main as pretrain_main

    tmp = pretrained["tmp"]
    assert pretrain_main(["--config", str(TINY_CONFIG), *pretrained["overrides"], "trainer.max_epochs=1",
                          "trainer.limit_train_batches=2", "tracking.register_model=true",
                          "tracking.registered_name=medmm-more-tiny"]) == 0
    client = MlflowClient(pretrained["uri"])
    run = client.search_runs([client.get_experiment_by_name("medmm-tiny").experiment_id],
                             filter_string="params.`model.name` = 'more'")[0]
    uri = f"runs:/{run.info.run_id}/model"
    assert _finetune(pretrained, uri, "retrieval") == 0
    assert _last_run(pretrained["uri"], "retrieval").data.tags["pretrained_family"] == "more"
    assert _finetune(pretrained, uri, "image_classification", "backbone=frozen", "head=linear") == 0
    assert "test.auroc.macro" in _last_run(pretrained["uri"], "image_classification").data.metrics
    assert _finetune(pretrained, uri, "vqa") == 2  # no fusion: a clear error, not a traceback
    assert "needs a PTUnifier checkpoint" in capsys.readouterr().err
    assert _finetune(pretrained, tmp / "nowhere", "retrieval") == 2
    assert "config.yaml and model.safetensors not found" in capsys.readouterr().err
