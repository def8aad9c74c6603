"""Compare MM-Lego's ways of combining unimodal models on the same splits.

Per task (pathology + genomics survival, X-ray + ECG finding classification): one LegoBlock
per modality trained alone, LegoMerge of those blocks (no paired data, no training),
LegoFuse (the blocks chained and fine-tuned briefly on paired data) and an end-to-end model
of the same architecture and size trained from scratch on paired data, all scored on the
held-out paired test rows (c-index, macro AUROC) and tracked in one MLflow run.
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command
from medmm.workflows.mmlego.config import MMLegoConfig

COMMAND = Command(
    "mmlego", __doc__, MMLegoConfig, default_config=Path("configs/mmlego/pathology_genomics.yaml"),
    inputs=["a pathology cohort folder (pathology_genomics.root) and / or an X-ray + ECG cohort folder "
            "(xray_ecg.root)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["an MLflow run (tracking.uri, default ./mlflow.db): config, <task>.<variant>.* metrics, "
             "results/mmlego_table.md",
             "on the console: each task's merge, fuse and end-to-end score beside chance and the best unimodal block"],
    examples=["--config configs/mmlego/pathology_genomics.yaml",
              "--config configs/mmlego/xray_ecg.yaml train.fuse_epochs=5 model.fuse=weave"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, MLflow and its data stack, which --help and
    # config errors do not need
    from medmm.workflows.mmlego.run import run

    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
