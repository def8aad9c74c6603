"""Pretrain a PTUnifier model on a cohort, export it for fine-tuning and score it zero-shot.

One fusion encoder with prompt pools standing in for a missing image or report, trained
with image-text matching, masked language modelling and contrastive (ITC) losses. The
exported folder (safetensors weights + config.yaml) is the ``checkpoint=`` of ``finetune``;
the held-out split is scored by ITC retrieval in both directions. The same run as
``pretrain`` with a ``kind: ptunifier`` config.
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command, add_resume_flag
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig, preflight

COMMAND = Command(
    "ptunifier_pretrain", __doc__, PTUnifierPretrainConfig, default_config=Path("configs/pretrain/ptunifier.yaml"),
    arguments=add_resume_flag,
    inputs=["a cohort folder holding manifest.parquet with X-rays and reports (data.root)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["an MLflow run (tracking.uri, default ./mlflow.db): config, metrics, results/ tables, figures/",
             "the exported model under output_dir/<run id>/export (and the run's model_export/ artifacts)",
             "the model, registered as tracking.registered_name when tracking.register_model",
             "on the console: the headline numbers and the run's dashboard address"],
    examples=["--config configs/pretrain/ptunifier.yaml trainer.max_epochs=2",
              "--config configs/pretrain/ptunifier.yaml --resume    # continue a killed run"])


def execute(cfg, args):
    # the checks run before the workflow is imported, so a wrong input fails in the time of the config's
    # imports; the workflow is imported here, not at the top: it loads torch, Lightning / MONAI, MLflow and
    # its data stack (9 s more than the config, measured on 2 CPU cores), which --help and config errors
    # do not need
    preflight(cfg)
    from medmm.workflows.ptunifier.run import run

    return run(cfg, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
