"""Encoders starting from outside checkpoints, made here offline: Hugging Face vision folders
(save_pretrained), timm-named state dicts (safetensors and torch.save), medmm pretraining
folders, plain ECG state dicts and a BERT folder. Each loaded encoder must reproduce the
saved model's outputs; timm checkpoints are checked against a functional implementation of
timm's forward pass written below from timm's architecture (not from the key map)."""

from __future__ import annotations

import datetime
import json
import logging

import pytest
import torch
import torch.nn.functional as F
import transformers as hf
from safetensors.torch import save_file

from medmm.config.core import ConfigError, build_config
from medmm.data.augment import XRAY_MEAN, XRAY_STD, normalise_xray
from medmm.data.tokenizer import load_tokenizer, packaged_minilm_path
from medmm.io.errors import MedmmInputError
from medmm.models.encoders.checkpoints import IMAGENET_MEAN, IMAGENET_STD, LoadReport
from medmm.models.encoders.ecg import ECGEncoderConfig, build_ecg_encoder
from medmm.models.encoders.text import MiniLMLoRATextEncoder, TextEncoderConfig, masked_mean
from medmm.models.encoders.xray import XrayEncoderConfig, build_xray_encoder
from medmm.models.heads.report_decoder import xray_token_dim, xray_tokens
from medmm.models.more import ModelConfig, MultiModalContrastiveModel
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.preflight import check_model_checkpoints
from medmm.workflows.pretrained import save_pretrained_folder
from tests.conftest import TINY_CONFIG, tiny_overrides

ATOL = 1e-6


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def medmm_input(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    """X-rays as the data path gives them: [0, 1] intensities, normalised by medmm."""
    return normalise_xray(torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)))


def backbone_pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """What the checkpoint's own preprocessing makes of the same images (no resize needed)."""
    x01 = (x * XRAY_STD + XRAY_MEAN).repeat(1, 3, 1, 1)
    return (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --- Hugging Face folders ---------------------------------------------------------------------

def _vit(folder):
    model = hf.ViTModel(hf.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                     image_size=32, patch_size=8))
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
         "size": {"height": 32, "width": 32}}))
    return model, lambda out: out.pooler_output, (0.5,) * 3, (0.5,) * 3, 32


def _dinov2(folder):
    model = hf.Dinov2Model(hf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=24,
                                           patch_size=8, mlp_ratio=2))
    model.save_pretrained(folder)
    mean, std = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": mean, "image_std": std, "size": {"shortest_edge": 32},
         "do_center_crop": True, "crop_size": {"height": 24, "width": 24}}))
    return model, lambda out: out.pooler_output, tuple(mean), tuple(std), 24


def _convnext(folder):  # no preprocessor config: ImageNet statistics, the config's image size
    model = hf.ConvNextModel(hf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, image_size=32))
    model.save_pretrained(folder)
    return model, lambda out: out.pooler_output, IMAGENET_MEAN, IMAGENET_STD, 32


def _clip(folder):  # a whole CLIP folder: its vision tower is loaded, the text tower is unused
    config = hf.CLIPConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                     "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    model = hf.CLIPModel(config)
    model.save_pretrained(folder)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": mean, "image_std": std, "size": {"shortest_edge": 32},
         "do_center_crop": True, "crop_size": {"height": 32, "width": 32}}))
    return model.vision_model, lambda out: out.pooler_output, tuple(mean), tuple(std), 32


