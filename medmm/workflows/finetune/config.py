"""Config of ``python -m medmm.pipelines.finetune`` (configs/finetune/<task>.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from medmm.config.core import StrictModel
from medmm.tracking.config import RunTrackingConfig

TASKS = ("image_classification", "text_classification", "retrieval", "vqa")


class FinetuneDataConfig(StrictModel):
    root: Path = Field(Path("data/demo"), description="cohort folder holding manifest.parquet")
    cache_dir: Path | None = Field(None, description="decoded cache folder (default: <root>/.cache)")
    batch_size: int = 32
    augment: bool = True
    strict: bool = Field(False, description="verify every file's sha256 against the manifest before training and "
                                           "raise on the first bad or changed file, instead of skipping and counting it")
    limit_studies: int | None = Field(None, description="use only the first N studies (smoke tests)")
    label_fraction: float = Field(1.0, gt=0, le=1, description="fraction of the training studies whose labels "
                                                               "are used (1%, 10%, 100% in the paper)")
    max_test_studies: int | None = Field(None, description="evaluate on a seeded random subset of this many "
                                                           "held-out studies (short runs)")
    question_max_tokens: int = Field(24, description="VQA question truncation length")
    questions_per_study: int = Field(4, ge=1, description="VQA training questions drawn per study and epoch")


class FinetuneTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-finetune"
    register_model: bool = Field(True, description="register the fine-tuned model in the model registry (alias "
                                                   "newest; no champion: nothing is selected on validation data)")
    registered_name: str | None = Field(None, description="registered model name (default: medmm-finetune-<task>)")


class FinetuneConfig(StrictModel):
    seed: int = 0
    checkpoint: str | None = Field(
        None, description="pretrained model: an exported folder (config.yaml + model.safetensors; PTUnifier's "
                          "export/ or a contrastive model's MLflow artifacts folder) or a runs:/ | models:/ URI")
    task: Literal["image_classification", "text_classification", "retrieval", "vqa"] = "image_classification"
    output_dir: Path = Field(Path("runs/finetune"), description="local artifacts")
    epochs: int = Field(3, ge=0, description="fine-tuning epochs (0 = evaluate the pretrained model as it is)")
    lr: float = Field(1e-4, description="learning rate of the pretrained backbone")
    head_lr: float = Field(1e-3, description="learning rate of the new head")
    weight_decay: float = 0.01
    backbone: Literal["finetune", "frozen"] = Field(
        "finetune", description="frozen = linear probe / frozen features (the head alone trains)")
    prompts: Literal["checkpoint", "frozen", "trained"] = Field(
        "checkpoint", description="PTUnifier prompt pools: as the checkpoint's prompts.finetune says, or override")
    head: Literal["mlp", "linear"] = Field("mlp", description="mlp: the paper's 2h -> 2h -> LN -> GELU -> out")
    vqa_loss: Literal["bce", "balanced"] = Field(
        "bce", description="vqa: BCE over the answers, or balanced: each answer's positives weighted by its "
                           "negatives / positives among the training questions (rare yes answers count as much "
                           "as the common no)")
    threads: int | None = Field(None, description="torch CPU threads (None = all cores)")
    limit_train_batches: int | float | None = None
    data: FinetuneDataConfig = FinetuneDataConfig()
    tracking: FinetuneTrackingConfig = FinetuneTrackingConfig()
