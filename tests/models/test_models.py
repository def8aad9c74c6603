"""Registry-wide model tests (timm's pattern): every registered model builds from its tiny
config, runs forward on its example batch with the expected output shapes and passes
gradients back; then the specific tests of the contrastive model and its encoders."""

import dataclasses

import pytest
import torch

from medmm.config.core import build_config
from medmm.data.tokenizer import load_tokenizer
from medmm.losses import multi_modal_clip_loss
from medmm.models import create_model, list_models, model_example, registered_model
from medmm.models.encoders.text import MiniLMLoRATextEncoder, masked_mean
from medmm.models.encoders.xray import XrayCNN
from medmm.workflows.contrastive.config import PretrainConfig
from tests.conftest import TINY_CONFIG


def tiny_cfg(*overrides):
    return build_config(PretrainConfig, TINY_CONFIG, list(overrides))


def fake_batch(cfg, n=4):
    tok = load_tokenizer()
    enc = tok(["No pleural effusion.", "Cardiomegaly with small left effusion.", "Normal chest.",
               "Pacemaker in place."][:n], padding=True, return_tensors="pt")
    s = cfg.data.image_size
    return {"xray": torch.randn(n, 1, s, s), "ecg": torch.randn(n, 12, 1000),
            "report_ids": enc["input_ids"], "report_mask": enc["attention_mask"]}


def output_tensors(out) -> dict[str, torch.Tensor]:
    """The tensors of a model output: a tensor, a dict of tensors or a dataclass of them."""
    if torch.is_tensor(out):
        return {"output": out}
    items = out.items() if isinstance(out, dict) else ((f.name, getattr(out, f.name)) for f in dataclasses.fields(out))
    return {k: v for k, v in items if torch.is_tensor(v)}


def test_the_survival_models_are_registered():
    assert {"cox", "deepsurv", "discrete_hazard", "cmta"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_forward_and_backward_on_its_example(name):
    example = model_example(name)
    assert isinstance(example.config, registered_model(name).config)
    torch.manual_seed(0)
    model = create_model(name, example.config, **example.build_kwargs).train()
    outputs = output_tensors(model(*example.inputs))
    assert {k: tuple(outputs[k].shape) for k in example.output_shapes} == dict(example.output_shapes)
    floats = [t for t in outputs.values() if t.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in floats)
    g = torch.Generator().manual_seed(1)  # a random projection: no output is constant under it
    sum((t.float() * torch.randn(t.shape, generator=g)).sum() for t in floats).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    assert any(grad.abs().sum() > 0 for grad in grads)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_takes_its_config_as_a_dict(name):
    example = model_example(name)
    torch.manual_seed(0)
    from_config = create_model(name, example.config, **example.build_kwargs)
    torch.manual_seed(0)
    from_dict = create_model(name, example.config.model_dump(), **example.build_kwargs)
    assert from_config.state_dict().keys() == from_dict.state_dict().keys()
    for key, value in from_config.state_dict().items():
        torch.testing.assert_close(from_dict.state_dict()[key], value)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_from_its_defaults(name):
    assert isinstance(create_model(name), torch.nn.Module)


def test_a_config_of_another_model_is_refused():
    with pytest.raises(TypeError, match="takes a CoxConfig"):
        create_model("cox", model_example("cmta").config)


@pytest.mark.parametrize("xray", ["cnn", "vit"])
def test_more_embeds_to_unit_vectors(xray):
    cfg = tiny_cfg("model.name=more", f"model.xray.name={xray}", "model.xray.patch_size=16",
                   "model.xray.vit_dim=32", "model.xray.vit_depth=1", "model.xray.vit_heads=2")
    model = create_model("more", cfg.model, image_size=cfg.data.image_size)
    emb = model(fake_batch(cfg))
    assert set(emb) == {"xray", "ecg", "report"}
    for e in emb.values():
        assert e.shape == (4, cfg.model.embed_dim)
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))


@pytest.mark.parametrize("widths,size", [([8, 16, 16, 32], 64), ([16, 32, 64, 128], 128), ([32, 64, 128, 256], 128)])
@pytest.mark.parametrize("bf16", [False, True])
def test_xray_cnn_trains_in_channels_last_at_every_width(widths, size, bf16):
    """The CNN runs channels-last; some oneDNN kernels crash there (a 1x1 stride-2 conv on
    8 channels did), so forward and backward run at the widths configs use, in both precisions."""
    torch.manual_seed(0)
    net = XrayCNN(widths).train()
    x = torch.randn(3, 1, size, size)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    out.float().square().mean().backward()
    assert out.shape == (3, 2 * widths[-1]) and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_unknown_model_name_lists_registered():
    with pytest.raises(KeyError, match=r"registered: .*\bmore\b"):
        create_model("nope", None)


