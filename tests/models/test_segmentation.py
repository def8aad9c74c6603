"""MulModSeg conditioning: frozen MiniLM prompt embeddings, shapes, the dynamic head
against a direct convolution, and every backbone through the registry."""

import pytest
import torch
import torch.nn.functional as F

from medmm.data.tokenizer import packaged_minilm_path
from medmm.models.registry import create_model
from medmm.models.segmentation import (
    SegModelConfig,
    apply_dynamic_heads,
    class_prompt,
    dynamic_head_param_count,
    prompt_embeddings,
)

CLASSES = ["background", "liver", "kidney"]
TINY = SegModelConfig(feature_width=8, channels=[8, 16, 16], strides=[2, 2], num_res_units=0, text_hidden=32)


def test_prompt_embeddings_are_the_frozen_minilm_sentence_embeddings():
    from sentence_transformers import SentenceTransformer

    emb = prompt_embeddings(CLASSES)
    assert emb.shape == (2, 3, 384)
    assert class_prompt("mr", "liver") == "a MR image of a liver"
    # independent implementation: sentence-transformers' own pipeline for this model
    st = SentenceTransformer(packaged_minilm_path(), device="cpu")
    ref = st.encode([class_prompt(m, c) for m in ("ct", "mr") for c in CLASSES], convert_to_tensor=True,
                    normalize_embeddings=True)
    torch.testing.assert_close(emb.reshape(6, 384), ref.cpu(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(emb[0], emb[1])  # the modality word changes the embedding


def test_dynamic_head_equals_three_direct_convolutions():
    g = torch.Generator().manual_seed(0)
    width, b, c = 8, 2, 3
    assert dynamic_head_param_count(width) == 153  # MulModSeg's figure
    feats = torch.randn(b, width, 4, 5, 3, generator=g)
    params = torch.randn(b, c, 153, generator=g)
    out = apply_dynamic_heads(feats, params, width)
    assert out.shape == (b, c, 4, 5, 3)
    for i in range(b):
        for k in range(c):
            p = params[i, k]
            w1, w2, w3 = p[:64].reshape(8, 8, 1, 1, 1), p[64:128].reshape(8, 8, 1, 1, 1), p[128:136].reshape(1, 8, 1, 1, 1)
            b1, b2, b3 = p[136:144], p[144:152], p[152:]
            x = F.relu(F.conv3d(feats[i : i + 1], w1, b1))
            x = F.relu(F.conv3d(x, w2, b2))
            x = F.conv3d(x, w3, b3)
            torch.testing.assert_close(out[i, k], x[0, 0], atol=1e-5, rtol=1e-5)


def test_text_conditioned_model_shapes_and_frozen_text():
    torch.manual_seed(0)
    model = create_model("segmenter", TINY, class_names=CLASSES, conditioning="text")
    x = torch.randn(2, 1, 16, 16, 16)
    features, bottleneck = model.backbone(x)
    assert features.shape == (2, 8, 16, 16, 16) and bottleneck.shape[:2] == (2, 16)
    params = model.head.head_params(bottleneck, torch.tensor([0, 1]))
    assert params.shape == (2, 3, 153)
    logits_ct, logits_mr = model(x, 0), model(x, 1)
    assert logits_ct.shape == (2, 3, 16, 16, 16)
    assert not torch.allclose(logits_ct, logits_mr)  # the modality's prompts condition the heads
    # the text embeddings are a buffer: saved with the weights, never trained
    assert "head.text_embeddings" in model.state_dict()
    assert all(p.data_ptr() != model.head.text_embeddings.data_ptr() for p in model.parameters())
    model(x, 1).mean().backward()
    assert model.head.controller.weight.grad is not None and model.head.text_embeddings.grad is None


@pytest.mark.parametrize(("backbone", "conditioning"), [("unet", "text"), ("unet", "none"), ("swinunetr", "text")])
def test_every_backbone_and_head_segments_a_patch(backbone, conditioning):
    cfg = TINY.model_copy(update={"backbone": backbone, "feature_width": 12 if backbone == "swinunetr" else 8,
                                  "swin_depths": [1, 1, 1, 1], "swin_heads": [1, 1, 1, 1]})
    model = create_model("segmenter", cfg, class_names=CLASSES, conditioning=conditioning).eval()
    # SwinUNETR divides by 32 and instance-normalises its bottleneck: 2^3 voxels at least
    side = 64 if backbone == "swinunetr" else 32
    with torch.no_grad():
        out = model(torch.randn(1, 1, side, side, side), torch.tensor([1]))
    assert out.shape == (1, 3, side, side, side) and torch.isfinite(out).all()