@pytest.mark.parametrize("make", [_vit, _dinov2, _convnext, _clip], ids=["vit", "dinov2", "convnext", "clip"])
def test_hf_folder_reproduces_the_saved_model_with_its_normalisation(make, tmp_path):
    seeded()
    folder = tmp_path / "hf"
    model, feature, mean, std, size = make(folder)
    encoder = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(folder)), 64).eval()
    assert encoder.preprocessing.mean == pytest.approx(mean) and encoder.preprocessing.std == pytest.approx(std)
    assert encoder.image_size == (size, size)
    x = medmm_input(size)
    with torch.no_grad():
        expected = feature(model.eval()(pixel_values=backbone_pixels(x, mean, std)))
        got = encoder(x)
    assert got.shape == (2, encoder.feature_dim) and encoder.out_dim == encoder.feature_dim
    assert torch.allclose(got, expected, atol=ATOL, rtol=0)
    with torch.no_grad():  # a report decoder's view: the pooled feature first, then the patch tokens
        tokens = encoder.tokens(x)
    assert tokens.shape[-1] == encoder.feature_dim and torch.allclose(tokens[:, 0], got, atol=ATOL)
    assert torch.equal(xray_tokens(encoder, x), tokens)  # what a report generator reads
    assert xray_token_dim(encoder) == encoder.feature_dim
    report = encoder.load_report
    assert report.missing == [] and len(report.matched) == len(encoder.backbone.state_dict())
    if make is _clip:
        assert report.unused and all(not k.startswith("vision_model.") for k in report.unused)
        assert any(k.startswith("text_model.") for k in report.unused)
    else:
        assert report.unused == []


def test_images_are_repeated_to_three_channels_resized_and_normalised_as_the_checkpoint_says(tmp_path):
    seeded()
    _vit(tmp_path / "hf")
    encoder = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "hf")), 48)
    grey = 0.7
    pixels = encoder.prepare(normalise_xray(torch.full((1, 1, 48, 48), grey)))
    assert pixels.shape == (1, 3, 32, 32)
    for c in range(3):  # the ViT folder's preprocessor: mean 0.5, std 0.5
        assert torch.allclose(pixels[0, c], torch.full((32, 32), (grey - 0.5) / 0.5), atol=1e-5)
    overridden = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "hf"),
                                                      image_mean=[0.1, 0.2, 0.3], image_std=[1, 1, 1]), 48)
    assert overridden.preprocessing.mean == (0.1, 0.2, 0.3)


def test_hf_checkpoint_that_does_not_fit_its_config_is_refused_naming_the_key(tmp_path):
    seeded()
    _vit(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["intermediate_size"] = 48
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MedmmInputError, match=r"key 'layers\.0\.mlp\.fc1\.(weight|bias)' has shape \(64.*\) in the "
                                              r"checkpoint but \(48.*\)") as err:
        build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "hf")), 32)
    assert "\n" not in str(err.value)


# --- timm state dicts, against timm's forward written out -------------------------------------

def _bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(c), f"{prefix}.bias": 0.1 * torch.randn(c),
            f"{prefix}.running_mean": 0.1 * torch.randn(c), f"{prefix}.running_var": 0.5 + torch.rand(c),
            f"{prefix}.num_batches_tracked": torch.tensor(3)}


def _ln(prefix: str, c: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(c), f"{prefix}.bias": 0.1 * torch.randn(c)}


def _linear(prefix: str, cout: int, cin: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.randn(cout, cin) / cin ** 0.5, f"{prefix}.bias": 0.1 * torch.randn(cout)}


def timm_vit_state(width=32, depth=2, patch=8, grid=4) -> dict[str, torch.Tensor]:
    s = {"cls_token": 0.1 * torch.randn(1, 1, width), "pos_embed": 0.1 * torch.randn(1, grid * grid + 1, width),
         "patch_embed.proj.weight": torch.randn(width, 3, patch, patch) / (3 * patch * patch) ** 0.5,
         "patch_embed.proj.bias": 0.1 * torch.randn(width), **_ln("norm", width), **_linear("head", 5, width)}
    for i in range(depth):
        b = f"blocks.{i}"
        s.update({**_ln(f"{b}.norm1", width), **_linear(f"{b}.attn.qkv", 3 * width, width),
                  **_linear(f"{b}.attn.proj", width, width), **_ln(f"{b}.norm2", width),
                  **_linear(f"{b}.mlp.fc1", 2 * width, width), **_linear(f"{b}.mlp.fc2", width, 2 * width)})
    return s


