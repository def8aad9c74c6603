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

The same decoder summarises text (:class:`FindingsSummariser`, FINDINGS -> IMPRESSION, a
PTUnifier downstream task): its conditioning tokens are PTUnifier's fusion-encoder outputs
for the FINDINGS alone (text-only input, the image side filled with pseudo-image prompts).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from medmm.config.core import StrictModel
from medmm.data.tokenizer import packaged_minilm_path
from medmm.models.encoders.checkpoints import CheckpointImageEncoder
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
    if isinstance(encoder, CheckpointImageEncoder):
        return encoder.tokens(x)  # [B, 1 + N, d], pooled first
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


class ConditionedDecoder(nn.Module):
    """A BERT decoder reading conditioning tokens through cross-attention: subclasses say
    what the tokens are (:meth:`memory`: [B, M, hidden]; :meth:`conditioning` adds which of
    them to attend to, None for all); teacher-forced training and decoding are shared."""

    decoder: nn.Module

    def memory(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def conditioning(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The memory and its cross-attention mask ([B, M], 1 = attend; None: attend to all)."""
        return self.memory(batch), None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced next-token cross-entropy of the targets ([CLS] text [SEP] in ``report_ids``)."""
        ids, mask = batch["report_ids"], batch["report_mask"]
        labels = ids.masked_fill(mask == 0, -100)
        memory, memory_mask = self.conditioning(batch)
        out = self.decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory,
                           encoder_attention_mask=memory_mask, labels=labels)
        return out.loss

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], *, bos: int, eos: int, pad: int, num_beams: int = 1,
                 max_new_tokens: int = 80, no_repeat_ngram_size: int = 0) -> torch.Tensor:
        """Greedy (``num_beams=1``) or beam-search token ids, starting from ``bos``."""
        from transformers import DynamicCache, EncoderDecoderCache

        memory, memory_mask = self.conditioning(batch)
        start = torch.full((len(memory), 1), bos, dtype=torch.long, device=memory.device)
        extra = {} if memory_mask is None else {"encoder_attention_mask": memory_mask}
        # A decoder-only model with cross-attention needs an encoder-decoder cache: the
        # default DynamicCache has no slot for the cross-attention keys / values.
        return self.decoder.generate(
            input_ids=start, encoder_hidden_states=memory, max_new_tokens=max_new_tokens, num_beams=num_beams,
            do_sample=False, eos_token_id=eos, pad_token_id=pad, no_repeat_ngram_size=no_repeat_ngram_size or None,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()), **extra,
        )


def minilm_decoder(cfg: DecoderConfig):
    """MiniLM's weights as the BERT decoder of ``cfg`` (cross-attention new); None when the
    decoder starts from random weights (the model builds it)."""
    from transformers import BertLMHeadModel

    if not cfg.init_from_minilm:
        return None
    return BertLMHeadModel.from_pretrained(packaged_minilm_path(), config=decoder_config(cfg), local_files_only=True)


class ReportGenerator(ConditionedDecoder):
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
        return cls(encoders["xray"], encoders["ecg"] if cfg.use_ecg else None, decoder_config(cfg), minilm_decoder(cfg))

    def memory(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Conditioning tokens [B, M, hidden]: X-ray tokens (then ECG tokens)."""
        parts = [self.xray_proj(xray_tokens(self.xray_encoder, batch["xray"])) + self.modality_embed.weight[0]]
        if self.ecg_encoder is not None:
            parts.append(self.ecg_proj(ecg_tokens(self.ecg_encoder, batch["ecg"])) + self.modality_embed.weight[1])
        return self.memory_norm(torch.cat(parts, dim=1))


class PTUnifierTextTower(nn.Module):
    """PTUnifier's fusion encoder on text-only input (the missing image side filled with
    pseudo-image prompts): [B, L] ids + mask -> the fused text-side tokens, then the fused
    image-side (prompt) tokens, [B, L + 1 + k_visual, hidden], and which of them are real."""

    def __init__(self, model: PTUnifier):
        super().__init__()
        self.model = model
        self.out_dim = model.cfg.hidden
        # the prompt pools stay as pretraining left them unless the pretraining config says otherwise
        model.set_prompts_trainable(model.cfg.prompts.finetune == "trained")

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(ids=ids, mask=mask)
        return torch.cat([out.text, out.image], dim=1), ~torch.cat([out.text_pad, out.image_pad], dim=1)


class FindingsSummariser(ConditionedDecoder):
    """Text summarisation (FINDINGS -> IMPRESSION): the same BERT decoder reading the
    pretrained model's encoding of the FINDINGS (``findings_ids`` / ``findings_mask`` of a
    batch; a :class:`PTUnifierTextTower`) and writing the IMPRESSION (``report_ids``)."""

    def __init__(self, text_encoder: nn.Module, bert_config, decoder: nn.Module | None = None):
        super().__init__()
        from transformers import BertLMHeadModel

        self.text_encoder = text_encoder
        self.text_proj = nn.Linear(text_encoder.out_dim, bert_config.hidden_size)
        self.memory_norm = nn.LayerNorm(bert_config.hidden_size)
        self.decoder = decoder if decoder is not None else BertLMHeadModel(bert_config)

    @classmethod
    def from_pretrained(cls, model: nn.Module, cfg: DecoderConfig) -> "FindingsSummariser":
        """A summariser on pretraining ``model`` (sharing its parameters; a PTUnifier)."""
        if not isinstance(model, PTUnifier):
            raise TypeError(f"summarisation reads PTUnifier's fused text tokens; got {type(model).__name__}")
        return cls(PTUnifierTextTower(model), decoder_config(cfg), minilm_decoder(cfg))

    def conditioning(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The FINDINGS' fused tokens [B, M, hidden] and which are real (padding is not)."""
        tokens, real = self.text_encoder(batch["findings_ids"], batch["findings_mask"])
        return self.memory_norm(self.text_proj(tokens)), real.long()

    def memory(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.conditioning(batch)[0]