def test_masked_mean_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_mean(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_text_encoder_padding_does_not_change_embedding():
    cfg = tiny_cfg()
    enc = MiniLMLoRATextEncoder(cfg.model.text).eval()
    tok = load_tokenizer()
    short = tok(["No acute cardiopulmonary disease."], return_tensors="pt")
    padded = tok(["No acute cardiopulmonary disease."], padding="max_length", max_length=40, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(enc(short["input_ids"], short["attention_mask"]),
                                   enc(padded["input_ids"], padded["attention_mask"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache", [True, False])
def test_frozen_prefix_matches_the_full_model(cache):
    """The split forward (unpadded frozen layers, cached or not, + adapted layers) equals
    transformers' own padded forward of the peft model; a cached sequence reads back the
    same, alone or beside another."""
    cfg = tiny_cfg(f"model.text.cache_frozen_prefix={str(cache).lower()}")
    enc = MiniLMLoRATextEncoder(cfg.model.text).eval()
    tok = load_tokenizer()
    texts = ["Heart size normal. No effusion.", "Large right pleural effusion with atelectasis."]
    batch = tok(texts, padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        reference = masked_mean(enc.peft_model(**batch).last_hidden_state, batch["attention_mask"])
        first = enc(batch["input_ids"], batch["attention_mask"])  # fills the cache
        assert len(enc._prefix_cache) == (2 if cache else 0)
        second = enc(batch["input_ids"], batch["attention_mask"])  # reads it
        mixed = tok([texts[1], "Clear lungs."], padding=True, return_tensors="pt")  # one cached, one new
        third = enc(mixed["input_ids"], mixed["attention_mask"])
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(third[0], reference[1], atol=1e-5, rtol=1e-5)


def test_frozen_prefix_is_cached_in_float32_under_autocast():
    """A sequence first seen in a bf16 training step reads back exactly what a float32
    evaluation computes, so training, validation and test embeddings share one prefix."""
    enc = MiniLMLoRATextEncoder(tiny_cfg().model.text).eval()
    batch = load_tokenizer()(["Large right pleural effusion with atelectasis."], return_tensors="pt")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc(batch["input_ids"], batch["attention_mask"])
    (cached,) = enc._prefix_cache.values()
    real = batch["attention_mask"].bool()
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, enc._run_prefix(batch["input_ids"], real, real.reshape(-1).nonzero().squeeze(1)),
                               rtol=0, atol=0)


def test_frozen_prefix_runs_without_dropout_in_training_mode():
    """The cached prefix must not depend on the mode: in ``train()`` its layers keep their
    pretrained dropout probability but do not apply it."""
    cfg = tiny_cfg()
    enc = MiniLMLoRATextEncoder(cfg.model.text)
    assert enc.bert.encoder.layer[0].attention.self.dropout.p > 0
    tok = load_tokenizer()
    batch = tok(["Large right pleural effusion with atelectasis."], return_tensors="pt")
    real = batch["attention_mask"].bool()
    index = real.reshape(-1).nonzero().squeeze(1)
    torch.manual_seed(0)
    trained = enc.train()._run_prefix(batch["input_ids"], real, index)
    evaluated = enc.eval()._run_prefix(batch["input_ids"], real, index)
    torch.testing.assert_close(trained, evaluated)


def test_text_encoder_rejects_left_padding():
    enc = MiniLMLoRATextEncoder(tiny_cfg().model.text).eval()
    ids = torch.tensor([[0, 101, 2053, 102]])
    with pytest.raises(ValueError, match="right-padded"):
        enc(ids, torch.tensor([[0, 1, 1, 1]]))


def test_unpadded_adapted_layers_match_transformers_forward_and_gradients():
    """The adapted layers run on real tokens only; with LoRA weights away from their zero
    init, output and LoRA gradients equal transformers' padded forward of the peft model."""
    cfg = tiny_cfg()
    enc = MiniLMLoRATextEncoder(cfg.model.text)
    enc.train()
    for module in enc.modules():  # dropout off, autograd on: a deterministic training pass
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(0)
    lora = [p for n, p in enc.named_parameters() if "lora_" in n]
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.05)
    tok = load_tokenizer()
    batch = tok(["Heart size normal. No effusion.", "Large right pleural effusion with atelectasis and a small "
                 "left apical pneumothorax.", "Clear."], padding="max_length", max_length=32, return_tensors="pt")
    ours = enc(batch["input_ids"], batch["attention_mask"])
    ours_grads = torch.autograd.grad(ours.square().sum(), lora)
    reference = masked_mean(enc.peft_model(**batch).last_hidden_state, batch["attention_mask"])
    reference_grads = torch.autograd.grad(reference.square().sum(), lora)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    for got, want in zip(ours_grads, reference_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_text_dropout_setting_reaches_only_the_adapted_layers():
    cfg = tiny_cfg("model.text.dropout=0.0")
    enc = MiniLMLoRATextEncoder(cfg.model.text)
    for depth, layer in enumerate(enc.bert.encoder.layer):
        expected = 0.0 if depth >= enc.prefix_depth else 0.1  # the pretrained config's value
        for dropout in (layer.attention.self.dropout, layer.attention.output.dropout, layer.output.dropout):
            assert dropout.p == expected


def test_only_lora_and_heads_train_and_temperature_is_optimised():
    cfg = tiny_cfg()
    model = create_model("more", cfg.model, image_size=cfg.data.image_size)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    text_trainable = {n for n in trainable if n.startswith("encoders.report.")}
    assert text_trainable and all("lora_" in n for n in text_trainable)
    assert all(".layer.5." in n for n in text_trainable)  # lora_layers: [5]
    assert "logit_scale.log_scale" in trainable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = model.logit_scale.log_scale.detach().clone()
    emb = model(fake_batch(cfg))
    loss, _ = multi_modal_clip_loss(emb, cfg.loss.pairs, model.logit_scale)
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.logit_scale.log_scale.detach())
