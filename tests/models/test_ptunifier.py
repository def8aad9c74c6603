"""PTUnifier model: the three input kinds through one model, prompt selection, variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmm.config.core import ConfigError
from medmm.models.ptunifier import itc_embeddings, itc_image_embeddings, itc_text_embeddings
from tests.conftest import make_model


def test_each_input_kind_through_the_same_model(text_batch):
    model, cfg = make_model()
    model.eval()
    ids, mask = text_batch
    n, s, h = len(ids), cfg.data.image_size, cfg.model.hidden
    image = torch.randn(n, 1, s, s)
    k_t, k_v = cfg.model.prompts.k_text, cfg.model.prompts.k_visual
    patches = (s // cfg.model.image.patch_size) ** 2
    pair, img_only, txt_only = model(image, ids, mask), model(image=image), model(ids=ids, mask=mask)
    for out in (pair, img_only, txt_only):
        assert out.cls.shape == (n, 2 * h)
    assert pair.text.shape == (n, ids.shape[1], h) and pair.image.shape == (n, 1 + patches, h)
    assert img_only.text.shape == (n, k_t + 2, h) and img_only.image.shape == (n, 1 + patches, h)
    assert txt_only.text.shape == (n, ids.shape[1], h) and txt_only.image.shape == (n, 1 + k_v, h)
    assert pair.text_prompt_idx is None and pair.visual_prompt_idx is None
    assert img_only.text_prompt_idx.shape == (n, k_t) and txt_only.visual_prompt_idx.shape == (n, k_v)
    # One batch mixing the three kinds: each row equals the row run with its own kind.
    has_image = torch.tensor([1, 1, 0, 1], dtype=torch.bool)
    has_text = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    mixed = model(image, ids, mask, has_image, has_text)
    for row, ref in ((0, pair), (1, img_only), (2, txt_only), (3, pair)):
        torch.testing.assert_close(mixed.cls[row], ref.cls[row], atol=1e-4, rtol=1e-4)
    assert (mixed.visual_prompt_idx[2] >= 0).all() and (mixed.visual_prompt_idx[[0, 1, 3]] == -1).all()
    assert (mixed.text_prompt_idx[1] >= 0).all() and (mixed.text_prompt_idx[[0, 2, 3]] == -1).all()
    with pytest.raises(ValueError, match="image, a text or both"):
        model(image, ids, mask, torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))


@pytest.mark.parametrize("itc_input", ["unimodal", "fused"])
def test_one_side_itc_embeddings_equal_the_paired_ones(itc_input, text_batch):
    """What a registered PTUnifier model serves for one input column (an X-ray or a report
    alone) is the side that pretraining's ITC compares."""
    model, cfg = make_model(f"model.itc_input={itc_input}")
    model.eval()
    ids, mask = text_batch
    image = torch.randn(len(ids), 1, cfg.data.image_size, cfg.data.image_size)
    with torch.no_grad():
        img, txt = itc_embeddings(model, image, ids, mask)
        torch.testing.assert_close(itc_image_embeddings(model, image), img)
        torch.testing.assert_close(itc_text_embeddings(model, ids, mask), txt)


