"""Embed the tissue tiles of every slide in a pathology cohort into per-slide feature bags.

Each slide is tiled at one magnification, background tiles are skipped by the tissue mask,
and the tissue tiles are embedded in batches by the chosen encoder: the 16 hand-made colour,
stain and texture features (baseline), medmm's small CNN (random init, or the image tower of
a medmm pretraining model), or an outside checkpoint. Bags are safetensors files named by the
slide's SHA-256 (features [tiles, dim], level-0 tile coordinates, the encoder and tiling as
metadata), indexed in bags.csv; the survival workflow reads them with
data.feature_bags=<output_dir>. A second run skips the slides already done.
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command
from medmm.workflows.tile_features.config import TileFeaturesConfig

COMMAND = Command(
    "tile_features", __doc__, TileFeaturesConfig, default_config=Path("configs/tile_features/default.yaml"),
    inputs=["a pathology cohort folder with a manifest listing slides (data.root)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["output_dir/bags/<slide sha256>.safetensors: one feature bag per slide",
             "output_dir/bags.csv: study, slide hash, status, bag, tiles (unreadable slides listed with the problem)",
             "output_dir/extraction.json: the encoder and tiling of every bag",
             "on the console: one line per unreadable slide (named by its hash) and the counts"],
    examples=["--config configs/tile_features/default.yaml",
              "--config configs/tile_features/default.yaml encoder.name=cnn output_dir=data/tile_features/cnn",
              "encoder.name=cnn encoder.pretrained=models:/medmm-more@champion output_dir=data/tile_features/more"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch and the slide readers, which --help
    # and config errors do not need
    from medmm.workflows.tile_features.run import run

    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
