"""Outside weights for the encoders: reading a local checkpoint, mapping its key names onto
an encoder, reporting what matched, and feeding the backbone the inputs it was trained on.

Formats (``checkpoint_format``; ``auto`` tells them apart by what the path holds):

- ``hf``: a Hugging Face model folder (``config.json`` + weights), loaded with
  ``from_pretrained(path)`` offline: a ViT, DINOv2, ConvNeXt, ResNet, ... vision model, or the
  vision tower of a CLIP folder. Its ``preprocessor_config.json`` gives mean / std / size.
- ``timm``: one state-dict file (``.safetensors``, or ``.pt`` / ``.pth`` / ``.bin`` read with
  ``torch.load(weights_only=True)``) with timm's key names for the ResNet, ConvNeXt or ViT
  families. timm itself is not a dependency: the architecture is read off the tensor shapes
  and the weights are mapped onto the equivalent ``transformers`` model (:data:`TIMM_KEY_MAPS`).
  Normalisation: ImageNet mean / std (timm's default for these families), 224 pixels for
  the CNNs and the position grid's size for ViT.
- ``medmm``: a medmm pretraining folder (``model.safetensors`` + ``config.yaml``, as
  ``medmm.workflows.pretrained.save_pretrained_folder`` writes it, also under ``artifacts/``).
- ``torch``: a plain state dict (safetensors or weights-only ``torch.load``) for a medmm
  architecture, with a key map from config: ``checkpoint_prefix`` (kept and stripped: keys
  without it are unused) and ``checkpoint_rename`` (``{old prefix: new prefix}``).

Nothing is unpickled: safetensors or ``torch.load(weights_only=True)`` only. Every load logs
a :class:`LoadReport` (matched / missing / unused keys, one line each) and refuses a tensor
whose shape does not fit, naming the key and both shapes.

:class:`CheckpointImageEncoder` wraps a loaded image backbone. It takes what the data path
gives (medmm's normalised X-rays ``(x - 0.5) / 0.25``, one channel, or any other declared
``input_mean`` / ``input_std``), maps it back to [0, 1] intensities, repeats one channel to
three for a three-channel backbone, resizes to the checkpoint's image size and applies the
checkpoint's mean / std inside the model. The data path stays the same for every backbone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file
from torch import nn

from medmm.config.core import ConfigError, StrictModel, load_yaml
from medmm.io.errors import MedmmInputError

log = logging.getLogger("medmm.models.checkpoints")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TIMM_CNN_IMAGE_SIZE = 224  # timm's default input size of its ResNet / ConvNeXt weights
MEDMM_WEIGHTS, MEDMM_CONFIG = "model.safetensors", "config.yaml"  # a medmm pretraining folder
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
REPORT_NAMES = 5  # names shown per report line

ImageFormat = Literal["auto", "hf", "timm", "medmm", "torch"]
Pooling = Literal["auto", "pooler", "cls", "mean"]


class ImageCheckpointConfig(StrictModel):
    """How an image encoder starts from a local checkpoint (the X-ray encoder's config
    extends it; a tile encoder may use it alone)."""

    checkpoint: str | None = Field(
        None, description="local checkpoint: a Hugging Face model folder, a timm state-dict file (.safetensors / "
                          ".pt), a medmm pretraining folder, or a plain state dict for the cnn / vit encoders")
    checkpoint_format: ImageFormat = Field(
        "auto", description="hf | timm | medmm | torch; auto: a folder with config.json is hf, one with "
                            "model.safetensors + config.yaml medmm, a file timm (name: pretrained) or torch")
    checkpoint_prefix: str | None = Field(
        None, description="state-dict files: keep only keys starting with this prefix and strip it "
                          "(e.g. 'module.' or 'encoders.xray.')")
    checkpoint_rename: dict[str, str] = Field(
        {}, description="state-dict files: key prefixes renamed after the prefix is stripped ({old: new})")
    pooling: Pooling = Field(
        "auto", description="feature of an HF / timm backbone: auto (its pooled output, else the CLS token, else "
                            "the spatial mean), pooler, cls or mean (mean of the tokens / of the feature map)")
    image_size: int | None = Field(
        None, description="input size of the backbone (default: the checkpoint's preprocessor / config)")
    image_mean: list[float] | None = Field(None, description="input mean of the backbone (default: the checkpoint's)")
    image_std: list[float] | None = Field(None, description="input std of the backbone (default: the checkpoint's)")
    timm_vit_heads: int | None = Field(
        None, description="attention heads of a timm ViT (not stored in its weights; default width / 64)")
    freeze_layers: int = Field(
        0, ge=-1, description="freeze the stem and the first N blocks of the backbone (0: train all; -1: freeze all)")
    lora_r: int = Field(0, ge=0, description="LoRA rank on the backbone (0: no LoRA; LoRA trains only the adapters)")
    lora_alpha: int = Field(16, description="LoRA alpha")
    lora_dropout: float = Field(0.0, description="LoRA dropout")
    lora_targets: list[str] | None = Field(
        None, description="module names adapted by LoRA (default: the attention q / v projections, ConvNeXt's "
                          "pointwise convs)")


# --- reading and mapping state dicts ----------------------------------------------------


@dataclass
class LoadReport:
    """What loading a checkpoint did: ``matched`` / ``missing`` in the encoder's key names,
    ``unused`` in the checkpoint's."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def lines(self, what: str) -> list[str]:
        def line(label: str, names: list[str]) -> str:
            shown = ", ".join(names[:REPORT_NAMES]) + (", ..." if len(names) > REPORT_NAMES else "")
            return f"{what} checkpoint: {len(names)} keys {label}" + (f" ({shown})" if names else "")

        return [line("matched", self.matched), line("missing", self.missing), line("unused", self.unused)]

    def log(self, what: str) -> None:
        matched, missing, unused = self.lines(what)
        log.info(matched)
        (log.warning if self.missing else log.info)(missing)
        log.info(unused)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a weights-only ``torch.load`` (a dict holding
    the state dict under ``state_dict`` / ``model``, as training checkpoints do, is opened)."""
    path = Path(path)
    try:
        state: Any = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors, pickle and zip raise several types
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MedmmInputError(path, f"not a safetensors / weights-only PyTorch state dict ({why})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state:
        raise MedmmInputError(path, "holds no state dict (a mapping of names to tensors)")
    tensors = {str(k): v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise MedmmInputError(path, "its state dict holds no tensors")
    return tensors


def map_keys(state: Mapping[str, torch.Tensor], prefix: str | None = None,
             rename: Mapping[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` with ``prefix`` stripped (keys without it dropped) and key prefixes renamed
    (``rename``: the longest matching old prefix wins); also new name -> original name."""
    out, origin = {}, {}
    renames = sorted((rename or {}).items(), key=lambda kv: -len(kv[0]))
    for key, value in state.items():
        name = key
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix):]
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name], origin[name] = value, key
    return out, origin


