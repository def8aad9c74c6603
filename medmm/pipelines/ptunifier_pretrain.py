"""``python -m medmm.pipelines.ptunifier_pretrain``: PTUnifier pretraining (one fusion encoder,
prompt pools for the missing side, ITM + MLM + ITC) on a cohort, exported for the finetune
command, evaluated zero-shot on the held-out split and tracked in MLflow.
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command, add_resume_flag
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig

COMMAND = Command(
    "ptunifier_pretrain", __doc__, PTUnifierPretrainConfig, default_config=Path("configs/pretrain/ptunifier.yaml"),
    arguments=add_resume_flag,
    examples=["--config configs/pretrain/ptunifier.yaml trainer.max_epochs=2",
              "--config configs/pretrain/ptunifier.yaml --resume    # continue a killed run"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, Lightning / MONAI, MLflow and its data stack
    # (9 s more than the config, measured on 2 CPU cores), which --help and config errors do not need
    from medmm.workflows.ptunifier.run import run

    return run(cfg, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
