"""CT / MR segmentation networks: a MONAI backbone with either a plain head or the
text-conditioned dynamic heads of MulModSeg.

MulModSeg (Li et al., WACV 2025), after the CLIP-driven universal model (Liu et al.,
ICCV 2023): a frozen text encoder embeds "a {CT | MR} image of a {organ}" for every
modality x class once; per image and class, the projected text embedding is
concatenated with the image's global feature (from the backbone's bottleneck) and a
1x1 "controller" convolution turns it into the 153 parameters of a small head, three
1x1x1 convolutions 8 -> 8 -> 8 -> 1 applied to the decoder output. One output channel
per class (background included, so that softmax + one-hot DiceCE applies as in the
paper). Here the text encoder is the packaged MiniLM (384-d) instead of CLIP's (512-d).

The plain baseline uses the same backbone and a static 1x1x1 convolution head. Its
capacity-matched form ("none_matched") adds the conditioned head's global image-feature
branch and a hidden layer that scales and shifts the normalised decoder features, sized so
that the model has as many trainable parameters as the text-conditioned one: a comparison
of the two then isolates the text prompts (and the modality they name) from the capacity.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from medmm.config.core import StrictModel
from medmm.data.tokenizer import load_tokenizer, packaged_minilm_path
from medmm.models.encoders.text import masked_mean
from medmm.models.registry import ModelExample, register_model


class SegModelConfig(StrictModel):
    name: Literal["segmenter"] = Field("segmenter", description="registry name")
    backbone: Literal["unet", "swinunetr"] = Field("unet", description="MONAI backbone")
    feature_width: int = Field(16, description="width of the backbone's full-resolution decoder output")
    channels: list[int] = Field([16, 32, 64, 128], description="UNet channels per level")
    strides: list[int] = Field([2, 2, 2], description="UNet strides between levels")
    num_res_units: int = Field(1, description="UNet residual units per block")
    swin_depths: list[int] = Field([2, 2, 2, 2], description="SwinUNETR blocks per stage")
    swin_heads: list[int] = Field([3, 6, 12, 24], description="SwinUNETR attention heads per stage")
    text_hidden: int = Field(256, description="MulModSeg: width of the projected text and image features")
    head_width: int = Field(8, description="MulModSeg: width of the dynamic per-class head (8 -> 153 parameters)")
    text_model_path: str | None = Field(None, description="local MiniLM folder; default: the packaged one")

    @field_validator("feature_width")
    @classmethod
    def _wide_enough(cls, v: int) -> int:
        if v < 2:
            raise ValueError("feature_width must be >= 2")
        return v


MODALITY_WORDS = {"ct": "CT", "mr": "MR"}
MODALITY_INDEX = {"ct": 0, "mr": 1}


def class_prompt(modality: str, class_name: str) -> str:
    return f"a {MODALITY_WORDS[modality]} image of a {class_name}"


@functools.lru_cache(maxsize=8)
def _prompt_embeddings_cached(prompts: tuple[str, ...], model_path: str | None) -> torch.Tensor:
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = model_path or packaged_minilm_path()
    tokenizer = load_tokenizer(path)
    encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**enc).last_hidden_state
    return F.normalize(masked_mean(hidden, enc["attention_mask"]), dim=-1)


def prompt_embeddings(class_names: list[str], model_path: str | None = None) -> torch.Tensor:
    """Frozen MiniLM embeddings ``[2 (CT, MR), n_classes, 384]`` of the class prompts,
    mean-pooled over real tokens and L2-normalised; computed once per process."""
    prompts = tuple(class_prompt(m, c) for m in MODALITY_WORDS for c in class_names)
    emb = _prompt_embeddings_cached(prompts, model_path)
    return emb.reshape(len(MODALITY_WORDS), len(class_names), -1).clone()


def _groups(channels: int) -> int:
    for g in (16, 8, 4, 2, 1):
        if channels % g == 0 and channels >= g:
            return g
    return 1


def global_feature_branch(bottleneck_channels: int, hidden: int) -> nn.Sequential:
    """GN-ReLU-pool-conv: the bottleneck -> one ``hidden``-wide feature per image ``[B, hidden, 1, 1, 1]``."""
    return nn.Sequential(nn.GroupNorm(_groups(bottleneck_channels), bottleneck_channels), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool3d(1), nn.Conv3d(bottleneck_channels, hidden, kernel_size=1))


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class FeatureBackbone(nn.Module):
    """A MONAI network returning its full-resolution decoder output and its bottleneck.

    ``unet``: monai.networks.nets.UNet with ``out_channels = feature_width`` (its last
    layer is a linear transposed conv, so its output serves as the decoder feature);
    ``swinunetr``: monai.networks.nets.SwinUNETR with the final 1x1 conv removed. The
    bottleneck is caught by a forward hook (UNet's innermost block, SwinUNETR's
    ``encoder10``)."""

    def __init__(self, cfg: SegModelConfig, in_channels: int = 1):
        super().__init__()
        # monai takes seconds to import and only the segmentation workflow needs it.
        from monai.networks.nets import SwinUNETR, UNet

        self.kind = cfg.backbone
        if cfg.backbone == "unet":
            if len(cfg.strides) != len(cfg.channels) - 1:
                raise ValueError(f"UNet needs len(strides) == len(channels) - 1, got {cfg.strides}, {cfg.channels}")
            self.net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=cfg.feature_width,
                            channels=tuple(cfg.channels), strides=tuple(cfg.strides),
                            num_res_units=cfg.num_res_units, norm="instance")
            block = self.net.model
            while True:  # Sequential(down, SkipConnection(sub), up) nested down to the bottom layer
                sub = block[1].submodule
                if isinstance(sub, nn.Sequential) and len(sub) == 3 and hasattr(sub[1], "submodule"):
                    block = sub
                    continue
                bottom = sub
                break
            self.bottleneck_channels = cfg.channels[-1]
        else:
            if cfg.feature_width % 12:
                raise ValueError(f"SwinUNETR feature_width must be a multiple of 12, got {cfg.feature_width}")
            self.net = SwinUNETR(in_channels=in_channels, out_channels=1, feature_size=cfg.feature_width,
                                 depths=tuple(cfg.swin_depths), num_heads=tuple(cfg.swin_heads), spatial_dims=3)
            self.net.out = nn.Identity()
            bottom = self.net.encoder10
            self.bottleneck_channels = 16 * cfg.feature_width
        self.out_channels = cfg.feature_width
        self._bottleneck: torch.Tensor | None = None
        bottom.register_forward_hook(self._keep_bottleneck)

    def _keep_bottleneck(self, module, inputs, output) -> None:
        self._bottleneck = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net(x)
        bottleneck, self._bottleneck = self._bottleneck, None
        return features, bottleneck


def dynamic_head_param_count(width: int) -> int:
    """Weights + biases of three 1x1x1 convs width -> width -> width -> 1 (153 for 8)."""
    return (width * width + width) * 2 + width + 1


def apply_dynamic_heads(features: torch.Tensor, params: torch.Tensor, width: int) -> torch.Tensor:
    """Per (image, class) 3-layer 1x1x1 conv head.

    features ``[B, width, *spatial]``, params ``[B, C, n_params]`` -> logits ``[B, C, *spatial]``.
    Layout of one parameter vector: w1 (width x width), w2 (width x width), w3 (1 x width),
    then b1 (width), b2 (width), b3 (1)."""
    b, c, _ = params.shape
    spatial = features.shape[2:]
    flat = features.reshape(b, width, -1)
    ww = width * width
    w1 = params[..., :ww].reshape(b, c, width, width)
    w2 = params[..., ww : 2 * ww].reshape(b, c, width, width)
    w3 = params[..., 2 * ww : 2 * ww + width].reshape(b, c, 1, width)
    o = 2 * ww + width
    b1, b2, b3 = params[..., o : o + width], params[..., o + width : o + 2 * width], params[..., o + 2 * width :]
    h = F.relu(torch.einsum("bcoi,bin->bcon", w1, flat) + b1[..., None])
    h = F.relu(torch.einsum("bcoi,bcin->bcon", w2, h) + b2[..., None])
    out = torch.einsum("bcoi,bcin->bcon", w3, h) + b3[..., None]
    return out.reshape(b, c, *spatial)


class TextConditionedHeads(nn.Module):
    """MulModSeg's conditioning: text (frozen, a buffer) + image global feature -> controller
    -> per-class dynamic head on GN-ReLU-Conv(features -> head_width)."""

    def __init__(self, text_embeddings: torch.Tensor, feature_channels: int, bottleneck_channels: int,
                 hidden: int = 256, head_width: int = 8):
        super().__init__()
        # Frozen and precomputed: saved with the weights, never given to the optimiser.
        self.register_buffer("text_embeddings", text_embeddings.float())
        self.head_width = head_width
        self.text_proj = nn.Sequential(nn.Linear(text_embeddings.shape[-1], hidden), nn.ReLU(inplace=True))
        self.global_feature = global_feature_branch(bottleneck_channels, hidden)
        self.controller = nn.Conv3d(2 * hidden, dynamic_head_param_count(head_width), kernel_size=1)
        self.precls = nn.Sequential(
            nn.GroupNorm(_groups(feature_channels), feature_channels), nn.ReLU(inplace=True),
            nn.Conv3d(feature_channels, head_width, kernel_size=1))

    def head_params(self, bottleneck: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """-> ``[B, C, n_params]`` from the image's global feature and its modality's prompts."""
        image = self.global_feature(bottleneck).flatten(1)  # [B, hidden]
        text = self.text_proj(self.text_embeddings[modality])  # [B, C, hidden]
        joint = torch.cat([image[:, None, :].expand(-1, text.shape[1], -1), text], dim=-1)
        b, c, d = joint.shape
        return self.controller(joint.reshape(b * c, d, 1, 1, 1)).reshape(b, c, -1)

    def forward(self, features: torch.Tensor, bottleneck: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return apply_dynamic_heads(self.precls(features), self.head_params(bottleneck, modality), self.head_width)


class PlainHead(nn.Module):
    def __init__(self, feature_channels: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(_groups(feature_channels), feature_channels), nn.ReLU(inplace=True),
                                 nn.Conv3d(feature_channels, n_classes, kernel_size=1))

    def forward(self, features, bottleneck, modality):
        return self.net(features)


class MatchedPlainHead(PlainHead):
    """The plain head with more capacity and no text or modality: the conditioned head's global
    image-feature branch feeds a hidden layer (``width`` units) whose output scales and shifts
    the normalised decoder features, per image and channel, before the plain 1x1x1 convolution.
    :func:`matched_width` picks ``width`` so that the trainable parameters equal the
    text-conditioned head's."""

    def __init__(self, feature_channels: int, bottleneck_channels: int, n_classes: int, hidden: int, width: int):
        super().__init__(feature_channels, n_classes)
        self.global_feature = global_feature_branch(bottleneck_channels, hidden)
        self.film = nn.Sequential(nn.Linear(hidden, width), nn.ReLU(inplace=True),
                                  nn.Linear(width, 2 * feature_channels))
        # zero scale and shift at the start: the head begins as the plain head and learns what the
        # global feature adds
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)

    def forward(self, features, bottleneck, modality):
        norm, relu, conv = self.net
        scale, shift = self.film(self.global_feature(bottleneck).flatten(1)).chunk(2, dim=1)
        scale, shift = scale[:, :, None, None, None], shift[:, :, None, None, None]
        return conv(relu(norm(features) * (1 + scale) + shift))


