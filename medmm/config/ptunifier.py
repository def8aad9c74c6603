"""Config of PTUnifier pretraining (``model.name: ptunifier``; configs/pretrain/ptunifier.yaml).

The data, trainer and tracking sections are the contrastive pipeline's own; the model,
loss and optimiser sections are PTUnifier's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.config.core import StrictModel
from medmm.config.pretrain import DataConfig, TrackingConfig, TrainerConfig


class PTUnifierImageConfig(StrictModel):
    patch_size: int = Field(16, description="ViT patch size")
    dim: int = Field(384, description="ViT width (prompt pools need it equal to the text width, 384)")
    depth: int = Field(4, description="ViT depth")
    heads: int = Field(6, description="ViT attention heads")


class PTUnifierTextConfig(StrictModel):
    model_path: str | None = Field(None, description="local HF model folder; default: the packaged all-MiniLM-L6-v2")
    layers: int = Field(6, ge=1, description="MiniLM layers kept (the first N of 6)")
    frozen_layers: int = Field(0, ge=0, description="lowest kept layers (and the embeddings) left frozen")
    max_tokens: int = Field(64, description="report truncation length in tokens")


class PromptConfig(StrictModel):
    mode: Literal["pool", "static", "none"] = Field(
        "pool", description="pool: top-k prompts picked per input; static: the same k for every input; "
                            "none: the missing side is only [CLS] (+[SEP])")
    pool_size: int = Field(2048, ge=1, description="prompts per pool (paper: 2048)")
    k_visual: int = Field(49, ge=1, description="pseudo-image tokens for a text-only input (paper: 49)")
    k_text: int = Field(32, ge=1, description="pseudo-text tokens for an image-only input (paper: 32)")
    finetune: Literal["frozen", "trained"] = Field(
        "frozen", description="pools after pretraining: frozen (the reference code) or trained in fine-tuning")

    @model_validator(mode="after")
    def _k_fits(self) -> "PromptConfig":
        if self.mode == "pool" and max(self.k_visual, self.k_text) > self.pool_size:
            raise ValueError(f"k ({self.k_visual}, {self.k_text}) larger than pool_size {self.pool_size}")
        return self


class PTUnifierModelConfig(StrictModel):
    name: Literal["ptunifier"] = "ptunifier"
    image: PTUnifierImageConfig = PTUnifierImageConfig()
    text: PTUnifierTextConfig = PTUnifierTextConfig()
    hidden: int = Field(256, description="fusion width (paper: 768)")
    fusion_layers: int = Field(2, ge=1, description="cross-attention layers per side (paper: 6)")
    fusion_heads: int = Field(4, description="fusion attention heads")
    mlp_ratio: int = 4
    dropout: float = Field(0.1, description="fusion dropout")
    itc_dim: int = Field(256, description="ITC projection size (paper: 768)")
    prompts: PromptConfig = PromptConfig()


class PTUnifierLossConfig(StrictModel):
    itm_weight: float = Field(0.5, ge=0, description="image-text matching weight (paper 0.5)")
    mlm_weight: float = Field(1.0, ge=0, description="masked language modelling weight (paper 1.0)")
    itc_weight: float = Field(0.1, ge=0, description="image-text contrastive weight (paper 0.1)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="fraction of words masked (whole-word)")
    itc_temperature: float = Field(0.1, gt=0, description="fixed ITC temperature (paper 0.1)")

    @model_validator(mode="after")
    def _some_loss(self) -> "PTUnifierLossConfig":
        if self.itm_weight + self.mlm_weight + self.itc_weight <= 0:
            raise ValueError("at least one of itm_weight, mlm_weight, itc_weight must be > 0")
        return self


class PTUnifierOptimConfig(StrictModel):
    lr: float = Field(1e-4, description="learning rate of the uni-modal encoders")
    head_lr_mult: float = Field(5.0, description="fusion, heads and prompts get lr x this (paper x5)")
    weight_decay: float = 0.01
    warmup_fraction: float = Field(0.1, description="linear warm-up, as a fraction of all steps (paper 10%)")
    min_lr_ratio: float = Field(0.0, description="cosine decay floor relative to lr")


class PTUnifierPretrainConfig(StrictModel):
    seed: int = 0
    output_dir: Path = Field(Path("runs/ptunifier"), description="checkpoints and the exported model")
    model: PTUnifierModelConfig = PTUnifierModelConfig()
    data: DataConfig = DataConfig()
    loss: PTUnifierLossConfig = PTUnifierLossConfig()
    optim: PTUnifierOptimConfig = PTUnifierOptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig(experiment="medmm-ptunifier", register_model=True,
                                              registered_name="medmm-ptunifier")