def timm_vit_forward(s, x, heads):
    """timm's VisionTransformer (class token, pre-norm blocks, final norm, token pooling)."""
    width = s["cls_token"].shape[-1]
    patch = s["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    t = torch.cat([s["cls_token"].expand(len(x), -1, -1), t], 1) + s["pos_embed"]
    depth = len({k.split(".")[1] for k in s if k.startswith("blocks.")})

    def ln(v, p):
        return F.layer_norm(v, (width,), s[f"{p}.weight"], s[f"{p}.bias"], eps=1e-6)

    for i in range(depth):
        b = f"blocks.{i}"
        n, hd = t.shape[1], width // heads
        qkv = F.linear(ln(t, f"{b}.norm1"), s[f"{b}.attn.qkv.weight"], s[f"{b}.attn.qkv.bias"])
        q, k, v = qkv.reshape(len(x), n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1) @ v
        t = t + F.linear(attn.transpose(1, 2).reshape(len(x), n, width), s[f"{b}.attn.proj.weight"],
                         s[f"{b}.attn.proj.bias"])
        h = F.gelu(F.linear(ln(t, f"{b}.norm2"), s[f"{b}.mlp.fc1.weight"], s[f"{b}.mlp.fc1.bias"]))
        t = t + F.linear(h, s[f"{b}.mlp.fc2.weight"], s[f"{b}.mlp.fc2.bias"])
    return ln(t, "norm")[:, 0]


def timm_resnet_state(stem=8, widths=(16, 32), depths=(1, 2)) -> dict[str, torch.Tensor]:
    """A bottleneck ResNet (timm's resnet50 layout) with a classifier ``fc``."""
    s = {"conv1.weight": torch.randn(stem, 3, 7, 7) / (3 * 49) ** 0.5, **_bn("bn1", stem),
         **_linear("fc", 5, widths[-1])}
    cin = stem
    for i, (w, d) in enumerate(zip(widths, depths), start=1):
        mid = w // 4
        for j in range(d):
            b = f"layer{i}.{j}"
            s.update({f"{b}.conv1.weight": torch.randn(mid, cin, 1, 1) / cin ** 0.5, **_bn(f"{b}.bn1", mid),
                      f"{b}.conv2.weight": torch.randn(mid, mid, 3, 3) / (9 * mid) ** 0.5, **_bn(f"{b}.bn2", mid),
                      f"{b}.conv3.weight": torch.randn(w, mid, 1, 1) / mid ** 0.5, **_bn(f"{b}.bn3", w)})
            if j == 0:
                s.update({f"{b}.downsample.0.weight": torch.randn(w, cin, 1, 1) / cin ** 0.5,
                          **_bn(f"{b}.downsample.1", w)})
            cin = w
    return s


def timm_resnet_forward(s, x):
    def bn(v, p):
        return F.batch_norm(v, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                            training=False, eps=1e-5)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    stage = 1
    while f"layer{stage}.0.conv1.weight" in s:
        j = 0
        while f"layer{stage}.{j}.conv1.weight" in s:
            b, stride = f"layer{stage}.{j}", (2 if stage > 1 and j == 0 else 1)
            out = F.relu(bn(F.conv2d(x, s[f"{b}.conv1.weight"]), f"{b}.bn1"))
            out = F.relu(bn(F.conv2d(out, s[f"{b}.conv2.weight"], stride=stride, padding=1), f"{b}.bn2"))
            out = bn(F.conv2d(out, s[f"{b}.conv3.weight"]), f"{b}.bn3")
            short = (bn(F.conv2d(x, s[f"{b}.downsample.0.weight"], stride=stride), f"{b}.downsample.1")
                     if f"{b}.downsample.0.weight" in s else x)
            x = F.relu(out + short)
            j += 1
        stage += 1
    return x.mean(dim=(2, 3))


def timm_convnext_state(widths=(8, 16), depths=(1, 2)) -> dict[str, torch.Tensor]:
    s = {"stem.0.weight": torch.randn(widths[0], 3, 4, 4) / 48 ** 0.5, "stem.0.bias": 0.1 * torch.randn(widths[0]),
         **_ln("stem.1", widths[0]), **_ln("head.norm", widths[-1]), **_linear("head.fc", 5, widths[-1])}
    for i, (w, d) in enumerate(zip(widths, depths)):
        if i:
            cin = widths[i - 1]
            s.update({**_ln(f"stages.{i}.downsample.0", cin),
                      f"stages.{i}.downsample.1.weight": torch.randn(w, cin, 2, 2) / (4 * cin) ** 0.5,
                      f"stages.{i}.downsample.1.bias": 0.1 * torch.randn(w)})
        for j in range(d):
            b = f"stages.{i}.blocks.{j}"
            s.update({f"{b}.conv_dw.weight": torch.randn(w, 1, 7, 7) / 7, f"{b}.conv_dw.bias": 0.1 * torch.randn(w),
                      **_ln(f"{b}.norm", w), **_linear(f"{b}.mlp.fc1", 4 * w, w), **_linear(f"{b}.mlp.fc2", w, 4 * w),
                      f"{b}.gamma": 0.5 + torch.rand(w)})
    return s


def timm_convnext_forward(s, x):
    def ln2d(v, p):  # timm's LayerNorm2d: over channels of an NCHW map
        return F.layer_norm(v.permute(0, 2, 3, 1), (v.shape[1],), s[f"{p}.weight"], s[f"{p}.bias"],
                            eps=1e-6).permute(0, 3, 1, 2)

    x = ln2d(F.conv2d(x, s["stem.0.weight"], s["stem.0.bias"], stride=4), "stem.1")
    i = 0
    while f"stages.{i}.blocks.0.conv_dw.weight" in s:
        if f"stages.{i}.downsample.1.weight" in s:
            x = F.conv2d(ln2d(x, f"stages.{i}.downsample.0"), s[f"stages.{i}.downsample.1.weight"],
                         s[f"stages.{i}.downsample.1.bias"], stride=2)
        j = 0
        while f"stages.{i}.blocks.{j}.conv_dw.weight" in s:
            b = f"stages.{i}.blocks.{j}"
            h = F.conv2d(x, s[f"{b}.conv_dw.weight"], s[f"{b}.conv_dw.bias"], padding=3, groups=x.shape[1])
            h = F.layer_norm(h.permute(0, 2, 3, 1), (x.shape[1],), s[f"{b}.norm.weight"], s[f"{b}.norm.bias"], eps=1e-6)
            h = F.linear(F.gelu(F.linear(h, s[f"{b}.mlp.fc1.weight"], s[f"{b}.mlp.fc1.bias"])),
                         s[f"{b}.mlp.fc2.weight"], s[f"{b}.mlp.fc2.bias"])
            x = x + (h * s[f"{b}.gamma"]).permute(0, 3, 1, 2)
            j += 1
        i += 1
    return F.layer_norm(x.mean(dim=(2, 3)), (x.shape[1],), s["head.norm.weight"], s["head.norm.bias"], eps=1e-6)


TIMM = {"vit": (timm_vit_state, lambda s, x: timm_vit_forward(s, x, heads=2), 32, ["head.weight", "head.bias"]),
        "resnet": (timm_resnet_state, timm_resnet_forward, 224, ["fc.weight", "fc.bias"]),
        "convnext": (timm_convnext_state, timm_convnext_forward, 224, ["head.fc.weight", "head.fc.bias"])}


@pytest.mark.parametrize("saver", ["safetensors", "torch"])
@pytest.mark.parametrize("family", list(TIMM))
def test_timm_state_dict_matches_timms_forward(family, saver, tmp_path):
    seeded()
    make_state, forward, size, unused = TIMM[family]
    state = make_state()
    if saver == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file(state, str(path))
    else:  # a training checkpoint: the state dict under "state_dict", DDP's "module." prefix
        path = tmp_path / "weights.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    cfg = XrayEncoderConfig(name="pretrained", checkpoint=str(path), timm_vit_heads=2,
                            checkpoint_prefix="module." if saver == "torch" else None)
    encoder = build_xray_encoder(cfg, 64).eval()
    assert encoder.preprocessing.mean == IMAGENET_MEAN and encoder.image_size == (size, size)
    x = medmm_input(size)
    with torch.no_grad():
        got, expected = encoder(x), forward(state, backbone_pixels(x, IMAGENET_MEAN, IMAGENET_STD))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # same maths, another order of sums
    prefix = "module." if saver == "torch" else ""
    report = encoder.load_report
    assert sorted(report.unused) == sorted(prefix + k for k in unused)
    assert report.missing == []


