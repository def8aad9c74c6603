"""``python -m medmm.pipelines.pretrain``: pretraining on a cohort, evaluated on its held-out
split beside chance and oracle and tracked in MLflow. The config's top-level ``kind`` picks
the family: ``contrastive`` (X-ray / ECG / report / labs encoders, the default) or
``ptunifier`` (the same run as ``python -m medmm.pipelines.ptunifier_pretrain``).
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command, add_resume_flag
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig

COMMAND = Command(
    "pretrain", __doc__, {"contrastive": PretrainConfig, "ptunifier": PTUnifierPretrainConfig},
    default_config=Path("configs/pretrain/default.yaml"), arguments=add_resume_flag,
    examples=["--config configs/pretrain/default.yaml trainer.max_epochs=3 data.batch_size=32",
              "--config configs/pretrain/default.yaml --resume    # continue a killed run",
              "--config configs/pretrain/ptunifier.yaml           # kind: ptunifier"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, Lightning / MONAI, MLflow and its data stack
    # (7-9 s more than the config, measured on 2 CPU cores), which --help and config errors do not need
    if cfg.kind == "ptunifier":
        from medmm.workflows.ptunifier.run import run
    else:
        from medmm.workflows.contrastive.run import run
    return run(cfg, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
