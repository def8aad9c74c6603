"""Report generator: the pretrained X-ray encoder (and optionally the ECG encoder) turned
into a sequence of conditioning tokens, read by a transformers BERT decoder through
cross-attention (``BertLMHeadModel`` with ``is_decoder`` + ``add_cross_attention``, the
tokenizer of the packaged MiniLM, optionally its weights) - the encoder / BERT-generation
decoder arrangement PTUnifier uses for report generation.

The encoders keep their pretrained weights; their *tokens* (CNN grid cells, ViT patch
outputs, ECG transformer outputs) rather than the pooled vector feed the decoder, so the
decoder can attend to where a finding is. The X-ray encoder comes from either pretraining
family: the contrastive model's own, or PTUnifier's image path (its ViT, without the text
encoder, prompts and fusion layers), whose CLS-first outputs are the tokens.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.data.tokenizer import packaged_minilm_path
from medmm.models.encoders.xray import XrayCNN, XrayViT
from medmm.models.ptunifier import PTUnifier


class DecoderConfig(StrictModel):
    init_from_minilm: bool = Field(True, description="start from the packaged MiniLM's weights (cross-attention new)")
    num_layers: int = Field(2, ge=1, le=12, description="decoder layers (the first N of MiniLM's six when initialised)")
    hidden_size: int = Field(384, description="width when not initialised from MiniLM")
    heads: int = Field(12, description="attention heads when not initialised from MiniLM")
    max_tokens: int = Field(96, description="report length in tokens (training truncation)")
    use_ecg: bool = Field(False, description="condition on the ECG too (its token outputs join the X-ray's)")
    dropout: float = 0.1


class PTUnifierImageTower(nn.Module):
    """PTUnifier's image path alone (patch embedding, CLS, positions, ViT blocks, norm), over
    the same parameters: the X-ray encoder a report generator takes from a PTUnifier model."""

    # PTUnifier's own image-path methods, run over the submodules this tower holds
    patch_tokens = PTUnifier.patch_tokens
    _image_cls = PTUnifier._image_cls
    _run_image = PTUnifier._run_image
    encode_image = PTUnifier.encode_image

    def __init__(self, model: PTUnifier):
        super().__init__()
        self.patch_embed, self.image_cls, self.image_pos = model.patch_embed, model.image_cls, model.image_pos
        self.image_blocks, self.image_norm = model.image_blocks, model.image_norm
        self.out_dim = model.image_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


def pretrained_encoders(model: nn.Module) -> nn.ModuleDict:
    """The encoders a report generator can take from a pretraining model (sharing its
    parameters): the contrastive model's own; PTUnifier's image path as the X-ray encoder."""
    if isinstance(model, PTUnifier):
        return nn.ModuleDict({"xray": PTUnifierImageTower(model)})
    return model.encoders


def xray_tokens(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] -> [B, N, C] tokens of a medmm X-ray encoder (before its pooling)."""
    if isinstance(encoder, PTUnifierImageTower):
        return encoder(x)  # [B, 1 + N, d], CLS first
    if isinstance(encoder, XrayCNN):
        h = encoder.feature_map(x)  # [B, C, h, w]
        grid = h.flatten(2).transpose(1, 2)
        return torch.cat([h.mean(dim=(2, 3))[:, None], grid], dim=1)
    if isinstance(encoder, XrayViT):
        tokens = encoder.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([encoder.cls.expand(len(x), -1, -1), tokens], dim=1) + encoder.pos
        return encoder.norm(encoder.blocks(tokens))
    raise TypeError(f"no token view of X-ray encoder {type(encoder).__name__}")


def xray_token_dim(encoder: nn.Module) -> int:
    return encoder.out_dim // 2 if type(encoder).__name__ == "XrayCNN" else encoder.out_dim


