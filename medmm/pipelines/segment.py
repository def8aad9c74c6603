"""Segment organs in CT and MR volumes: text-conditioned (MulModSeg) heads beside a plain head.

``train`` fits every variant of ``variants`` on the cohort's train split with the same
seed, data stream and step budget, then scores the held-out test split (Dice / HD95 per
class and modality) and logs the masks as NIfTI with each source image's affine. ``infer``
loads a run's weights and writes one mask per input (NIfTI file or DICOM series folder).
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command
from medmm.workflows.segment.config import SegmentConfig

COMMAND = Command(
    "segment", __doc__, SegmentConfig, default_config=Path("configs/segment/phantoms.yaml"),
    subcommands={"train": "train + evaluate", "infer": "predict masks"},
    inputs=["train: a volume cohort folder (data.root: manifest.parquet; class names in labels.json or a "
            "Decathlon-style dataset.json; e.g. make_demo_volumes, or an ingested AMOS / BTCV export)",
            "infer: a train run (infer.run_id) and NIfTI files or DICOM series folders (infer.inputs)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["train: an MLflow run (tracking.uri, default ./mlflow.db): config, metrics, results/ tables, figures/, "
             "the weights (model/) and the test masks (masks/) as NIfTI",
             "infer: one NIfTI mask per input in infer.output_dir",
             "on the console: the headline Dice per variant and modality, and the run's dashboard address"],
    examples=["train --config configs/segment/phantoms.yaml trainer.max_steps=600",
              ("infer --config configs/segment/phantoms.yaml infer.run_id=<run> infer.modality=ct "
               "infer.inputs='[path/to/series_folder, scan.nii.gz]'")])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, Lightning / MONAI, MLflow and its data stack
    # (10 s more than the config, measured on 2 CPU cores), which --help and config errors do not need
    from medmm.workflows.segment import run as segment

    if args.command == "train":
        return segment.train(cfg)
    return "\n".join(f"mask: {path}" for path in segment.infer(cfg))


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
