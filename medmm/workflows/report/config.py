"""Config of ``python -m medmm.pipelines.report`` (defaults = configs/report/default.yaml)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field

from medmm.config.core import ConfigError, StrictModel
from medmm.data.config import DataConfig
from medmm.models.heads.report_decoder import DecoderConfig
from medmm.tracking.config import RunTrackingConfig
from medmm.tracking.figures import EXAMPLES_FIGURE_HELP
from medmm.training.config import TrainerConfig
from medmm.workflows.pretrained import PretrainedConfig


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
    examples_figure: bool | None = Field(None, description=EXAMPLES_FIGURE_HELP)


class ReportTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-report"
    register_model: bool = Field(True, description="register the best model (lowest val loss) in the model registry")
    registered_name: str = "medmm-report"


class ReportConfig(StrictModel):
    task: Literal["generate", "summarise"] = Field(
        "generate", description="generate: reports from the X-ray (and ECG); summarise: the IMPRESSION section from "
                                "the FINDINGS section, on a PTUnifier model's fused text tokens (pretrained.kind: "
                                "ptunifier)")
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

    def encoders_needed(self) -> tuple[str, ...]:
        """The pretrained encoders the generator conditions on: the X-ray's, and the ECG's
        under ``decoder.use_ecg``."""
        return ("xray", "ecg") if self.decoder.use_ecg else ("xray",)

    def check_summarise(self, family: str | None) -> None:
        """A one-line :class:`ConfigError` where ``task: summarise`` cannot run on a pretrained
        model of ``family`` (None: not known yet), before anything is built."""
        if self.task != "summarise":
            return
        if self.decoder.use_ecg:
            raise ConfigError("decoder.use_ecg: summarisation reads the FINDINGS text only; set decoder.use_ecg=false")
        if family is not None and family != "ptunifier":
            raise ConfigError(f"task=summarise reads PTUnifier's fused text tokens; the {family!r} pretraining "
                              "model's text encoder gives a pooled vector only: use a PTUnifier model "
                              "(pretrained.kind=ptunifier)")

    def check_pretrained_encoders(self, encodes: Iterable[str]) -> None:
        """A one-line :class:`ConfigError` where the pretrained model (encoding ``encodes``)
        lacks an encoder the generator needs, before anything is built."""
        encodes = tuple(encodes)
        has = ", ".join(encodes) or "nothing"
        if "xray" not in encodes:
            raise ConfigError(f"pretrained.source: report generation needs the pretrained model's xray encoder; "
                              f"the model encodes {has}")
        if "ecg" in self.encoders_needed() and "ecg" not in encodes:
            raise ConfigError(f"decoder.use_ecg: the pretrained model has no ecg encoder (it encodes {has}); "
                              "set decoder.use_ecg=false, or pretrain on a cohort with ECGs")
