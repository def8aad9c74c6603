"""Config of PTUnifier pretraining (``kind: ptunifier``; configs/pretrain/ptunifier.yaml).

The data, trainer and tracking sections are the contrastive pipeline's own; the model,
loss and optimiser sections are PTUnifier's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.config.core import StrictModel
from medmm.data.config import DataConfig
from medmm.models.ptunifier import PTUnifierModelConfig
from medmm.tracking.figures import EXAMPLES_FIGURE_HELP
from medmm.training.config import TrainerConfig
from medmm.workflows.contrastive.config import TrackingConfig
from medmm.workflows.preflight import (
    PAIRED_TRAINING_MINIMUM,
    CohortNeeds,
    check_before_run,
    decoded_cohort_outputs,
)

# PTUnifier pairs an image with its report (ITM, MLM, ITC); other modalities of a cohort are not read
MODALITIES = ("xray", "report")


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
    image_lr_mult: float = Field(1.0, description="the image encoder gets lr x this (it starts from random "
                                                  "weights here, where the paper's starts from CLIP's)")
    weight_decay: float = 0.01
    warmup_fraction: float = Field(0.1, description="linear warm-up, as a fraction of all steps (paper 10%)")
    min_lr_ratio: float = Field(0.0, description="cosine decay floor relative to lr")


class PTUnifierPretrainConfig(StrictModel):
    kind: Literal["ptunifier"] = Field("ptunifier", description="pretraining family: contrastive | ptunifier "
                                       "(the pretrain command picks the schema by it)")
    seed: int = 0
    output_dir: Path = Field(Path("runs/ptunifier"), description="checkpoints and the exported model")
    model: PTUnifierModelConfig = PTUnifierModelConfig()
    data: DataConfig = DataConfig()
    loss: PTUnifierLossConfig = PTUnifierLossConfig()
    optim: PTUnifierOptimConfig = PTUnifierOptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig(experiment="medmm-ptunifier", register_model=True,
                                              registered_name="medmm-ptunifier")
    examples_figure: bool | None = Field(None, description=EXAMPLES_FIGURE_HELP)


def preflight(cfg: PTUnifierPretrainConfig) -> None:
    """Every check before anything is built (:mod:`medmm.workflows.preflight`), in seconds: the
    cohort has X-rays and reports (its other modalities are not used) and enough studies per
    split, the output and cache folders and the tracking store can be written."""
    needs = CohortNeeds(cfg.data.root, MODALITIES, PAIRED_TRAINING_MINIMUM, limit_studies=cfg.data.limit_studies,
                        why="PTUnifier pretraining (X-ray + report pairs)")
    check_before_run(cfg.tracking.uri, output_dirs=decoded_cohort_outputs(cfg.data, cfg.output_dir), cohort=needs,
                     model=cfg.model)
