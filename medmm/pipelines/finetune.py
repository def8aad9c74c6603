"""``python -m medmm.pipelines.finetune``: one downstream task from one pretrained checkpoint,
evaluated on the cohort's held-out split and tracked in MLflow.

Tasks: image-only finding classification (PTUnifier: through pseudo-text prompts),
text-only report classification, image-report retrieval both ways, and VQA with closed
questions generated from each study's findings. The checkpoint may be a PTUnifier export
or a contrastive model (its MLflow artifacts folder or a models:/ URI).
"""

import sys

from medmm.pipelines.command import Command
from medmm.workflows.finetune.config import FinetuneConfig

COMMAND = Command(
    "finetune", __doc__, FinetuneConfig,
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
