"""Train one image-text model on labelled images of several modalities and score it zero-shot.

Each labelled set (a CSV of image paths and class labels: chest X-ray findings, organs in CT /
MR slices, tissue classes of pathology tiles) becomes image-caption pairs written from its
labels in the modality's caption style; one image tower and one text tower are trained with
CLIP's loss on batches that mix the modalities (UniMed-CLIP's recipe), beside a model of the
same size per modality, and every model is scored zero-shot per modality on held-out images."""

import sys
from pathlib import Path

from medmm.pipelines.command import Command
from medmm.workflows.image_text.config import ImageTextConfig

COMMAND = Command(
    "image_text", __doc__, ImageTextConfig, default_config=Path("configs/image_text/default.yaml"),
    inputs=["labelled image sets (sources[].labels: a CSV of path, patient and class columns per modality; "
            "`python -m medmm.pipelines.make_demo_labelled` writes four)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["an MLflow run (tracking.uri, default ./mlflow.db): config, test.<model>.<modality>.* metrics per "
             "seed, their mean and sd, results/image_text_table.md",
             "on the console: each modality's zero-shot macro AUROC beside chance and the per-modality model"],
    examples=["--config configs/image_text/default.yaml",
              "--config configs/image_text/default.yaml seeds=[0] per_modality_baselines=false"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, MLflow and the text model, which --help and
    # config errors do not need
    from medmm.workflows.image_text.run import run

    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