def test_timm_shape_mismatch_is_refused_naming_the_timm_key(tmp_path):
    seeded()
    state = timm_convnext_state()
    state["stages.1.blocks.1.gamma"] = torch.ones(3)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(MedmmInputError, match=r"key 'stages\.1\.blocks\.1\.gamma' has shape \(3,\) in the checkpoint "
                                              r"but \(16,\)"):
        build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "w.safetensors")), 64)


def test_an_unknown_state_dict_layout_is_refused(tmp_path):
    save_file({"foo.weight": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(MedmmInputError, match="not a timm ResNet, ConvNeXt or ViT"):
        build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "w.safetensors")), 64)


# --- medmm folders and plain state dicts ------------------------------------------------------

def test_medmm_folder_gives_back_the_pretrained_towers(tmp_path):
    seeded()
    model_cfg = ModelConfig(modalities=["xray", "ecg"], embed_dim=8, proj_hidden=8,
                            xray=XrayEncoderConfig(widths=[4, 8, 8, 8]), ecg=ECGEncoderConfig(dim=8, depth=1, heads=2))
    config = PretrainConfig.model_validate({"model": model_cfg.model_dump(), "data": {"image_size": 32},
                                            "loss": {"pairs": [["xray", "ecg"]]}})
    model = MultiModalContrastiveModel(model_cfg, 32).eval()
    folder = save_pretrained_folder(model, config, tmp_path / "run")
    x, ecg = medmm_input(32), torch.randn(2, 12, 500)

    stored = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(folder)), 32).eval()
    into_cnn = build_xray_encoder(XrayEncoderConfig(widths=[4, 8, 8, 8], checkpoint=str(folder)), 32).eval()
    ecg_encoder = build_ecg_encoder(ECGEncoderConfig(dim=8, depth=1, heads=2, checkpoint=str(folder))).eval()
    with torch.no_grad():
        assert torch.equal(stored(x), model.encoders["xray"](x))
        assert torch.equal(into_cnn(x), model.encoders["xray"](x))
        assert torch.equal(ecg_encoder(ecg), model.encoders["ecg"](ecg))
    assert ecg_encoder.load_report.missing == [] and len(ecg_encoder.load_report.matched) == len(
        ecg_encoder.state_dict())
    assert all(k.startswith(("encoders.xray.", "projections.", "missing.", "logit_scale"))
               for k in ecg_encoder.load_report.unused)
    with pytest.raises(MedmmInputError, match=r"'encoders\.xray\.stem\.0\.weight' has shape \(4, 1, 5, 5\) in the "
                                              r"checkpoint but \(16, 1, 5, 5\)"):
        build_xray_encoder(XrayEncoderConfig(widths=[16, 8, 8, 8], checkpoint=str(folder)), 32)


