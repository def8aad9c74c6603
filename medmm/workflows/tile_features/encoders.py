"""The tile encoders of the tile-feature extraction: a batch of RGB tiles ``[B, S, S, 3]``
(uint8) -> ``[B, dim]`` float32 features, each encoder normalising its input as it expects.

- ``handmade``: :class:`medmm.io.wsi.ColorTextureEncoder`, 16 colour / stain / texture
  features per tile (no weights; the baseline).
- ``cnn``, random init: medmm's residual CNN (:class:`medmm.models.encoders.xray.XrayCNN`)
  with a 3-channel stem, seeded, on tiles scaled to [0, 1] and z-scored per channel with the
  ImageNet statistics (the convention of pathology tile encoders).
- ``cnn`` from ``pretrained``: the image tower of a medmm pretraining model. It was trained
  on one-channel radiographs, so it sees the tile's grey level (mean of R, G, B, in [0, 1])
  resized to its training size and normalised as its X-rays were.
- ``checkpoint``: an outside checkpoint (a Hugging Face folder or a timm state dict), built
  by :func:`medmm.models.encoders.checkpoints.build_image_encoder_from_checkpoint`, frozen; it
  resizes the [0, 1] RGB tiles to the checkpoint's size and normalises them with the
  checkpoint's mean / std.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmm.config.core import ConfigError
from medmm.data.augment import normalise_xray
from medmm.io.wsi import ColorTextureEncoder
from medmm.models.encoders.xray import XrayCNN
from medmm.workflows.pretrained import load_pretrained
from medmm.workflows.tile_features.config import TileEncoderConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class TileEncoder:
    """``encode(tiles [B, S, S, 3] uint8, mpp) -> [B, dim]``; ``weights`` identifies the
    encoder's weights (a resumed extraction must use the same)."""

    name: str
    dim: int
    weights: str
    encode: Callable[[np.ndarray, float], np.ndarray]

    def __call__(self, tiles: np.ndarray, mpp: float) -> np.ndarray:
        features = np.asarray(self.encode(tiles, mpp), np.float32)
        if features.shape != (len(tiles), self.dim):
            raise RuntimeError(f"the {self.name} encoder returned {features.shape} for {len(tiles)} tiles of "
                               f"width {self.dim}")
        return features


def handmade_encoder() -> TileEncoder:
    encoder = ColorTextureEncoder()
    return TileEncoder("handmade", len(ColorTextureEncoder.names), "ColorTextureEncoder",
                       lambda tiles, mpp: np.stack([encoder(tile, mpp) for tile in tiles]))


def weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _torch_encoder(name: str, model: Callable[[torch.Tensor], torch.Tensor], dim: int, weights: str,
                   prepare: Callable[[torch.Tensor], torch.Tensor]) -> TileEncoder:
    """A torch model applied under inference mode to ``prepare``d tiles (float [B, 3, S, S] in [0, 1])."""

    def encode(tiles: np.ndarray, mpp: float) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
            return model(prepare(x)).float().cpu().numpy()

    return TileEncoder(name, dim, weights, encode)


def rgb_imagenet(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def random_cnn_encoder(widths: list[int], seed: int) -> TileEncoder:
    """medmm's residual CNN with an RGB stem, seeded random weights, in eval mode."""
    with torch.random.fork_rng(devices=[]):  # the seed shapes these weights only, not the caller's stream
        torch.manual_seed(seed)
        model = XrayCNN(widths)
        model.stem[0] = nn.Conv2d(3, widths[0], 5, 2, 2, bias=False)  # the X-ray stem reads one channel
    model = model.to(memory_format=torch.channels_last).eval()
    return _torch_encoder("cnn", model, model.out_dim, f"cnn-random:{weights_sha256(model)}", rgb_imagenet)


def pretrained_tower_encoder(source: str, tracking_uri: str | None) -> TileEncoder:
    """The image tower of a medmm pretraining model (either family), on grey tiles."""
    pretrained = load_pretrained(source, kind=None, tracking_uri=tracking_uri)
    backbone = pretrained.backbone().eval()
    size = int(pretrained.config.data.image_size)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        if grey.shape[-1] != size or grey.shape[-2] != size:
            grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return normalise_xray(grey)

    return _torch_encoder("cnn", backbone.image_features, backbone.feature_dim("image"),
                          f"medmm-{pretrained.kind}:{pretrained.weights_sha256}", prepare)


def checkpoint_encoder(cfg: TileEncoderConfig) -> TileEncoder:
    """An outside checkpoint's image encoder, frozen, on RGB tiles in [0, 1]."""
    try:
        # imported here: the checkpoint loaders import transformers' vision models and peft
        # (seconds at start-up), which the handmade and cnn encoders never need
        from medmm.models.encoders.checkpoints import ImageCheckpointConfig, build_image_encoder_from_checkpoint
    except ImportError:
        raise ConfigError("encoder.name=checkpoint: outside checkpoints are not available in this medmm "
                          "(medmm.models.encoders.checkpoints is missing); use encoder.name=cnn or handmade") from None
    spec = ImageCheckpointConfig(checkpoint=str(cfg.checkpoint), checkpoint_format=cfg.checkpoint_format,
                                 pooling=cfg.pooling, freeze_layers=-1)
    model = build_image_encoder_from_checkpoint(spec, input_mean=0.0, input_std=1.0,
                                                setting="encoder.checkpoint").eval()
    return _torch_encoder("checkpoint", model, int(model.feature_dim), f"checkpoint:{weights_sha256(model)}",
                          lambda x: x)


def build_tile_encoder(cfg: TileEncoderConfig, seed: int) -> TileEncoder:
    if cfg.name == "handmade":
        return handmade_encoder()
    if cfg.name == "cnn":
        if cfg.pretrained is not None:
            return pretrained_tower_encoder(cfg.pretrained, cfg.tracking_uri)
        return random_cnn_encoder(cfg.widths, seed)
    return checkpoint_encoder(cfg)
