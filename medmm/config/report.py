"""Config of ``python -m medmm.pipelines.report`` (defaults = configs/report/default.yaml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from medmm.config.core import StrictModel
from medmm.config.pretrain import DataConfig, TrainerConfig
from medmm.config.tracking import RunTrackingConfig


class PretrainedConfig(StrictModel):
    source: str | None = Field(
        None, description="pretraining model: MLflow URI (models:/medmm-more@champion, runs:/<id>/model) or a "
                          "folder with model.safetensors + config.yaml")
    kind: str = Field("more", description="registry name of the pretraining model (more; ptunifier when merged)")
    tracking_uri: str | None = Field(None, description="MLflow store of `source` (default: this run's store)")
    freeze: bool = Field(False, description="keep the pretrained encoders frozen (else fine-tuned at encoder_lr)")


class DecoderConfig(StrictModel):
    init_from_minilm: bool = Field(True, description="start from the packaged MiniLM's weights (cross-attention new)")
    num_layers: int = Field(2, ge=1, le=12, description="decoder layers (the first N of MiniLM's six when initialised)")
    hidden_size: int = Field(384, description="width when not initialised from MiniLM")
    heads: int = Field(12, description="attention heads when not initialised from MiniLM")
    max_tokens: int = Field(96, description="report length in tokens (training truncation)")
    use_ecg: bool = Field(False, description="condition on the ECG too (its token outputs join the X-ray's)")
    dropout: float = 0.1


class ReportOptimConfig(StrictModel):
    lr: float = Field(5e-4, description="decoder and bridge learning rate")
    encoder_lr: float = Field(1e-4, description="learning rate of the pretrained encoders (unless frozen)")
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.05


class GenerationConfig(StrictModel):
    beams: list[int] = Field([1, 3], description="decodings evaluated: 1 = greedy, n > 1 = beam search of width n")
    max_new_tokens: int = Field(80, description="generated report length limit in tokens")
    no_repeat_ngram_size: int = Field(3, description="block repeated n-grams (0 = off)")
    batch_size: int = 32


class ReportEvalConfig(StrictModel):
    split: str = Field("test", description="held-out split the report metrics are computed on")
    max_studies: int | None = Field(None, description="score only the first N studies of the split (None = all)")
    n_examples: int = Field(6, description="generated-vs-reference examples logged (text + figure)")


class ReportTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-report"
    register_model: bool = Field(True, description="register the best model (lowest val loss) in the model registry")
    registered_name: str = "medmm-report"


class ReportConfig(StrictModel):
    seed: int = 0
    output_dir: Path = Field(Path("runs/report"), description="checkpoints and local artifacts")
    pretrained: PretrainedConfig = PretrainedConfig()
    decoder: DecoderConfig = DecoderConfig()
    data: DataConfig = Field(DataConfig(), description="cohort; image_size / ecg_fs follow the pretrained model")
    optim: ReportOptimConfig = ReportOptimConfig()
    trainer: TrainerConfig = TrainerConfig(max_epochs=4)
    generation: GenerationConfig = GenerationConfig()
    eval: ReportEvalConfig = ReportEvalConfig()
    tracking: ReportTrackingConfig = ReportTrackingConfig()