def test_medmm_folder_of_an_outside_backbone_pretrained_further(tmp_path):
    seeded()
    _vit(tmp_path / "hf")
    model_cfg = ModelConfig(modalities=["xray", "ecg"], embed_dim=8, proj_hidden=8,
                            xray=XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "hf"), lora_r=2),
                            ecg=ECGEncoderConfig(dim=8, depth=1, heads=2))
    config = PretrainConfig.model_validate({"model": model_cfg.model_dump(), "data": {"image_size": 32},
                                            "loss": {"pairs": [["xray", "ecg"]]}})
    model = MultiModalContrastiveModel(model_cfg, 32).eval()
    with torch.no_grad():  # as after training: the adapters and the backbone's last norm moved
        for name, parameter in model.encoders["xray"].named_parameters():
            if ".lora_B." in name or name.startswith("backbone.layernorm."):
                parameter.add_(0.1 * torch.randn_like(parameter))
    folder = save_pretrained_folder(model, config, tmp_path / "run")
    encoder = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(folder)), 32).eval()
    assert encoder.load_report.missing == []
    x = medmm_input(32)
    with torch.no_grad():
        assert torch.equal(encoder(x), model.encoders["xray"](x))


def test_plain_ecg_state_dict_through_the_key_map(tmp_path, caplog):
    seeded()
    cfg = ECGEncoderConfig(dim=8, depth=1, heads=2)
    source = build_ecg_encoder(cfg).eval()
    state = {f"module.{k.replace('tokenizer.', 'conv_stem.')}": v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "ecg.pt")
    mapped = cfg.model_copy(update={"checkpoint": str(tmp_path / "ecg.pt"), "checkpoint_prefix": "module.",
                                    "checkpoint_rename": {"conv_stem.": "tokenizer."}})
    loaded = build_ecg_encoder(mapped).eval()
    signal = torch.randn(2, 12, 500)
    with torch.no_grad():
        assert torch.equal(loaded(signal), source(signal))

    # a partial checkpoint: two keys dropped, one extra, one outside the prefix
    del state["module.norm.weight"], state["module.norm.bias"]
    state["module.head.weight"] = torch.zeros(3)
    state["ema.pos"] = torch.zeros(1)
    save_file(state, str(tmp_path / "ecg.safetensors"))
    with caplog.at_level(logging.INFO, logger="medmm.models.checkpoints"):
        report: LoadReport = build_ecg_encoder(mapped.model_copy(update={
            "checkpoint": str(tmp_path / "ecg.safetensors")})).load_report
    assert report.missing == ["norm.weight", "norm.bias"]
    assert sorted(report.unused) == ["ema.pos", "module.head.weight"]
    assert len(report.matched) == len(source.state_dict()) - 2
    lines = [r.getMessage() for r in caplog.records if r.name == "medmm.models.checkpoints"]
    first = ", ".join(report.matched[:5])
    assert lines == [f"ECG encoder checkpoint: {len(report.matched)} keys matched ({first}, ...)",
                     "ECG encoder checkpoint: 2 keys missing (norm.weight, norm.bias)",
                     f"ECG encoder checkpoint: 2 keys unused ({', '.join(report.unused)})"]
    assert [r.levelname for r in caplog.records if r.name == "medmm.models.checkpoints"] == ["INFO", "WARNING", "INFO"]

    wider = build_ecg_encoder(ECGEncoderConfig(dim=16, depth=1, heads=2)).state_dict()
    save_file(wider, str(tmp_path / "wide.safetensors"))
    with pytest.raises(MedmmInputError, match=r"key 'pos' has shape \(1, 512, 16\) in the checkpoint but "
                                              r"\(1, 512, 8\) in the encoder"):
        build_ecg_encoder(cfg.model_copy(update={"checkpoint": str(tmp_path / "wide.safetensors")}))