def ecg_tokens(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, 12, T] -> [B, N, d] transformer outputs of the medmm ECG encoder."""
    tokens = encoder.tokenizer(x).transpose(1, 2)
    return encoder.norm(encoder.transformer(tokens + encoder.pos[:, : tokens.shape[1]]))


def decoder_config(cfg: DecoderConfig, vocab_size: int | None = None):
    """BERT decoder config with cross-attention; MiniLM's own when initialised from it."""
    from transformers import BertConfig

    if cfg.init_from_minilm:
        bert = BertConfig.from_pretrained(packaged_minilm_path(), local_files_only=True)
    else:
        bert = BertConfig(vocab_size=vocab_size or 30522, hidden_size=cfg.hidden_size,
                          num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden_size)
    bert.num_hidden_layers = cfg.num_layers
    bert.is_decoder, bert.add_cross_attention = True, True
    bert.hidden_dropout_prob = bert.attention_probs_dropout_prob = cfg.dropout
    bert.max_position_embeddings = max(bert.max_position_embeddings, 512)
    return bert


class ReportGenerator(nn.Module):
    def __init__(self, xray_encoder: nn.Module, ecg_encoder: nn.Module | None, bert_config,
                 decoder: nn.Module | None = None):
        super().__init__()
        from transformers import BertLMHeadModel

        self.xray_encoder, self.ecg_encoder = xray_encoder, ecg_encoder
        hidden = bert_config.hidden_size
        self.xray_proj = nn.Linear(xray_token_dim(xray_encoder), hidden)
        self.ecg_proj = nn.Linear(ecg_encoder.norm.normalized_shape[0], hidden) if ecg_encoder is not None else None
        self.modality_embed = nn.Embedding(2, hidden)  # which encoder a conditioning token came from
        self.memory_norm = nn.LayerNorm(hidden)
        self.decoder = decoder if decoder is not None else BertLMHeadModel(bert_config)

    @classmethod
    def from_pretrained(cls, encoders: nn.ModuleDict, cfg: DecoderConfig) -> "ReportGenerator":
        from transformers import BertLMHeadModel

        bert = decoder_config(cfg)
        decoder = None
        if cfg.init_from_minilm:
            decoder = BertLMHeadModel.from_pretrained(packaged_minilm_path(), config=bert, local_files_only=True)
        return cls(encoders["xray"], encoders["ecg"] if cfg.use_ecg else None, bert, decoder)

    def memory(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Conditioning tokens [B, M, hidden]: X-ray tokens (then ECG tokens)."""
        parts = [self.xray_proj(xray_tokens(self.xray_encoder, batch["xray"])) + self.modality_embed.weight[0]]
        if self.ecg_encoder is not None:
            parts.append(self.ecg_proj(ecg_tokens(self.ecg_encoder, batch["ecg"])) + self.modality_embed.weight[1])
        return self.memory_norm(torch.cat(parts, dim=1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced next-token cross-entropy of the reports ([CLS] report [SEP])."""
        ids, mask = batch["report_ids"], batch["report_mask"]
        labels = ids.masked_fill(mask == 0, -100)
        out = self.decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=self.memory(batch), labels=labels)
        return out.loss

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], *, bos: int, eos: int, pad: int, num_beams: int = 1,
                 max_new_tokens: int = 80, no_repeat_ngram_size: int = 0) -> torch.Tensor:
        """Greedy (``num_beams=1``) or beam-search token ids, starting from ``bos``."""
        from transformers import DynamicCache, EncoderDecoderCache

        memory = self.memory(batch)
        start = torch.full((len(memory), 1), bos, dtype=torch.long, device=memory.device)
        # A decoder-only model with cross-attention needs an encoder-decoder cache: the
        # default DynamicCache has no slot for the cross-attention keys / values.
        return self.decoder.generate(
            input_ids=start, encoder_hidden_states=memory, max_new_tokens=max_new_tokens, num_beams=num_beams,
            do_sample=False, eos_token_id=eos, pad_token_id=pad, no_repeat_ngram_size=no_repeat_ngram_size or None,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        )
