"""PTUnifier: one fusion encoder for image-only, text-only and image-report inputs
(registered as ``ptunifier``).

Chen et al., "Towards Unifying Medical Vision-and-Language Pre-training via Soft
Prompts", ICCV 2023. A METER-style backbone (ViT over the X-ray, a BERT text encoder,
co-attention fusion layers on each side) whose missing side is filled with soft
prompts: for an image-only input the k textual prompts most similar to the image's
query (mean of the position-encoded patch embeddings) stand in for the report, and
symmetrically the k visual prompts most similar to a report's query (masked mean of
its token embeddings without [CLS]) stand in for the image. Both queries are taken at
the embedding layer, before the encoders, and the prompts live in that same space: the
pool vectors are both keys and values (no normalisation, as in the paper).

Differences from the paper, for CPU-sized runs: the text encoder is the packaged
all-MiniLM-L6-v2 (384-d, optionally truncated to its first layers) instead of RoBERTa,
the ViT is small and starts from random weights (no package ships image weights), and
the fusion layers are pre-norm (stabler from scratch) with widths from the config. The
ViT's width equals the text width (384) so that a query of one modality can be compared
with the other modality's pool vectors directly, as in the paper (both 768 there).

Each side is pooled by the mean of its fused tokens (``pooling: mean``; the paper reads
[CLS], which MiniLM, trained with mean pooling, leaves the same for every report). ITC
contrasts the fused image + pseudo-text and pseudo-image + text features as the paper
(``itc_input: fused``), or the pooled uni-modal encoder outputs before fusion (``unimodal``,
ALBEF's align-before-fuse, Li et al. 2021): on the demo cohort only the second learns
(docs/results/ptunifier.md), but it leaves the prompt pools untrained in pretraining.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from medmm.config.core import StrictModel
from medmm.data.tokenizer import load_tokenizer, packaged_minilm_path
from medmm.models.encoders.text import masked_mean
from medmm.models.encoders.xray import XrayCNN
from medmm.models.registry import ModelExample, register_model


class PTUnifierImageConfig(StrictModel):
    patch_size: int = Field(16, description="ViT patch size (with stem: conv, the CNN's total stride)")
    dim: int = Field(384, description="ViT width (prompt pools need it equal to the text width, 384)")
    depth: int = Field(4, description="ViT depth")
    heads: int = Field(6, description="ViT attention heads")
    stem: Literal["patch", "conv"] = Field(
        "patch", description="patch: one linear map per patch (ViT); conv: medmm's X-ray CNN (a strided stem and "
                             "one residual stage per width) makes the patch tokens, a hybrid ViT")
    conv_widths: list[int] = Field([32, 64, 128], description="with stem: conv, the CNN's stage widths")

    @model_validator(mode="after")
    def _conv_stride_is_the_patch(self) -> "PTUnifierImageConfig":
        stride = 2 ** (len(self.conv_widths) + 1)
        if self.stem == "conv" and self.patch_size != stride:
            raise ValueError(f"stem: conv with {len(self.conv_widths)} stages has stride {stride}: "
                             f"set patch_size: {stride} (got {self.patch_size})")
        return self


class PTUnifierTextConfig(StrictModel):
    model_path: str | None = Field(None, description="local HF model folder; default: the packaged all-MiniLM-L6-v2")
    layers: int = Field(6, ge=1, description="MiniLM layers kept (the first N of 6)")
    frozen_layers: int = Field(0, ge=0, description="lowest kept layers (and the embeddings) left frozen")
    max_tokens: int = Field(64, description="report truncation length in tokens")


class PromptConfig(StrictModel):
    mode: Literal["pool", "static", "none"] = Field(
        "pool", description="pool: top-k prompts picked per input; static: the same k for every input; "
                            "none: the missing side is only [CLS] (+[SEP])")
    pool_size: int = Field(2048, ge=1, description="prompts per pool (paper: 2048)")
    k_visual: int = Field(49, ge=1, description="pseudo-image tokens for a text-only input (paper: 49)")
    k_text: int = Field(32, ge=1, description="pseudo-text tokens for an image-only input (paper: 32)")
    finetune: Literal["frozen", "trained"] = Field(
        "frozen", description="pools after pretraining: frozen (the reference code) or trained in fine-tuning")

    @model_validator(mode="after")
    def _k_fits(self) -> "PromptConfig":
        if self.mode == "pool" and max(self.k_visual, self.k_text) > self.pool_size:
            raise ValueError(f"k ({self.k_visual}, {self.k_text}) larger than pool_size {self.pool_size}")
        return self


class PTUnifierModelConfig(StrictModel):
    name: Literal["ptunifier"] = "ptunifier"
    image: PTUnifierImageConfig = PTUnifierImageConfig()
    text: PTUnifierTextConfig = PTUnifierTextConfig()
    hidden: int = Field(256, description="fusion width (paper: 768)")
    fusion_layers: int = Field(2, ge=1, description="cross-attention layers per side (paper: 6)")
    fusion_heads: int = Field(4, description="fusion attention heads")
    mlp_ratio: int = 4
    dropout: float = Field(0.1, description="fusion dropout")
    itc_dim: int = Field(256, description="ITC projection size (paper: 768)")
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="each side's pooled feature: mean: the mean of its fused tokens (padding excluded); "
                            "cls: its first token, as the paper (MiniLM's [CLS] is the same vector for every "
                            "report, cosine 0.99999, and the representations collapse: docs/results/ptunifier.md)")
    itc_input: Literal["fused", "unimodal"] = Field(
        "fused", description="what ITC contrasts: fused: the fused features of image + pseudo-text and pseudo-image "
                             "+ text, as the paper (the only pretraining loss that trains the prompt pools; it stays "
                             "at chance on the demo cohort: docs/results/ptunifier.md); unimodal: the pooled image and "
                             "text encoder outputs before fusion (ALBEF's align-before-fuse), the pools then stay as "
                             "initialised through pretraining")
    prompts: PromptConfig = PromptConfig()


def select_prompts(query: torch.Tensor, pool: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k pool vectors with the largest dot product with each query: ([n, k, d], [n, k])."""
    idx = torch.topk(query @ pool.T, k, dim=-1).indices
    return pool[idx], idx


