"""The report generator: conditioning tokens, teacher-forced loss, greedy decoding equal to a
hand-written argmax loop, beam search at least as likely as greedy, and the MiniLM init."""

from __future__ import annotations

import pytest
import torch

from medmm.config.core import build_config
from medmm.data.tokenizer import packaged_minilm_path
from medmm.models.encoders.ecg import build_ecg_encoder
from medmm.models.encoders.xray import build_xray_encoder
from medmm.models.heads.report_decoder import DecoderConfig, ReportGenerator, decoder_config, xray_tokens
from medmm.workflows.contrastive.config import PretrainConfig
from tests.conftest import TINY_CONFIG

BOS, EOS, PAD = 101, 102, 0


def tiny_generator(xray="cnn", use_ecg=True, vocab=200):
    pcfg = build_config(PretrainConfig, TINY_CONFIG, [f"model.xray.name={xray}", "model.xray.vit_dim=32",
                                                      "model.xray.vit_depth=1", "model.xray.vit_heads=2"])
    dcfg = DecoderConfig(init_from_minilm=False, num_layers=1, hidden_size=32, heads=2, use_ecg=use_ecg, dropout=0.0)
    torch.manual_seed(0)
    model = ReportGenerator(build_xray_encoder(pcfg.model.xray, 64), build_ecg_encoder(pcfg.model.ecg) if use_ecg
                            else None, decoder_config(dcfg, vocab_size=vocab))
    batch = {"xray": torch.randn(3, 1, 64, 64), "ecg": torch.randn(3, 12, 1000)}
    return model.eval(), batch


@pytest.mark.parametrize("xray", ["cnn", "vit"])
def test_memory_holds_xray_then_ecg_tokens(xray):
    model, batch = tiny_generator(xray)
    n_xray = xray_tokens(model.xray_encoder, batch["xray"]).shape[1]
    memory = model.memory(batch)
    assert memory.shape[0] == 3 and memory.shape[2] == 32
    assert memory.shape[1] == n_xray + 100  # 1000 ECG samples / (5 * stride 2)
    assert n_xray == (5 if xray == "cnn" else 17)  # pooled + 2x2 grid / CLS + 4x4 patches


def test_loss_ignores_padding_and_trains():
    model, batch = tiny_generator(use_ecg=False)  # X-ray only: keeps the 30 steps cheap
    ids = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 8, 9, EOS, PAD], [BOS, 10, EOS, PAD, PAD]])
    batch.update(report_ids=ids, report_mask=(ids != PAD).long())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(batch)
    for _ in range(30):
        opt.zero_grad()
        loss = model(batch)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item()
    # padding positions do not change the loss
    model.eval()
    longer = torch.cat([ids, torch.full((3, 2), PAD)], dim=1)
    padded = {**batch, "report_ids": longer, "report_mask": (longer != PAD).long()}
    torch.testing.assert_close(model(padded), model(batch))


@torch.no_grad()
def test_greedy_equals_a_hand_argmax_loop_and_beam_is_at_least_as_likely():
    model, batch = tiny_generator()
    greedy = model.generate(batch, bos=BOS, eos=EOS, pad=PAD, num_beams=1, max_new_tokens=6)
    memory = model.memory(batch)
    seq = torch.full((3, 1), BOS)
    for _ in range(6):  # no cache, full recomputation each step
        logits = model.decoder(input_ids=seq, encoder_hidden_states=memory).logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    for row in range(3):  # transformers stops a row at EOS and pads the rest
        g = greedy[row].tolist()
        stop = g.index(EOS) + 1 if EOS in g else len(g)
        assert g[:stop] == seq[row, :stop].tolist()

    def log_likelihood(tokens):
        logits = model.decoder(input_ids=tokens, encoder_hidden_states=memory[full]).logits.log_softmax(-1)
        return logits[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(1)

    beam = model.generate(batch, bos=BOS, eos=EOS, pad=PAD, num_beams=4, max_new_tokens=6)
    # rows that ran the full length on both sides: beam search finds a sequence at least as likely
    full = [r for r in range(3) if EOS not in greedy[r].tolist() and EOS not in beam[r].tolist()]
    assert full and beam.shape == greedy.shape
    assert (log_likelihood(beam[full]) >= log_likelihood(greedy[full]) - 1e-4).all()


def test_minilm_initialised_decoder_keeps_the_pretrained_self_attention():
    from transformers import AutoModel

    pcfg = build_config(PretrainConfig, TINY_CONFIG, [])
    gen = ReportGenerator.from_pretrained(
        torch.nn.ModuleDict({"xray": build_xray_encoder(pcfg.model.xray, 64), "ecg": build_ecg_encoder(pcfg.model.ecg)}),
        DecoderConfig(init_from_minilm=True, num_layers=1))
    minilm = AutoModel.from_pretrained(packaged_minilm_path(), local_files_only=True)
    torch.testing.assert_close(gen.decoder.bert.encoder.layer[0].attention.self.query.weight,
                               minilm.encoder.layer[0].attention.self.query.weight)
    assert gen.decoder.config.is_decoder and gen.decoder.config.add_cross_attention
    assert gen.ecg_encoder is None  # use_ecg defaults to False