def test_pickled_checkpoints_are_not_unpickled(tmp_path):
    torch.save({"weights": torch.ones(2), "when": datetime.date(2020, 1, 1)}, tmp_path / "evil.pt")
    with pytest.raises(MedmmInputError, match="weights-only"):
        build_ecg_encoder(ECGEncoderConfig(dim=8, depth=1, heads=2, checkpoint=str(tmp_path / "evil.pt")))


# --- freezing and LoRA --------------------------------------------------------------------------

def trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_layer_freezing_and_lora_on_the_image_tower(tmp_path):
    seeded()
    _vit(tmp_path / "hf")
    frozen = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "hf"),
                                                  freeze_layers=2), 32)
    names = trainable(frozen)
    assert names and all(n.startswith(("backbone.layers.2.", "backbone.layernorm.", "backbone.pooler.")) for n in names)
    assert any(n.startswith("backbone.layers.2.") for n in names)

    lora = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "hf"), lora_r=2), 32)
    names = trainable(lora)
    assert names and all(".lora_" in n for n in names)
    assert {n.split(".attention.")[1].split(".")[0] for n in names} == {"q_proj", "v_proj"}
    with torch.no_grad():  # LoRA starts as the identity (B = 0)
        x = medmm_input(32)
        assert torch.allclose(lora.eval()(x), frozen.eval()(x), atol=ATOL)

    # a ResNet's frozen stage keeps its batch-norm statistics in training
    save_file(timm_resnet_state(), str(tmp_path / "r.safetensors"))
    resnet = build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "r.safetensors"),
                                                  freeze_layers=1), 32).train()
    norms = {n: m.training for n, m in resnet.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert not any(t for n, t in norms.items() if n.startswith(("embedder.", "encoder.stages.0.")))
    assert all(t for n, t in norms.items() if n.startswith("encoder.stages.1."))
    with pytest.raises(ConfigError, match="freeze_layers 3 > the encoder's 2 blocks"):
        build_xray_encoder(XrayEncoderConfig(name="pretrained", checkpoint=str(tmp_path / "r.safetensors"),
                                             freeze_layers=3), 32)


def test_freezing_the_medmm_cnn_and_ecg(tmp_path):
    cnn = build_xray_encoder(XrayEncoderConfig(widths=[4, 8], freeze_layers=1), 32)
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in trainable(cnn)} == {"stages.1"}
    ecg = build_ecg_encoder(ECGEncoderConfig(dim=8, depth=2, heads=2, freeze_layers=-1))
    assert trainable(ecg) == set()
    ecg = build_ecg_encoder(ECGEncoderConfig(dim=8, depth=2, heads=2, freeze_layers=1))
    assert {n.split(".")[0] for n in trainable(ecg)} == {"transformer", "norm"}
    assert all(n.startswith(("transformer.layers.1.", "norm.")) for n in trainable(ecg))


