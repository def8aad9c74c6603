"""Pretrain encoders on a cohort and score them on its held-out split beside chance and oracle.

The config's top-level ``kind`` picks the family: ``contrastive`` (X-ray / ECG / report /
labs encoders in one shared space, the default) or ``ptunifier`` (one fusion encoder with
prompt pools, the same run as ``ptunifier_pretrain``). The test split is scored by
retrieval between the modalities and zero-shot finding detection; ``--resume`` continues a
killed run from its newest checkpoint.
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command, add_resume_flag
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.contrastive.config import preflight as contrastive_preflight
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig
from medmm.workflows.ptunifier.config import preflight as ptunifier_preflight

COMMAND = Command(
    "pretrain", __doc__, {"contrastive": PretrainConfig, "ptunifier": PTUnifierPretrainConfig},
    default_config=Path("configs/pretrain/default.yaml"), arguments=add_resume_flag,
    inputs=["a cohort folder holding manifest.parquet (data.root; written by ingest or make_demo)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["an MLflow run (tracking.uri, default ./mlflow.db): config, metrics, results/ tables, figures/",
             "the model, registered as tracking.registered_name when tracking.register_model",
             "checkpoints and run_state.json under output_dir (what --resume reads)",
             "on the console: the headline numbers and the run's dashboard address"],
    examples=["--config configs/pretrain/default.yaml trainer.max_epochs=3 data.batch_size=32",
              "--config configs/pretrain/default.yaml --resume    # continue a killed run",
              "--config configs/pretrain/ptunifier.yaml           # kind: ptunifier"])


def execute(cfg, args):
    # the checks run before the workflow is imported, so a wrong input fails in the time of the
    # config's imports; the workflow is imported here, not at the top: it loads torch, Lightning /
    # MONAI, MLflow and its data stack (7-9 s more than the config, measured on 2 CPU cores), which
    # --help and config errors do not need
    if cfg.kind == "ptunifier":
        ptunifier_preflight(cfg)
        from medmm.workflows.ptunifier.run import run
    else:
        cfg = contrastive_preflight(cfg)
        from medmm.workflows.contrastive.run import run
    return run(cfg, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
