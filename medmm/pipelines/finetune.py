"""Fine-tune a pretrained model on one downstream task and score it on the held-out split.

Tasks (``task``): image-only finding classification (PTUnifier: through pseudo-text
prompts), text-only report classification, image-report retrieval both ways, and VQA with
closed questions generated from each study's findings. ``data.label_fraction`` trains on a
fraction of the labelled studies. The checkpoint may be a PTUnifier export or a contrastive
model (its MLflow artifacts folder or a models:/ URI).
"""

import sys

from medmm.pipelines.command import Command
from medmm.workflows.finetune.config import FinetuneConfig

COMMAND = Command(
    "finetune", __doc__, FinetuneConfig,
    inputs=["a pretrained model (checkpoint=: an export folder, runs:/<id>/model or models:/<name>@champion)",
            "a cohort folder holding manifest.parquet (data.root)",
            "a YAML config (--config, one per task in configs/finetune/) and key=value overrides"],
    outputs=["an MLflow run (tracking.uri, default ./mlflow.db): config, metrics, results/ tables, figures/",
             "the fine-tuned model, registered when tracking.register_model",
             "on the console: the headline numbers and the run's dashboard address"],
    examples=[("--config configs/finetune/image_classification.yaml checkpoint=runs/ptunifier/<run id>/export "
               "data.label_fraction=0.01"),
              "--config configs/finetune/retrieval.yaml checkpoint=runs:/<pretraining run id>/model"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, Lightning / MONAI, MLflow and its data stack
    # (8 s more than the config, measured on 2 CPU cores), which --help and config errors do not need
    from medmm.workflows.finetune.run import run

    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