def load_matching(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path,
                  origin: Mapping[str, str] | None = None, all_keys: list[str] | None = None) -> LoadReport:
    """Copy the tensors of ``state`` whose names and shapes fit ``module``; a name that fits
    with another shape is refused (naming the key and both shapes). ``origin``: the
    checkpoint's name of each key of ``state``; ``all_keys``: every key the checkpoint held
    (unused = those not loaded)."""
    own = module.state_dict()
    for name, expected in own.items():  # the encoder's order: the first misfit is the earliest layer's
        if name in state and tuple(state[name].shape) != tuple(expected.shape):
            shown = (origin or {}).get(name, name)
            raise MedmmInputError(source, f"key {shown!r} has shape {tuple(state[name].shape)} in the checkpoint but "
                                          f"{tuple(expected.shape)} in the encoder (a different architecture or size)")
    fitting = {k: v for k, v in state.items() if k in own}
    module.load_state_dict(fitting, strict=False)
    used = {(origin or {}).get(k, k) for k in fitting}
    original = all_keys if all_keys is not None else [(origin or {}).get(k, k) for k in state]
    return LoadReport(matched=[k for k in own if k in fitting], missing=[k for k in own if k not in fitting],
                      unused=[k for k in original if k not in used])


def load_state_dict_file(module: nn.Module, path: str | Path, prefix: str | None = None,
                         rename: Mapping[str, str] | None = None) -> LoadReport:
    """A plain state-dict file into ``module`` through the key map (``prefix``, ``rename``)."""
    raw = read_state_dict(path)
    state, origin = map_keys(raw, prefix, rename)
    return load_matching(module, state, path, origin, list(raw))