def matched_width(target: int, feature_channels: int, bottleneck_channels: int, n_classes: int, hidden: int) -> int:
    """Hidden units of :class:`MatchedPlainHead` whose trainable parameters come nearest ``target``
    (each unit adds ``hidden + 1 + 2 * feature_channels``); an error where that is over 1% off."""
    fixed = trainable_parameters(PlainHead(feature_channels, n_classes)) \
        + trainable_parameters(global_feature_branch(bottleneck_channels, hidden)) + 2 * feature_channels
    per_unit = hidden + 1 + 2 * feature_channels
    units = round((target - fixed) / per_unit)
    if units < 1 or abs(fixed + units * per_unit - target) > 0.01 * target:
        raise ValueError(f"none_matched: no hidden layer brings the plain head within 1% of the conditioned head's "
                         f"{target} parameters (model.text_hidden={hidden}, feature width {feature_channels})")
    return units


def text_embedding_width(model_path: str | None) -> int:
    """Width of the prompt embeddings: the hidden size in the local text model's config.json."""
    config = Path(model_path or packaged_minilm_path()) / "config.json"
    return int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])


class Segmenter(nn.Module):
    """``forward(image [B, 1, *roi], modality [B] long (0 CT, 1 MR)) -> logits [B, C, *roi]``."""

    def __init__(self, backbone: FeatureBackbone, head: nn.Module, conditioning: str, class_names: list[str]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.conditioning = conditioning
        self.class_names = list(class_names)

    def forward(self, image: torch.Tensor, modality: torch.Tensor | int) -> torch.Tensor:
        if not torch.is_tensor(modality):
            modality = torch.full((image.shape[0],), int(modality), dtype=torch.long, device=image.device)
        elif modality.ndim == 0 or modality.shape[0] != image.shape[0]:
            modality = modality.reshape(-1)[:1].expand(image.shape[0])
        features, bottleneck = self.backbone(image)
        return self.head(features, bottleneck, modality)


DEFAULT_CLASSES = ("background", "foreground")


def tiny_segmenter() -> ModelExample:
    """A two-level UNet and narrow text-conditioned heads on a CT and an MR patch of 16^3."""
    classes = ["background", "liver", "kidney"]
    cfg = SegModelConfig(feature_width=8, channels=[8, 16, 16], strides=[2, 2], num_res_units=0, text_hidden=16,
                         head_width=4)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 1, 16, 16, 16, generator=g), torch.tensor([0, 1]))
    return ModelExample(cfg, inputs, {"output": (2, len(classes), 16, 16, 16)},
                        {"class_names": classes, "conditioning": "text"})