# --- text -----------------------------------------------------------------------------------

def tiny_bert(folder):
    """A two-layer BERT folder with the packaged MiniLM's tokenizer (bert-base-uncased vocabulary)."""
    bert = hf.BertModel(hf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=128))
    bert.save_pretrained(folder)
    load_tokenizer(packaged_minilm_path()).save_pretrained(folder)
    return bert


def test_text_encoder_from_a_bert_folder_keeps_lora(tmp_path):
    seeded()
    folder = tmp_path / "bert"
    bert = tiny_bert(folder)
    encoder = MiniLMLoRATextEncoder(TextEncoderConfig(model_path=str(folder), lora_r=2, lora_alpha=4,
                                                      lora_layers=[-1], cache_frozen_prefix=False)).eval()
    assert encoder.out_dim == 32 and encoder.load_report.missing == [] and encoder.load_report.unused == []
    names = trainable(encoder)
    assert names and all(".lora_" in n and ".layer.1." in n for n in names)
    tokens = load_tokenizer(str(folder))(["no acute cardiopulmonary process", "small left effusion"],
                                         padding=True, return_tensors="pt")
    with torch.no_grad():
        got = encoder(tokens["input_ids"], tokens["attention_mask"])
        expected = masked_mean(bert.eval()(**tokens).last_hidden_state, tokens["attention_mask"])
    assert torch.allclose(got, expected, atol=1e-5)


# --- config, preflight, pretraining -----------------------------------------------------------

def test_configs_name_their_checkpoint_problems_early(tmp_path):
    with pytest.raises(ValueError, match="name 'pretrained' needs a checkpoint"):
        XrayEncoderConfig(name="pretrained")
    with pytest.raises(ValueError, match="needs name 'pretrained'"):
        XrayEncoderConfig(checkpoint="x", checkpoint_format="timm")
    missing = str(tmp_path / "nowhere")
    model = ModelConfig(xray=XrayEncoderConfig(name="pretrained", checkpoint=missing))
    with pytest.raises(MedmmInputError, match=r"no such checkpoint file or folder \(model\.xray\.checkpoint\)"):
        check_model_checkpoints(model)
    with pytest.raises(MedmmInputError, match=r"\(model\.text\.model_path\)"):
        check_model_checkpoints(ModelConfig(text=TextEncoderConfig(model_path=missing)))
    check_model_checkpoints(ModelConfig())  # the defaults name no checkpoint


@pytest.mark.slow
def test_pretraining_with_outside_xray_and_text_towers(tiny_cohort, tmp_path):
    from medmm.workflows.contrastive.run import run

    seeded()
    _vit(tmp_path / "hf")
    tiny_bert(tmp_path / "bert")
    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(
        tiny_cohort, tmp_path, "model.modalities=[xray,report]", "loss.pairs=[[xray,report]]",
        "model.xray.name=pretrained", f"model.xray.checkpoint={tmp_path / 'hf'}", "model.xray.freeze_layers=1",
        f"model.text.model_path={tmp_path / 'bert'}", "model.text.lora_layers=[-1]", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "eval.memory_retrieval=false", "data.limit_studies=24",
        "trainer.precision=32-true",
        "data.batch_size=8"))
    outcome = run(cfg)
    assert outcome.metrics and all(v == v for v in outcome.metrics.values())  # finite, no NaN
    with pytest.raises(MedmmInputError, match=r"model\.xray\.checkpoint"):
        run(cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "xray": cfg.model.xray.model_copy(update={"checkpoint": str(tmp_path / "gone")})})}))