def test_unimodal_itc_reads_the_encoders_and_fused_itc_the_prompts(text_batch):
    """itc_input: unimodal contrasts the pooled encoder outputs (the prompts play no part);
    fused contrasts the fused features, which change with the prompt pools."""
    ids, mask = text_batch
    for itc_input in ("unimodal", "fused"):
        model, cfg = make_model(f"model.itc_input={itc_input}")
        model.eval()
        image = torch.randn(len(ids), 1, cfg.data.image_size, cfg.data.image_size)
        with torch.no_grad():
            img, txt = itc_embeddings(model, image, ids, mask)
            if itc_input == "unimodal":  # independent: LayerNorm + bias-free projection of the means
                enc_img = model.encode_image(image).mean(1)
                enc_txt = (model.encode_text(ids, mask) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                for side, feature, head in ((img, enc_img, model.itc_image_head), (txt, enc_txt, model.itc_text_head)):
                    norm, proj = head
                    z = (feature - feature.mean(-1, keepdim=True)) / torch.sqrt(feature.var(-1, unbiased=False,
                                                                                           keepdim=True) + norm.eps)
                    expected = (z * norm.weight + norm.bias) @ proj.weight.T
                    torch.testing.assert_close(side, expected / expected.norm(dim=-1, keepdim=True),
                                               atol=1e-5, rtol=1e-5)
            model.text_prompts.mul_(-3.0)
            model.visual_prompts.mul_(-3.0)
            img2, txt2 = itc_embeddings(model, image, ids, mask)
        moved = (img2 - img).abs().max() > 1e-3 and (txt2 - txt).abs().max() > 1e-3
        assert moved == (itc_input == "fused"), itc_input


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_feature_is_the_mean_of_the_fused_tokens_or_the_first(pooling, text_batch):
    """pooling: mean averages each side's fused tokens without its padding (extra padding
    leaves the feature unchanged); pooling: cls reads the first token."""
    model, cfg = make_model(f"model.pooling={pooling}")
    model.eval()
    ids, mask = text_batch
    image = torch.randn(len(ids), 1, cfg.data.image_size, cfg.data.image_size)
    with torch.no_grad():
        out = model(image, ids, mask)
        keep = (~out.text_pad).float()[..., None]
        text_part = out.text[:, 0] if pooling == "cls" else (out.text * keep).sum(1) / keep.sum(1)
        image_part = out.image[:, 0] if pooling == "cls" else out.image.mean(1)
        expected = torch.cat([model.text_pooler(text_part), model.image_pooler(image_part)], dim=-1)
        torch.testing.assert_close(out.cls, expected, atol=1e-5, rtol=1e-5)
        padded = model(image, torch.nn.functional.pad(ids, (0, 5)), torch.nn.functional.pad(mask, (0, 5)))
        torch.testing.assert_close(padded.cls, out.cls, atol=1e-4, rtol=1e-4)


def test_prompts_are_the_top_k_by_similarity(text_batch):
    model, cfg = make_model()
    ids, mask = text_batch
    image = torch.randn(len(ids), 1, cfg.data.image_size, cfg.data.image_size)
    k_t, k_v = cfg.model.prompts.k_text, cfg.model.prompts.k_visual
    with torch.no_grad():
        picked_text = model(image=image).text_prompt_idx.numpy()
        picked_visual = model(ids=ids, mask=mask).visual_prompt_idx.numpy()
        # Direct computation: image query = mean of patch conv outputs + their positions.
        p = cfg.model.image.patch_size
        w = model.patch_embed.weight.numpy().reshape(len(model.patch_embed.weight), -1)
        x = image.numpy()
        s = x.shape[-1] // p
        patches = x.reshape(len(x), s, p, s, p).transpose(0, 1, 3, 2, 4).reshape(len(x), s * s, p * p)
        emb = patches @ w.T + model.patch_embed.bias.numpy() + model.image_pos[0, 1:].numpy()
        q_img = emb.mean(1)
        # Text query: masked mean of the embedding-layer outputs without [CLS].
        tok = model.text_embeddings(input_ids=ids).numpy()
        m = mask.numpy().astype(float)
        m[:, 0] = 0
        q_txt = (tok * m[..., None]).sum(1) / m.sum(1, keepdims=True)
        text_pool, visual_pool = model.text_prompts.numpy(), model.visual_prompts.numpy()
    for i in range(len(ids)):
        assert set(picked_text[i]) == set(np.argsort(-(q_img[i] @ text_pool.T))[:k_t])
        assert set(picked_visual[i]) == set(np.argsort(-(q_txt[i] @ visual_pool.T))[:k_v])
    # The pseudo-text tokens are exactly those pool rows (before the text encoder).
    assert len({tuple(sorted(r)) for r in picked_text}) > 1, "different images should pick different prompts"


def test_static_and_no_prompt_variants(text_batch):
    ids, mask = text_batch
    static, cfg = make_model("model.prompts.mode=static")
    static.eval()
    image = torch.randn(len(ids), 1, cfg.data.image_size, cfg.data.image_size)
    out = static(image=image)
    assert out.text.shape[1] == cfg.model.prompts.k_text + 2 and out.text_prompt_idx is None
    assert static.text_prompts.shape == (cfg.model.prompts.k_text, static.text_dim)
    # The same k prompts for every input: the pseudo-text side does not depend on the image.
    a, _ = static.pseudo_text(static.image_query(image[:1]))
    b, _ = static.pseudo_text(static.image_query(image[1:2]))
    torch.testing.assert_close(a, b)
    none, cfg = make_model("model.prompts.mode=none")
    none.eval()
    assert none.visual_prompts is None and none.text_prompts is None
    assert none(image=image).text.shape[1] == 2  # [CLS] [SEP]
    assert none(ids=ids, mask=mask).image.shape[1] == 1  # the image [CLS] alone


def test_pool_needs_one_width_and_k_within_the_pool():
    with pytest.raises(ValueError, match="image.dim == the text width"):
        make_model("model.image.dim=64", "model.image.heads=2")
    with pytest.raises(ConfigError, match="larger than pool_size"):
        make_model("model.prompts.pool_size=2")


def test_conv_stem_makes_the_patch_tokens_and_learns_at_its_own_rate(text_batch):
    """stem: conv (a hybrid ViT): the X-ray CNN's feature map is the token grid, with the
    patch stem's token count at the same stride; the image encoder gets lr x image_lr_mult."""
    from medmm.workflows.ptunifier.module import param_groups

    model, cfg = make_model("model.image.stem=conv", "model.image.conv_widths=[8,16]", "optim.image_lr_mult=10")
    ids, mask = text_batch
    s = cfg.data.image_size
    image = torch.randn(len(ids), 1, s, s)
    model.eval()
    out = model(image, ids, mask)
    assert out.image.shape[1] == 1 + (s // 8) ** 2  # stride 2 x 2 x 2 = patch_size 8
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.patch_embed.modules())
    lrs = {id(p): g["lr"] for g in param_groups(model, cfg.optim) for p in g["params"]}
    assert lrs[id(model.patch_embed[0][0].weight)] == pytest.approx(10 * cfg.optim.lr)
    assert lrs[id(model.image_pos)] == pytest.approx(10 * cfg.optim.lr)
    assert lrs[id(next(model.text_layers.parameters()))] == pytest.approx(cfg.optim.lr)
    assert lrs[id(model.itm_head.weight)] == pytest.approx(cfg.optim.head_lr_mult * cfg.optim.lr)
    with pytest.raises(ConfigError, match="stride 16: set patch_size: 16"):
        make_model("model.image.stem=conv", "model.image.conv_widths=[8,16,32]")