class FusionLayer(nn.Module):
    """One side of a METER co-attention layer: self-attention over its own tokens,
    cross-attention to the other side's tokens, then an MLP (pre-norm residuals)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_other, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(4))
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, x_pad, other, other_pad):
        h = self.norm_self(x)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=x_pad, need_weights=False)[0])
        h, o = self.norm_cross(x), self.norm_other(other)
        x = x + self.drop(self.cross_attn(h, o, o, key_padding_mask=other_pad, need_weights=False)[0])
        return x + self.drop(self.mlp(self.norm_mlp(x)))


@dataclass
class FusedOutput:
    cls: torch.Tensor  # [B, 2 * hidden]: concat(pooled text side, pooled image side) (the paper's feature)
    text: torch.Tensor  # [B, Lt, hidden] fused text-side tokens
    image: torch.Tensor  # [B, Li, hidden] fused image-side tokens
    text_pad: torch.Tensor  # [B, Lt] True = padding
    image_pad: torch.Tensor  # [B, Li]
    text_prompt_idx: torch.Tensor | None = None  # [B, k_text] pool rows used as pseudo-text, -1 on real text
    visual_prompt_idx: torch.Tensor | None = None  # [B, k_visual]


def _pad_stack(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], n: int):
    """Rows ``idx`` of each part ([m, L_p, d] tokens, [m, L_p] padding) into one padded [n, L, d]."""
    length = max(seq.shape[1] for _, seq, _ in parts)
    ref = parts[0][1]
    out = ref.new_zeros(n, length, ref.shape[-1])
    pad = torch.ones(n, length, dtype=torch.bool, device=ref.device)
    for idx, seq, seq_pad in parts:
        out[idx, : seq.shape[1]] = seq
        pad[idx, : seq.shape[1]] = seq_pad
    return out, pad


class PTUnifier(nn.Module):
    def __init__(self, cfg: PTUnifierModelConfig, image_size: int):
        super().__init__()
        from transformers import AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.cfg = cfg
        ic, tc, pc = cfg.image, cfg.text, cfg.prompts
        if image_size % ic.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {ic.patch_size}")
        # Image encoder: a ViT (pre-norm blocks from torch), CLS + learned positions.
        self.n_patches = (image_size // ic.patch_size) ** 2
        if ic.stem == "conv":  # hybrid ViT: CNN features as tokens (Dosovitskiy et al. 2021, sec. 3.1)
            cnn = XrayCNN(ic.conv_widths)
            self.patch_embed = nn.Sequential(cnn.stem, cnn.stages, nn.Conv2d(ic.conv_widths[-1], ic.dim, 1))
        else:
            self.patch_embed = nn.Conv2d(1, ic.dim, ic.patch_size, ic.patch_size)
        self.image_cls = nn.Parameter(torch.zeros(1, 1, ic.dim))
        self.image_pos = nn.Parameter(torch.randn(1, self.n_patches + 1, ic.dim) * 0.02)
        block = nn.TransformerEncoderLayer(ic.dim, ic.heads, 4 * ic.dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.image_blocks = nn.TransformerEncoder(block, ic.depth, enable_nested_tensor=False)
        self.image_norm = nn.LayerNorm(ic.dim)
        # Text encoder: the packaged pretrained MiniLM, its first `layers` layers.
        path = tc.model_path or packaged_minilm_path()
        bert = AutoModel.from_pretrained(path, local_files_only=True)
        if tc.layers > bert.config.num_hidden_layers:
            raise ValueError(f"text.layers {tc.layers} > the {bert.config.num_hidden_layers} layers of {path}")
        if tc.frozen_layers > tc.layers:
            raise ValueError(f"text.frozen_layers {tc.frozen_layers} > text.layers {tc.layers}")
        self.bert_config = bert.config
        self.text_embeddings = bert.embeddings
        self.text_layers = nn.ModuleList(bert.encoder.layer[: tc.layers])
        if tc.frozen_layers:
            for module in (self.text_embeddings, *self.text_layers[: tc.frozen_layers]):
                module.requires_grad_(False)
        tok = load_tokenizer(tc.model_path)
        self.cls_id, self.sep_id, self.pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        text_dim = bert.config.hidden_size
        self.image_dim, self.text_dim = ic.dim, text_dim
        if pc.mode == "pool" and ic.dim != text_dim:
            # A text query picks visual prompts and an image query textual ones, by dot product
            # with the pool vectors themselves (keys = values, as in the paper): one width.
            raise ValueError(f"prompt pools need image.dim == the text width ({text_dim}), got {ic.dim}")
        # Prompts: pools (top-k per input), or k static prompts, or none.
        self.prompt_mode = pc.mode
        if pc.mode == "pool":
            self.visual_prompts = nn.Parameter(torch.randn(pc.pool_size, ic.dim) * 0.02)
            self.text_prompts = nn.Parameter(torch.randn(pc.pool_size, text_dim) * 0.02)
        elif pc.mode == "static":
            self.visual_prompts = nn.Parameter(torch.randn(pc.k_visual, ic.dim) * 0.02)
            self.text_prompts = nn.Parameter(torch.randn(pc.k_text, text_dim) * 0.02)
        else:
            self.visual_prompts = self.text_prompts = None
        # Fusion: project both sides to `hidden`, add a modality-type embedding, co-attend.
        h = cfg.hidden
        self.text_proj, self.image_proj = nn.Linear(text_dim, h), nn.Linear(ic.dim, h)
        self.type_embed = nn.Embedding(2, h)
        self.text_fusion = nn.ModuleList(
            [FusionLayer(h, cfg.fusion_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.fusion_layers)])
        self.image_fusion = nn.ModuleList(
            [FusionLayer(h, cfg.fusion_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.fusion_layers)])
        self.text_fusion_norm, self.image_fusion_norm = nn.LayerNorm(h), nn.LayerNorm(h)
        self.text_pooler = nn.Sequential(nn.Linear(h, h), nn.Tanh())
        self.image_pooler = nn.Sequential(nn.Linear(h, h), nn.Tanh())
        self.out_dim = 2 * h
        # Pretraining heads (kept in the checkpoint: retrieval fine-tuning starts from them).
        itc_image_in, itc_text_in = (ic.dim, text_dim) if cfg.itc_input == "unimodal" else (2 * h, 2 * h)
        self.itc_image_head = nn.Sequential(nn.LayerNorm(itc_image_in), nn.Linear(itc_image_in, cfg.itc_dim, bias=False))
        self.itc_text_head = nn.Sequential(nn.LayerNorm(itc_text_in), nn.Linear(itc_text_in, cfg.itc_dim, bias=False))
        self.itm_head = nn.Linear(2 * h, 2)
        self.mlm_transform = nn.Sequential(nn.Linear(h, text_dim), nn.GELU(), nn.LayerNorm(text_dim))
        self.mlm_bias = nn.Parameter(torch.zeros(bert.config.vocab_size))

    # ---- uni-modal encoders -------------------------------------------------------------
    def patch_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Position-encoded patch embeddings without CLS: [B, N, d] (the image query's source)."""
        return self.patch_embed(image).flatten(2).transpose(1, 2) + self.image_pos[:, 1:]

    def _image_cls(self, n: int) -> torch.Tensor:
        return (self.image_cls + self.image_pos[:, :1]).expand(n, -1, -1)

    def _run_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.image_norm(self.image_blocks(tokens))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] -> [B, 1 + N, d] (CLS first)."""
        return self._run_image(torch.cat([self._image_cls(len(image)), self.patch_tokens(image)], dim=1))

    def text_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_embeddings(input_ids=ids)

    def _run_text(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ext = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.text_layers:
            out = layer(hidden, ext)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids + attention mask -> [B, L, d_text]."""
        return self._run_text(self.text_embed(ids), mask)

    # ---- prompts --------------------------------------------------------------------------
    def image_query(self, image: torch.Tensor) -> torch.Tensor:
        return self.patch_tokens(image).mean(1)

    def text_query(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        without_cls = mask.clone()
        without_cls[:, 0] = 0
        return masked_mean(self.text_embed(ids), without_cls)

    def _pick(self, query: torch.Tensor, prompts: torch.Tensor | None, k: int):
        n = len(query)
        if self.prompt_mode == "pool":
            return select_prompts(query, prompts, k)
        if self.prompt_mode == "static":
            return prompts.unsqueeze(0).expand(n, -1, -1), None
        return query.new_zeros(n, 0, query.shape[-1]), None

    def pseudo_image(self, text_query: torch.Tensor):
        """Image side for text-only inputs: encoded [CLS + k visual prompts], and the prompt rows."""
        prompts, idx = self._pick(text_query, self.visual_prompts, self.cfg.prompts.k_visual)
        return self._run_image(torch.cat([self._image_cls(len(text_query)), prompts], dim=1)), idx

    def pseudo_text(self, image_query: torch.Tensor):
        """Text side for image-only inputs: encoded [CLS] + k textual prompts + [SEP]."""
        prompts, idx = self._pick(image_query, self.text_prompts, self.cfg.prompts.k_text)
        n, k = prompts.shape[:2]
        ids = torch.full((n, k + 2), self.pad_id, dtype=torch.long, device=image_query.device)
        ids[:, 0], ids[:, -1] = self.cls_id, self.sep_id
        emb = self.text_embed(ids)  # [CLS] and [SEP] with their positions; the middle is replaced
        emb = torch.cat([emb[:, :1], prompts, emb[:, -1:]], dim=1)
        mask = torch.ones(n, k + 2, dtype=torch.long, device=image_query.device)
        return self._run_text(emb, mask), idx

    # ---- fusion ---------------------------------------------------------------------------
    def fuse(self, image_seq, image_pad, text_seq, text_pad) -> FusedOutput:
        t = self.text_proj(text_seq) + self.type_embed.weight[0]
        v = self.image_proj(image_seq) + self.type_embed.weight[1]
        for text_layer, image_layer in zip(self.text_fusion, self.image_fusion):
            t, v = text_layer(t, text_pad, v, image_pad), image_layer(v, image_pad, t, text_pad)
        t, v = self.text_fusion_norm(t), self.image_fusion_norm(v)
        cls = torch.cat([self.text_pooler(self.pool(t, text_pad)), self.image_pooler(self.pool(v, image_pad))], dim=-1)
        return FusedOutput(cls, t, v, text_pad, image_pad)

    def pool(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """One side's summary: its first token (the paper) or the mean of its non-padding tokens.
        The paper's RoBERTa and CLIP ViT were trained to summarise at their first token; the
        packaged MiniLM was trained with mean pooling and the ViT here starts from random weights,
        so their first token carries almost nothing of the input."""
        if self.cfg.pooling == "cls":
            return tokens[:, 0]
        return masked_mean(tokens, (~pad).long())

    def mlm_logits(self, fused_text: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of fused text tokens; the decoder is tied to the word embeddings."""
        return self.mlm_transform(fused_text) @ self.text_embeddings.word_embeddings.weight.T + self.mlm_bias

    def forward(self, image: torch.Tensor | None = None, ids: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, has_image: torch.Tensor | None = None,
                has_text: torch.Tensor | None = None) -> FusedOutput:
        """Fuse a batch that may mix image-only, text-only and image-report rows.

        ``has_image`` / ``has_text`` ([B] bool) say which rows carry each side (default:
        all rows, when that input is given); a missing side is filled with prompts."""
        n = len(image) if image is not None else len(ids)
        dev = image.device if image is not None else ids.device
        has_image = torch.full((n,), image is not None, device=dev) if has_image is None else has_image.bool()
        has_text = torch.full((n,), ids is not None, device=dev) if has_text is None else has_text.bool()
        if not bool((has_image | has_text).all()):
            raise ValueError("every row needs an image, a text or both")
        img_rows, txt_rows = has_image.nonzero()[:, 0], has_text.nonzero()[:, 0]
        no_img, no_txt = (~has_image).nonzero()[:, 0], (~has_text).nonzero()[:, 0]
        image_parts, text_parts = [], []
        vis_idx = txt_idx = None
        if len(img_rows):
            seq = self.encode_image(image[img_rows])
            image_parts.append((img_rows, seq, torch.zeros(seq.shape[:2], dtype=torch.bool, device=dev)))
        if len(no_img):
            seq, idx = self.pseudo_image(self.text_query(ids[no_img], mask[no_img]))
            image_parts.append((no_img, seq, torch.zeros(seq.shape[:2], dtype=torch.bool, device=dev)))
            if idx is not None:
                vis_idx = torch.full((n, idx.shape[1]), -1, dtype=torch.long, device=dev)
                vis_idx[no_img] = idx
        if len(txt_rows):
            seq = self.encode_text(ids[txt_rows], mask[txt_rows])
            text_parts.append((txt_rows, seq, mask[txt_rows] == 0))
        if len(no_txt):
            seq, idx = self.pseudo_text(self.image_query(image[no_txt]))
            text_parts.append((no_txt, seq, torch.zeros(seq.shape[:2], dtype=torch.bool, device=dev)))
            if idx is not None:
                txt_idx = torch.full((n, idx.shape[1]), -1, dtype=torch.long, device=dev)
                txt_idx[no_txt] = idx
        image_seq, image_pad = _pad_stack(image_parts, n)
        text_seq, text_pad = _pad_stack(text_parts, n)
        out = self.fuse(image_seq, image_pad, text_seq, text_pad)
        out.text_prompt_idx, out.visual_prompt_idx = txt_idx, vis_idx
        return out

    def set_prompts_trainable(self, trainable: bool) -> None:
        for p in (self.visual_prompts, self.text_prompts):
            if p is not None:
                p.requires_grad_(trainable)


def tiny_ptunifier() -> ModelExample:
    """One MiniLM layer, a one-block ViT and small prompt pools, on a batch mixing an
    image-report pair, an image alone and a report alone."""
    size, hidden, k_text, k_visual = 32, 16, 3, 4
    cfg = PTUnifierModelConfig(image=PTUnifierImageConfig(patch_size=8, depth=1), text=PTUnifierTextConfig(layers=1),
                               hidden=hidden, fusion_layers=1, fusion_heads=2, itc_dim=8,
                               prompts=PromptConfig(pool_size=8, k_visual=k_visual, k_text=k_text))
    g = torch.Generator().manual_seed(0)
    n, length = 3, 6
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # MiniLM's [CLS] ... [SEP]
    has_image, has_text = torch.tensor([True, True, False]), torch.tensor([True, False, True])
    inputs = (torch.randn(n, 1, size, size, generator=g), ids, torch.ones_like(ids), has_image, has_text)
    text_len, image_len = max(length, k_text + 2), 1 + max((size // 8) ** 2, k_visual)
    shapes = {"cls": (n, 2 * hidden), "text": (n, text_len, hidden), "image": (n, image_len, hidden),
              "text_prompt_idx": (n, k_text), "visual_prompt_idx": (n, k_visual)}
    return ModelExample(cfg, inputs, shapes, {"image_size": size})


@register_model("ptunifier", config=PTUnifierModelConfig, example=tiny_ptunifier)
def build_ptunifier(cfg: PTUnifierModelConfig, image_size: int = 128) -> PTUnifier:
    return PTUnifier(cfg, image_size)



def no_padding_mask(x: torch.Tensor) -> torch.Tensor:
    """A key-padding mask of all False for a sequence with no padding (image patches, prompts)."""
    return torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)


def _image_side(model, encoded_image: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    if model.cfg.itc_input == "unimodal":
        feature = model.pool(encoded_image, no_padding_mask(encoded_image))
    else:
        pseudo_txt, _ = model.pseudo_text(model.image_query(image))
        feature = model.fuse(encoded_image, no_padding_mask(encoded_image), pseudo_txt,
                             no_padding_mask(pseudo_txt)).cls
    return F.normalize(model.itc_image_head(feature), dim=-1)


def _text_side(model, encoded_text: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if model.cfg.itc_input == "unimodal":
        feature = model.pool(encoded_text, mask == 0)
    else:
        pseudo_img, _ = model.pseudo_image(model.text_query(ids, mask))
        feature = model.fuse(pseudo_img, no_padding_mask(pseudo_img), encoded_text, mask == 0).cls
    return F.normalize(model.itc_text_head(feature), dim=-1)


def itc_embeddings(model, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                   encoded_image: torch.Tensor | None = None, encoded_text: torch.Tensor | None = None):
    """L2-normalised ITC embeddings of the image and of the report: with ``itc_input: fused``
    the fused (image + pseudo-text) and (pseudo-image + text) features, as the paper; with
    ``unimodal`` the pooled uni-modal encoder outputs (before fusion)."""
    img = model.encode_image(image) if encoded_image is None else encoded_image
    txt = model.encode_text(ids, mask) if encoded_text is None else encoded_text
    return _image_side(model, img, image), _text_side(model, txt, ids, mask)


def itc_image_embeddings(model, image: torch.Tensor) -> torch.Tensor:
    """The image side alone, as :func:`itc_embeddings` gives it."""
    return _image_side(model, model.encode_image(image), image)


def itc_text_embeddings(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The text side alone, as :func:`itc_embeddings` gives it."""
    return _text_side(model, model.encode_text(ids, mask), ids, mask)