# --- medmm pretraining folders ---------------------------------------------------------------


def medmm_folder(path: str | Path) -> Path | None:
    """The folder holding ``model.safetensors`` + ``config.yaml`` at ``path`` (itself, its
    ``artifacts/`` or ``model/artifacts/``: a pretraining run's saved model), or None."""
    path = Path(path)
    if path.is_file() and path.name == MEDMM_WEIGHTS:
        path = path.parent
    for folder in (path, path / "artifacts", path / "model" / "artifacts"):
        if (folder / MEDMM_WEIGHTS).is_file() and (folder / MEDMM_CONFIG).is_file():
            return folder
    return None


def read_medmm_encoder(path: str | Path, modality: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(the stored config, the ``modality`` encoder's section of its ``model``, the folder) of
    a medmm pretraining folder that holds a ``modality`` encoder."""
    folder = medmm_folder(path)
    if folder is None:
        raise MedmmInputError(path, f"holds no {MEDMM_WEIGHTS} + {MEDMM_CONFIG} (expected a medmm pretraining folder)")
    stored = load_yaml(folder / MEDMM_CONFIG)
    model = stored.get("model") or {}
    if modality not in (model.get("modalities") or []) or not isinstance(model.get(modality, {}), dict):
        raise MedmmInputError(path, f"the stored model has no {modality} encoder (model.modalities: "
                                    f"{model.get('modalities')})")
    return stored, dict(model.get(modality) or {}), folder


def load_medmm_encoder(module: nn.Module, path: str | Path, modality: str) -> LoadReport:
    """The ``encoders.<modality>.*`` weights of a medmm pretraining folder into ``module``."""
    folder = medmm_folder(path)
    if folder is None:
        raise MedmmInputError(path, f"holds no {MEDMM_WEIGHTS} + {MEDMM_CONFIG} (expected a medmm pretraining folder)")
    return load_state_dict_file(module, folder / MEDMM_WEIGHTS, prefix=f"encoders.{modality}.")


def load_encoder_checkpoint(encoder: nn.Module, cfg: Any, modality: str, what: str) -> nn.Module:
    """``cfg.checkpoint`` (a medmm folder, or a plain state dict through ``cfg``'s key map)
    into the medmm ``encoder`` of ``modality``; the load report is logged as ``what`` and kept
    as ``encoder.load_report``."""
    setting = f"model.{modality}.checkpoint"
    fmt = state_dict_format(cfg.checkpoint, cfg.checkpoint_format, "torch", ("medmm", "torch"), setting)
    if fmt == "medmm":
        report = load_medmm_encoder(encoder, cfg.checkpoint, modality)
    else:
        report = load_state_dict_file(encoder, cfg.checkpoint, cfg.checkpoint_prefix, cfg.checkpoint_rename)
    report.log(what)
    encoder.load_report = report
    return encoder


def state_dict_format(path: str | Path, fmt: str, file_format: str, allowed: tuple[str, ...], setting: str) -> str:
    """The format of ``path`` (``fmt`` unless ``auto``): ``hf`` for a folder with
    ``config.json``, ``medmm`` for a medmm pretraining folder, ``file_format`` for a file."""
    path = Path(path)
    if not path.exists():
        raise MedmmInputError(path, f"no such checkpoint file or folder ({setting})")
    if fmt == "auto":
        if medmm_folder(path) is not None:
            fmt = "medmm"
        elif path.is_dir() and (path / "config.json").is_file():
            fmt = "hf"
        elif path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
            fmt = file_format
        else:
            raise MedmmInputError(path, f"not a checkpoint medmm recognises ({setting}): a Hugging Face folder "
                                        f"(config.json), a medmm pretraining folder ({MEDMM_WEIGHTS} + "
                                        f"{MEDMM_CONFIG}) or a state-dict file ({', '.join(STATE_DICT_SUFFIXES)})")
    if fmt not in allowed:
        raise ConfigError(f"{setting}: format {fmt!r} does not fit here (use one of {', '.join(allowed)})")
    return fmt


# --- Hugging Face folders --------------------------------------------------------------------


@contextmanager
def _quiet_transformers():
    """transformers prints its own load table and a progress bar; medmm's report replaces them."""
    from transformers.utils import logging as hf_logging  # see _transformers()

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _transformers():
    """The transformers package, imported on first use: every config imports this module, and
    a command's ``--help`` or a config error should not wait for it (about a second)."""
    import transformers

    return transformers


def load_hf_model(path: str | Path, model_class: Any = None, what: str = "encoder") -> tuple[nn.Module, LoadReport]:
    """``model_class.from_pretrained(path)`` offline (default ``AutoModel``), with medmm's load
    report; a tensor whose shape does not fit the folder's config is refused, naming the key."""
    model_class = model_class or _transformers().AutoModel
    with _quiet_transformers():
        try:
            model, info = model_class.from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                                      ignore_mismatched_sizes=True)
        except (OSError, ValueError) as exc:
            raise MedmmInputError(path, f"not a loadable Hugging Face model folder ({str(exc).splitlines()[0]})") \
                from None
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        key, stored, expected = mismatched[0]
        raise MedmmInputError(path, f"key {key!r} has shape {tuple(stored)} in the checkpoint but {tuple(expected)} "
                                    f"in the model its config.json describes")
    missing = set(info.get("missing_keys") or [])
    report = LoadReport(matched=[k for k in model.state_dict() if k not in missing], missing=sorted(missing),
                        unused=sorted(info.get("unexpected_keys") or []))
    report.log(what)
    return model, report


def _hf_vision_model(path: Path) -> tuple[nn.Module, LoadReport]:
    """The vision model of an HF folder: the vision tower of a CLIP folder, else ``AutoModel``."""
    hf = _transformers()
    config = hf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    model_class = hf.CLIPVisionModel if config.model_type in ("clip", "clip_vision_model") else hf.AutoModel
    return load_hf_model(path, model_class, "image encoder")


@dataclass(frozen=True)
class Preprocessing:
    """The input a backbone was trained on: [0, 1] intensities resized to ``size`` (None: as
    given), then ``(x - mean) / std`` per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None


def _size_of(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            return (int(value["shortest_edge"]),) * 2
    return None


def hf_preprocessing(path: Path, model_config: Any) -> Preprocessing:
    """Mean / std / size of an HF folder's ``preprocessor_config.json`` (the centre-crop size
    where it crops, as the model then sees that size); without one, ImageNet mean / std and
    the model config's ``image_size``."""
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, _size_of(getattr(model_config, "image_size", None))
    file = path / "preprocessor_config.json"
    if file.is_file():
        try:
            pre = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise MedmmInputError(file, f"unreadable preprocessor config ({exc})") from None
        if pre.get("do_normalize", True) and pre.get("image_mean") is not None:
            mean, std = tuple(pre["image_mean"]), tuple(pre["image_std"])
        elif not pre.get("do_normalize", True):
            mean, std = (0.0,), (1.0,)
        crop = _size_of(pre.get("crop_size")) if pre.get("do_center_crop") else None
        size = crop or _size_of(pre.get("size")) or size
    return Preprocessing(tuple(float(m) for m in mean), tuple(float(s) for s in std), size)


# --- timm state dicts ------------------------------------------------------------------------

# timm's key names -> the equivalent transformers model's, per family (regex, replacement);
# a ViT's fused ``attn.qkv`` is split into q / k / v (:func:`_split_qkv`). Keys no rule
# matches (timm's classifier ``head`` / ``fc``) are unused.
TIMM_KEY_MAPS: dict[str, list[tuple[str, str | Callable[[re.Match], str]]]] = {
    "vit": [
        (r"^cls_token$", "embeddings.cls_token"),
        (r"^pos_embed$", "embeddings.position_embeddings"),
        (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embeddings.projection.\1"),
        (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.layernorm_before."),
        (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.layernorm_after."),
        (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attention.o_proj."),
        (r"^blocks\.(\d+)\.mlp\.fc(1|2)\.", r"layers.\1.mlp.fc\2."),
        (r"^norm\.", "layernorm."),
    ],
    "resnet": [
        (r"^conv1\.weight$", "embedder.embedder.convolution.weight"),
        (r"^bn1\.", "embedder.embedder.normalization."),
        (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer."
                                                     f"{int(m[3]) - 1}.convolution."),
        (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer."
                                                   f"{int(m[3]) - 1}.normalization."),
        (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}."
                                                          f"shortcut.convolution."),
        (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}."
                                                          f"shortcut.normalization."),
    ],
    "convnext": [
        (r"^stem\.0\.", "embeddings.patch_embeddings."),
        (r"^stem\.1\.", "embeddings.layernorm."),
        (r"^stages\.(\d+)\.downsample\.(0|1)\.", r"encoder.stages.\1.downsampling_layer.\2."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"encoder.stages.\1.layers.\2.dwconv."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"encoder.stages.\1.layers.\2.layernorm."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"encoder.stages.\1.layers.\2.pwconv1."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"encoder.stages.\1.layers.\2.pwconv2."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", r"encoder.stages.\1.layers.\2.layer_scale_parameter"),
        (r"^head\.norm\.", "layernorm."),
    ],
}
_TIMM_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def timm_family(state: Mapping[str, torch.Tensor]) -> str | None:
    if "blocks.0.attn.qkv.weight" in state and "cls_token" in state and "pos_embed" in state:
        return "vit"
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "resnet"
    if "stem.0.weight" in state and "stages.0.blocks.0.conv_dw.weight" in state:
        return "convnext"
    return None


def _count(state: Mapping[str, Any], pattern: str) -> int:
    found = {int(m[1]) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def timm_to_hf(state: Mapping[str, torch.Tensor], family: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """timm-named tensors under the transformers model's names (:data:`TIMM_KEY_MAPS`), and
    new name -> timm name."""
    out, origin = {}, {}
    rules = [(re.compile(p), r) for p, r in TIMM_KEY_MAPS[family]]
    for key, value in state.items():
        if family == "vit" and (m := _TIMM_QKV.match(key)):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                new = f"layers.{m[1]}.attention.{name}.{m[2]}"
                out[new], origin[new] = part.contiguous(), key
            continue
        for pattern, replacement in rules:
            if pattern.match(key):
                new = pattern.sub(replacement, key, count=1)
                out[new], origin[new] = value, key
                break
    return out, origin


def timm_architecture(state: Mapping[str, torch.Tensor], family: str, vit_heads: int | None) -> nn.Module:
    """The transformers model equivalent to the timm model whose weights are ``state``,
    its sizes read off the tensor shapes (random weights)."""
    hf = _transformers()
    if family == "vit":
        width = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"]
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
        config = hf.ViTConfig(hidden_size=width, num_hidden_layers=_count(state, r"^blocks\.(\d+)\."),
                           num_attention_heads=vit_heads or max(1, width // 64),
                           intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
                           image_size=grid * patch.shape[-1],
                           patch_size=patch.shape[-1], num_channels=patch.shape[1], layer_norm_eps=1e-6,
                           qkv_bias="blocks.0.attn.qkv.bias" in state, hidden_act="gelu")
        # timm's ViT gives the CLS token after the final norm: no HF pooler (dense + tanh)
        return hf.ViTModel(config, add_pooling_layer=False)
    if family == "resnet":
        stages = _count(state, r"^layer(\d)\.") - 1  # layer1 .. layerN
        bottleneck = "layer1.0.conv3.weight" in state
        last = "conv3" if bottleneck else "conv2"
        stem = state["conv1.weight"]
        config = hf.ResNetConfig(num_channels=stem.shape[1], embedding_size=stem.shape[0],
                              hidden_sizes=[state[f"layer{s}.0.{last}.weight"].shape[0] for s in range(1, stages + 1)],
                              depths=[_count(state, rf"^layer{s}\.(\d+)\.") for s in range(1, stages + 1)],
                              layer_type="bottleneck" if bottleneck else "basic", hidden_act="relu",
                              downsample_in_first_stage=False, downsample_in_bottleneck=False)
        return hf.ResNetModel(config)
    stages = _count(state, r"^stages\.(\d+)\.")
    stem = state["stem.0.weight"]
    config = hf.ConvNextConfig(num_channels=stem.shape[1], patch_size=stem.shape[-1],
                            num_stages=stages,
                            hidden_sizes=[state[f"stages.{s}.blocks.0.conv_dw.weight"].shape[0] for s in range(stages)],
                            depths=[_count(state, rf"^stages\.{s}\.blocks\.(\d+)\.") for s in range(stages)],
                            layer_scale_init_value=1e-6 if "stages.0.blocks.0.gamma" in state else 0.0,
                            layer_norm_eps=1e-6, hidden_act="gelu", drop_path_rate=0.0)
    return hf.ConvNextModel(config)


def load_timm(path: str | Path, cfg: ImageCheckpointConfig) -> tuple[nn.Module, LoadReport, Preprocessing]:
    """A timm ResNet / ConvNeXt / ViT state-dict file as the equivalent transformers model."""
    raw = read_state_dict(path)
    state, origin = map_keys(raw, cfg.checkpoint_prefix, cfg.checkpoint_rename)
    family = timm_family(state)
    if family is None:
        raise MedmmInputError(path, "not a timm ResNet, ConvNeXt or ViT state dict (no cls_token / pos_embed / "
                                    "blocks.0.attn.qkv, layer1.0.conv1 or stages.0.blocks.0.conv_dw key; "
                                    "checkpoint_prefix strips a wrapper's prefix)")
    model = timm_architecture(state, family, cfg.timm_vit_heads)
    hf_state, hf_origin = timm_to_hf(state, family)
    report = load_matching(model, hf_state, path, {k: origin[v] for k, v in hf_origin.items()}, list(raw))
    report.log(f"image encoder (timm {family})")
    size = model.config.image_size if family == "vit" else TIMM_CNN_IMAGE_SIZE
    return model, report, Preprocessing(IMAGENET_MEAN, IMAGENET_STD, (size, size))


# --- the image encoder -----------------------------------------------------------------------

# candidate paths of a backbone's list of blocks, in the order they are tried
BLOCK_LISTS = ("layers", "encoder.layer", "encoder.layers", "vision_model.encoder.layers", "encoder.stages",
               "stages", "blocks", "transformer.layers")
LORA_DEFAULT_TARGETS = ("q_proj", "v_proj", "query", "value", "qkv", "pwconv1", "pwconv2")


def _blocks(module: nn.Module) -> tuple[str, nn.Module] | None:
    for path in BLOCK_LISTS:
        found = module
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, (nn.ModuleList, nn.Sequential)) and len(found):
            return path, found
    return None


def freeze_layers(module: nn.Module, n: int, setting: str = "freeze_layers") -> None:
    """Freeze the stem (the parameters registered before the first block) and the first ``n``
    blocks of ``module``; ``n = -1`` freezes every parameter. Blocks are the first list of
    :data:`BLOCK_LISTS` the module has (transformer layers, CNN stages)."""
    if n == 0:
        return
    if n < 0:
        module.requires_grad_(False)
        return
    found = _blocks(module)
    if found is None:
        raise ConfigError(f"{setting}: the encoder has no list of blocks to freeze layer-wise (use -1 to freeze all)")
    path, blocks = found
    if n > len(blocks):
        raise ConfigError(f"{setting} {n} > the encoder's {len(blocks)} blocks ({path})")
    for name, parameter in module.named_parameters():
        if name.startswith(path + "."):
            break
        parameter.requires_grad_(False)
    for block in list(blocks)[:n]:
        block.requires_grad_(False)


def add_lora(module: nn.Module, cfg: ImageCheckpointConfig, setting: str = "lora_targets") -> nn.Module:
    """LoRA adapters (peft) on ``cfg.lora_targets`` of ``module``; everything else frozen."""
    from peft import LoraConfig, inject_adapter_in_model  # ~4 s to import; only a LoRA run needs it

    names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    targets = cfg.lora_targets or [t for t in LORA_DEFAULT_TARGETS if t in names]
    if not targets or not set(targets) & names:
        wanted = cfg.lora_targets or "like an attention projection"
        raise ConfigError(f"{setting}: no module of the encoder is named {wanted}; name the layers to adapt "
                          "(e.g. convolution for a ResNet)")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(targets))
    return inject_adapter_in_model(lora, module)  # freezes every non-LoRA weight


def keep_frozen_norms_in_eval(module: nn.Module) -> None:
    """Batch norms whose affine parameters are all frozen keep their running statistics: a
    frozen block computes what it computed when it was trained."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = list(m.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                m.eval()


class CheckpointImageEncoder(nn.Module):
    """An outside image backbone behind medmm's encoder contract: [B, C, H, W] in the data
    path's normalisation -> [B, feature_dim].

    The input is mapped back to [0, 1] intensities (``input_mean`` / ``input_std`` of the data
    path: medmm's X-rays are ``(x - 0.5) / 0.25``), a one-channel image is repeated to the
    backbone's three channels, resized (bilinear, antialiased) to the checkpoint's size and
    normalised with the checkpoint's mean / std, so the backbone sees the inputs it was trained
    on while the data path stays the same for every backbone.
    """

    def __init__(self, backbone: nn.Module, preprocessing: Preprocessing, pooling: Pooling = "auto",
                 input_mean: float = 0.0, input_std: float = 1.0, channels: int = 3,
                 report: LoadReport | None = None):
        super().__init__()
        self.backbone, self.pooling, self.channels = backbone, pooling, channels
        self.preprocessing, self.load_report = preprocessing, report
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.register_buffer("image_mean", torch.tensor(preprocessing.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(preprocessing.std).view(1, -1, 1, 1), persistent=False)
        self.out_dim = self.feature_dim = self._probe_dim()

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.preprocessing.size

    def _probe_dim(self) -> int:
        size = self.image_size or (64, 64)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            dim = self._features(torch.zeros(1, self.channels, *size)).shape[-1]
        self.train(was_training)
        return int(dim)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            keep_frozen_norms_in_eval(self.backbone)
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The data path's images -> the backbone's input (class docstring)."""
        x = x.float() * self.input_std + self.input_mean
        if x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"{x.shape[1]}-channel images for a {self.channels}-channel backbone")
            x = x.expand(-1, self.channels, -1, -1)
        if self.image_size is not None and tuple(x.shape[-2:]) != tuple(self.image_size):
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.image_mean) / self.image_std

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._pool(self.backbone(pixel_values=pixels))

    def _pool(self, out) -> torch.Tensor:
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        if self.pooling in ("auto", "pooler") and pooled is not None:
            return pooled.flatten(1)
        if self.pooling == "pooler":
            raise ValueError("pooling 'pooler': the backbone gives no pooled output")
        if hidden.dim() == 4:  # a CNN's feature map [B, C, h, w]
            if self.pooling == "cls":
                raise ValueError("pooling 'cls': a convolutional backbone has no CLS token")
            return hidden.mean(dim=(2, 3))
        return hidden.mean(1) if self.pooling == "mean" else hidden[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(self.prepare(x))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1 + N, feature_dim]: the pooled feature, then the backbone's patch tokens (a
        transformer's tokens after its CLS, a CNN's last feature map cell by cell), for
        decoders that attend over the image."""
        out = self.backbone(pixel_values=self.prepare(x))
        hidden = out.last_hidden_state
        grid = hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden[:, 1:]
        pooled = self._pool(out)
        if grid.shape[-1] != pooled.shape[-1]:
            raise ValueError(f"the backbone's tokens are {grid.shape[-1]}-wide, its pooled feature {pooled.shape[-1]}")
        return torch.cat([pooled[:, None], grid], dim=1)


def _channels(backbone: nn.Module) -> int:
    config = getattr(backbone, "config", None)
    return int(getattr(config, "num_channels", 3) or 3)


def build_image_encoder_from_checkpoint(cfg: ImageCheckpointConfig, input_mean: float = 0.0, input_std: float = 1.0,
                                        setting: str = "checkpoint") -> CheckpointImageEncoder:
    """An image encoder from an HF folder or a timm state-dict file (``cfg.checkpoint``), with
    the checkpoint's normalisation, ``cfg``'s pooling, layer freezing and LoRA; ``input_mean`` /
    ``input_std``: how the images given to it are normalised ([0, 1] intensities: 0 / 1).
    ``.feature_dim`` is its output width."""
    if not cfg.checkpoint:
        raise ConfigError(f"{setting} is required: a Hugging Face model folder or a timm state-dict file")
    path = Path(cfg.checkpoint)
    fmt = state_dict_format(path, cfg.checkpoint_format, "timm", ("hf", "timm"), setting)
    if fmt == "hf":
        backbone, report = _hf_vision_model(path)
        preprocessing = hf_preprocessing(path, backbone.config)
    else:
        backbone, report, preprocessing = load_timm(path, cfg)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else preprocessing.size
    preprocessing = Preprocessing(tuple(cfg.image_mean or preprocessing.mean),
                                  tuple(cfg.image_std or preprocessing.std), size)
    if cfg.lora_r > 0:
        backbone = add_lora(backbone, cfg)
    freeze_layers(backbone, cfg.freeze_layers)
    return CheckpointImageEncoder(backbone, preprocessing, cfg.pooling, input_mean, input_std, _channels(backbone),
                                  report)
