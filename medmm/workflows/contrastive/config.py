"""Config of contrastive pretraining, ``python -m medmm.pipelines.pretrain`` (defaults = configs/pretrain/default.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medmm.config.core import StrictModel
from medmm.data.config import MODALITIES, DataConfig
from medmm.models.more import ModelConfig
from medmm.tracking.config import RunTrackingConfig
from medmm.tracking.figures import EXAMPLES_FIGURE_HELP
from medmm.training.config import TrainerConfig


class LossConfig(StrictModel):
    name: Literal["clip", "symile"] = Field(
        "clip", description="clip: pairwise InfoNCE over `pairs`; symile: multilinear inner product over `modalities`")
    modalities: list[str] = Field(
        [], description="modalities of the Symile loss (default: every modality named in `pairs`)")
    negatives: Literal["n", "n_squared"] = Field(
        "n", description="Symile negatives: n = O(N) independent shuffles; n_squared = all combinations")
    gather: bool = Field(True, description="under DDP, contrast against every process's batch (gathered with "
                                           "gradients, open_clip local_loss semantics)")
    pairs: list[tuple[str, str]] = Field(
        [("xray", "report"), ("ecg", "report"), ("xray", "ecg")], description="modality pairs contrasted by InfoNCE"
    )

    label_aware_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="weight of label-aware soft targets: studies whose reports have identical findings are "
                    "not pushed apart as negatives (MedCLIP); 0 = plain InfoNCE")

    same_label_modalities: list[str] = Field(
        [], description="modalities that also get a within-modality supervised contrastive term (SupCon): "
                        "studies with the same findings pulled together, the others apart")
    same_label_weight: float = Field(0.0, ge=0.0, description="weight of that term, added to the pair loss")

    @field_validator("pairs")
    @classmethod
    def _known(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in pairs:
            for m in (a, b):
                if m not in MODALITIES:
                    raise ValueError(f"unknown modality {m!r} (known: {', '.join(MODALITIES)})")
            if a == b:
                raise ValueError(f"pair ({a}, {b}) contrasts a modality with itself")
        return pairs

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, modalities: list[str]) -> list[str]:
        for m in modalities:
            if m not in MODALITIES:
                raise ValueError(f"unknown modality {m!r} (known: {', '.join(MODALITIES)})")
        if modalities and len(set(modalities)) < 2:
            raise ValueError("the Symile loss needs at least two distinct modalities")
        return modalities

    @model_validator(mode="after")
    def _same_label_modalities_are_encoded(self) -> "LossConfig":
        extra = sorted(set(self.same_label_modalities) - set(self.used_modalities()))
        if extra:
            raise ValueError(f"same_label_modalities {extra} are not contrasted by this loss "
                             f"(it encodes {', '.join(self.used_modalities())})")
        return self

    def used_modalities(self) -> tuple[str, ...]:
        """The modalities this loss contrasts, sorted."""
        if self.name == "symile" and self.modalities:
            return tuple(sorted(set(self.modalities)))
        return tuple(sorted({m for pair in self.pairs for m in pair}))


class OptimConfig(StrictModel):
    lr: float = 2e-3
    text_lr: float = Field(5e-4, description="learning rate of the LoRA text adapter")
    weight_decay: float = 0.05
    warmup_fraction: float = Field(0.05, description="linear warm-up, as a fraction of all steps")
    min_lr_ratio: float = Field(0.02, description="cosine decay floor relative to lr")




class TrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-pretrain"
    register_model: bool = Field(True, description="register the final model in the MLflow model registry")
    registered_name: str = "medmm-more"


class EvalConfig(StrictModel):
    retrieval_ks: list[int] = [1, 5, 10]
    label_ks: list[int] = [1, 5]
    examples_figure: bool | None = Field(None, description=EXAMPLES_FIGURE_HELP)
    memory_retrieval: bool = Field(
        True, description="also report label-match retrieval memory-translated through the training pairs "
                          "(medmm.retrieval.memory_retrieval; embeds the training split once more)")


class PretrainConfig(StrictModel):
    kind: Literal["contrastive"] = Field("contrastive", description="pretraining family: contrastive | ptunifier "
                                         "(the pretrain command picks the schema by it)")
    seed: int = 0
    output_dir: Path = Field(Path("runs/pretrain"), description="checkpoints and local artifacts")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _loss_modalities_are_built(self) -> "PretrainConfig":
        unbuilt = sorted(set(self.loss.used_modalities()) - set(self.model.modalities))
        if unbuilt:
            raise ValueError(f"the loss uses {unbuilt}, which model.modalities {self.model.modalities} lacks")
        return self
