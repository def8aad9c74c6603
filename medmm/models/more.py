"""MoRE-style multimodal contrastive model: X-ray, ECG and report encoders, one projection
head each into a shared space, and a learned temperature (registered as ``more``).

The model only embeds; the loss lives in ``medmm.losses`` and the training loop in
``medmm.workflows.contrastive`` (the LightningModule / model split of Lightning and open_clip).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.losses.contrastive import LogitScale
from medmm.models.encoders.ecg import ECGEncoderConfig, build_ecg_encoder
from medmm.models.encoders.labs import LabsEncoderConfig, build_labs_encoder
from medmm.models.encoders.text import TextEncoderConfig, build_text_encoder
from medmm.models.encoders.xray import XrayEncoderConfig, build_xray_encoder
from medmm.models.heads.projection import projection_head
from medmm.models.registry import ModelExample, register_model


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


class MultiModalContrastiveModel(nn.Module):
    def __init__(self, cfg: ModelConfig, image_size: int, n_labs: int = 6):
        super().__init__()
        self.cfg = cfg
        builders = {
            "xray": lambda: build_xray_encoder(cfg.xray, image_size),
            "ecg": lambda: build_ecg_encoder(cfg.ecg),
            "report": lambda: build_text_encoder(cfg.text),
            "labs": lambda: build_labs_encoder(cfg.labs, n_labs),
        }
        self.encoders = nn.ModuleDict({m: builders[m]() for m in builders if m in cfg.modalities})
        self.projections = nn.ModuleDict(
            {m: projection_head(enc.out_dim, cfg.proj_hidden, cfg.embed_dim) for m, enc in self.encoders.items()}
        )
        # A learned "missing" input per modality (Symile's missing-data handling): a study
        # without its ECG / report / labs gets this feature vector in place of the
        # encoder's output, so it still has a representation (needed by Symile's MIP).
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(enc.out_dim) * 0.02) for m, enc in self.encoders.items()}
        )
        # A submodule holding an nn.Parameter, so the optimiser sees it (MoRE's reference
        # code left its temperature out of the optimiser).
        self.logit_scale = LogitScale(init=math.log(1.0 / cfg.init_temperature))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    def encode(self, modality: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised embeddings of one modality of a collated batch."""
        if modality == "report":
            feats = self.encoders["report"](batch["report_ids"], batch["report_mask"])
        else:
            feats = self.encoders[modality](batch[modality])
        present = batch.get("present", {}).get(modality) if isinstance(batch.get("present"), dict) else None
        if present is not None:  # always in the graph, so DDP sees the parameter used
            feats = torch.where(present.to(feats.device).reshape(-1, 1), feats, self.missing[modality].to(feats.dtype))
        return F.normalize(self.projections[modality](feats), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor], modalities: tuple[str, ...] | None = None):
        return {m: self.encode(m, batch) for m in (modalities or self.modalities)}


def tiny_more() -> ModelExample:
    """Every encoder at its smallest, on a batch of two studies with all four modalities."""
    n, size, n_labs = 2, 32, 3
    cfg = ModelConfig(modalities=["xray", "ecg", "report", "labs"], embed_dim=8, proj_hidden=16,
                      xray=XrayEncoderConfig(widths=[4, 8, 8, 8]), ecg=ECGEncoderConfig(dim=8, depth=1, heads=2),
                      text=TextEncoderConfig(lora_r=2, lora_alpha=4, lora_layers=[5], max_tokens=8),
                      labs=LabsEncoderConfig(hidden=[8]))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, 6), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # MiniLM's [CLS] ... [SEP]
    batch = {"xray": torch.randn(n, 1, size, size, generator=g), "ecg": torch.randn(n, 12, 500, generator=g),
             "report_ids": ids, "report_mask": torch.ones_like(ids), "labs": torch.rand(n, 2 * n_labs, generator=g)}
    return ModelExample(cfg, (batch,), {m: (n, cfg.embed_dim) for m in cfg.modalities},
                        {"image_size": size, "n_labs": n_labs})


@register_model("more", config=ModelConfig, example=tiny_more)
def build_more(cfg: ModelConfig, image_size: int = 128, n_labs: int = 6) -> MultiModalContrastiveModel:
    return MultiModalContrastiveModel(cfg, image_size, n_labs)