@register_model("segmenter", config=SegModelConfig, example=tiny_segmenter)
def build_segmenter(cfg: SegModelConfig, *, class_names: Sequence[str] = DEFAULT_CLASSES, conditioning: str = "text",
                    in_channels: int = 1, text_embeddings: torch.Tensor | None = None) -> Segmenter:
    """``class_names``: one output channel each, background included. ``conditioning``: "text"
    (MulModSeg heads), "none" (plain head) or "none_matched" (plain head with as many trainable
    parameters as "text"). ``text_embeddings`` skips the MiniLM pass (e.g. when loading saved
    weights, which carry them)."""
    backbone = FeatureBackbone(cfg, in_channels)
    feature, bottleneck = backbone.out_channels, backbone.bottleneck_channels
    if conditioning == "text":
        if text_embeddings is None:
            text_embeddings = prompt_embeddings(list(class_names), cfg.text_model_path)
        head = TextConditionedHeads(text_embeddings, feature, bottleneck, cfg.text_hidden, cfg.head_width)
    elif conditioning == "none":
        head = PlainHead(feature, len(class_names))
    elif conditioning == "none_matched":
        # the conditioned head's count depends on the text width only, so zeros stand in for the prompts
        width = text_embedding_width(cfg.text_model_path) if text_embeddings is None else text_embeddings.shape[-1]
        text_head = TextConditionedHeads(torch.zeros(len(MODALITY_WORDS), len(class_names), width), feature,
                                         bottleneck, cfg.text_hidden, cfg.head_width)
        units = matched_width(trainable_parameters(text_head), feature, bottleneck, len(class_names), cfg.text_hidden)
        head = MatchedPlainHead(feature, bottleneck, len(class_names), cfg.text_hidden, units)
    else:
        raise ValueError(f"conditioning must be 'text', 'none' or 'none_matched', got {conditioning!r}")
    return Segmenter(backbone, head, conditioning, class_names)
