"""Config of ``python -m medmm.pipelines.pretrain`` (defaults = configs/pretrain/default.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medmm.config.core import StrictModel
from medmm.config.tracking import RunTrackingConfig

MODALITIES = ("xray", "ecg", "report", "labs")
DEMO_LAB_COLUMNS = ["bnp", "wbc", "crp", "hemoglobin", "creatinine", "sodium"]


class XrayEncoderConfig(StrictModel):
    name: Literal["cnn", "vit"] = Field("cnn", description="registry name of the X-ray encoder")
    widths: list[int] = Field([16, 32, 64, 128], description="CNN stage widths")
    patch_size: int = Field(16, description="ViT patch size")
    vit_dim: int = Field(192, description="ViT width")
    vit_depth: int = Field(4, description="ViT depth")
    vit_heads: int = Field(3, description="ViT attention heads")
    dropkey: float = Field(0.1, description="ViT DropKey rate (MoRE), training only")


class ECGEncoderConfig(StrictModel):
    name: Literal["conv_transformer"] = "conv_transformer"
    dim: int = Field(128, description="token width")
    depth: int = Field(2, description="transformer layers")
    heads: int = Field(4, description="attention heads")
    token_stride: int = Field(2, description="stride of the second tokenizer conv: tokens = samples / (5 * stride)")
    dropout: float = Field(0.0, description="transformer dropout (off by default: on CPU its masks cost ~40% of the step)")


class TextEncoderConfig(StrictModel):
    name: Literal["minilm_lora"] = "minilm_lora"
    model_path: str | None = Field(None, description="local HF model folder; default: the packaged all-MiniLM-L6-v2")
    lora_r: int = Field(8, description="LoRA rank")
    lora_alpha: int = Field(16, description="LoRA alpha")
    lora_dropout: float = 0.1
    lora_targets: list[str] = Field(["query", "value"], description="attention projections adapted by LoRA")
    lora_layers: list[int] | None = Field(
        [5], description="transformer layers that get LoRA (None = all); layers below stay frozen"
    )
    cache_frozen_prefix: bool = Field(
        True, description="cache hidden states of the frozen layers below the first LoRA layer"
    )
    max_tokens: int = Field(96, description="report truncation length in tokens")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="dropout in the adapted layers (attention weights and hidden states); None keeps the "
                    "pretrained model's. On CPU each mask costs one random draw per element, ~half the "
                    "adapted layer's time at 128 tokens",
    )


class LabsEncoderConfig(StrictModel):
    """Symile-MIMIC's labs encoder: training-set percentiles + missingness flags into an MLP."""

    hidden: list[int] = Field([256, 1024], description="MLP hidden widths (Symile-MIMIC: 256, 1024)")


class ModelConfig(StrictModel):
    name: Literal["more"] = Field("more", description="registry name of the pretraining model")
    modalities: list[Literal["xray", "ecg", "report", "labs"]] = Field(
        ["xray", "ecg", "report"], description="encoders the model builds (add labs for the Symile-MIMIC setting)")
    embed_dim: int = Field(128, description="shared embedding size")
    proj_hidden: int = Field(256, description="projection head hidden size")
    init_temperature: float = Field(0.07, description="initial softmax temperature (learned)")
    xray: XrayEncoderConfig = XrayEncoderConfig()
    ecg: ECGEncoderConfig = ECGEncoderConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    labs: LabsEncoderConfig = LabsEncoderConfig()


class DataConfig(StrictModel):
    root: Path = Field(Path("data/demo"), description="cohort folder holding manifest.parquet")
    image_size: int = Field(128, description="X-ray side length fed to the model")
    ecg_fs: int = Field(100, description="ECG rate fed to the model (Hz)")
    batch_size: int = 64
    num_workers: int = Field(0, description="DataLoader workers (the decoded cohort is cached in memory)")
    cache_dir: Path | None = Field(None, description="where to persist the decoded cache (default: <root>/.cache)")
    augment: bool = True
    strict: bool = Field(False, description="raise on the first bad file instead of skipping and counting it")
    limit_studies: int | None = Field(None, description="use only the first N studies (smoke tests)")
    lab_columns: list[str] = Field(DEMO_LAB_COLUMNS, description="columns of <root>/labs.csv fed to the labs encoder")


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


class TrainerConfig(StrictModel):
    max_epochs: int = 7
    accelerator: str = Field("auto", description="cpu | gpu | auto")
    devices: int | str = "auto"
    precision: str | None = Field(None, description="None = bf16-mixed where the GPU or CPU computes bfloat16 "
                                                     "natively, 16-mixed on an older GPU, else 32-true")
    log_every_n_steps: int = 10
    limit_train_batches: int | float | None = None
    gradient_clip_val: float | None = 1.0
    threads: int | None = Field(None, description="torch CPU threads (None = all cores)")
    num_nodes: int = Field(1, description="machines in a multi-node run (torchrun / SLURM recipes in pipelines/)")
    grad_cache_chunk: int | None = Field(
        None, description="GradCache: encode the batch in chunks of this size and cache embedding gradients, so "
                          "a contrastive batch of data.batch_size fits in the memory of one chunk (None = off)")


class TrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-pretrain"
    register_model: bool = Field(True, description="register the final model in the MLflow model registry")
    registered_name: str = "medmm-more"


class EvalConfig(StrictModel):
    retrieval_ks: list[int] = [1, 5, 10]
    label_ks: list[int] = [1, 5]
    examples_figure: bool = Field(True, description="log a figure of retrieval examples (query X-ray, top-3 reports)")
    memory_retrieval: bool = Field(
        True, description="also report label-match retrieval memory-translated through the training pairs "
                          "(medmm.tasks.memory_retrieval; embeds the training split once more)")


class PretrainConfig(StrictModel):
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
