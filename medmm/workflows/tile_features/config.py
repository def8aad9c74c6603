"""Config of ``python -m medmm.pipelines.tile_features`` (see configs/tile_features/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.config.core import StrictModel


class TileDataConfig(StrictModel):
    root: Path = Field(Path("data/demo_pathology"), description="pathology cohort folder (manifest.parquet with "
                                                                 "wsi rows)")
    magnification: float = Field(20, gt=0, description="tile magnification (mpp = 10 / magnification)")
    tile_size: int = Field(128, gt=0, description="tile side in pixels at that magnification")
    min_tissue: float = Field(0.5, ge=0, le=1, description="share of a tile the tissue mask must cover")
    max_tiles: int | None = Field(None, gt=0, description="tiles embedded per slide, a seeded sample (None = every "
                                                          "tissue tile)")


class TileEncoderConfig(StrictModel):
    name: Literal["handmade", "cnn", "checkpoint"] = Field(
        "handmade", description="handmade: the 16 colour / stain / texture features (baseline); cnn: medmm's small "
                                "residual CNN (random init, or the image tower of `pretrained`); checkpoint: an "
                                "outside checkpoint (`checkpoint`)")
    widths: list[int] = Field([16, 32, 64, 128], description="stage widths of the random-init CNN (features: 2 x the "
                                                              "last width)")
    pretrained: str | None = Field(None, description="cnn: a medmm pretraining model (MLflow URI or folder with "
                                                     "model.safetensors + config.yaml) whose image tower embeds the "
                                                     "tiles")
    tracking_uri: str | None = Field(None, description="MLflow store of `pretrained` (default ./mlflow.db)")
    checkpoint: Path | None = Field(None, description="checkpoint: a local checkpoint, a Hugging Face model folder "
                                                      "(ViT, DINOv2, ConvNeXt, CLIP vision tower...) or a timm "
                                                      "state-dict file (.safetensors / .pt)")
    checkpoint_format: Literal["auto", "hf", "timm"] = Field("auto", description="checkpoint: hf | timm; auto: a "
                                                                                 "folder is hf, a file timm")
    pooling: Literal["auto", "pooler", "cls", "mean"] = Field(
        "auto", description="checkpoint: the tile feature, the backbone's pooled output (auto: else its CLS token, "
                            "else the spatial mean), its CLS token or the mean of its tokens / feature map")
    batch_size: int = Field(64, gt=0, description="tiles per encoder batch")

    @model_validator(mode="after")
    def _sources_fit_name(self) -> "TileEncoderConfig":
        if self.pretrained is not None and self.name != "cnn":
            raise ValueError(f"encoder.pretrained is the image tower of a medmm model: it needs encoder.name=cnn, "
                             f"not {self.name}")
        if self.name == "checkpoint" and self.checkpoint is None:
            raise ValueError("encoder.name=checkpoint needs encoder.checkpoint (a local checkpoint file or folder)")
        if self.checkpoint is not None and self.name != "checkpoint":
            raise ValueError(f"encoder.checkpoint needs encoder.name=checkpoint, not {self.name}")
        return self


class TileFeaturesConfig(StrictModel):
    seed: int = Field(0, description="seed of the tile sample (max_tiles) and of a random-init encoder")
    output_dir: Path = Field(Path("data/tile_features/handmade"),
                             description="bags/<slide sha256>.safetensors, bags.csv and extraction.json go here "
                                         "(the survival workflow's data.feature_bags)")
    data: TileDataConfig = TileDataConfig()
    encoder: TileEncoderConfig = TileEncoderConfig()
    threads: int | None = Field(None, description="torch CPU threads")
