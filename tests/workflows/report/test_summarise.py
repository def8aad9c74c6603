"""Findings -> impression summarisation (``task=summarise`` of the report pipeline) on a tiny
PTUnifier model: the decoder reads PTUnifier's fused text tokens of the FINDINGS, padding of
the FINDINGS does not change a summary, studies without an IMPRESSION are counted and left out,
and the model's ROUGE sits beside the lead, extractive and nearest-impression baselines, the
lead's checked against a hand computation."""

from __future__ import annotations

import re
import shutil
from collections import Counter

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from rouge_score import rouge_scorer

from medmm.cohort.manifest import MANIFEST_NAME, entry_sha256
from medmm.data.tokenizer import load_tokenizer
from medmm.io.reports import read_report
from medmm.metrics.report_generation import tokenize
from medmm.models.heads.report_decoder import DecoderConfig, FindingsSummariser, PTUnifierTextTower
from medmm.workflows.report.summarise import extractive_summaries, lead_sentence, sentences
from tests.conftest import REPO, make_model, tiny_overrides

SUMMARISE_TINY = REPO / "configs/report/summarise_tiny.yaml"
SYSTEMS = ("model_greedy", "model_beam2", "lead", "extractive", "nearest_impression")


def test_sentences_lead_and_extractive():
    findings = "Heart size is normal. No pleural effusion! Is there a pneumothorax? No. ."
    assert sentences(findings) == ["Heart size is normal.", "No pleural effusion!", "Is there a pneumothorax?", "No."]
    assert lead_sentence(findings) == "Heart size is normal."
    assert lead_sentence("no full stop") == "no full stop"
    train_impressions = ["No acute cardiopulmonary abnormality.", "No acute disease.", "No active disease."]
    assert extractive_summaries(["The heart is normal. No acute cardiopulmonary abnormality seen.", "Lungs clear."],
                                train_impressions) == ["No acute cardiopulmonary abnormality seen.", "Lungs clear."]


def test_summariser_reads_ptunifier_fused_text_tokens_and_ignores_padding():
    model, _ = make_model()
    model.eval()
    tok = load_tokenizer(None)
    summariser = FindingsSummariser.from_pretrained(model, DecoderConfig(init_from_minilm=False, num_layers=1,
                                                                        hidden_size=32, heads=2)).eval()
    assert isinstance(summariser.text_encoder, PTUnifierTextTower) and summariser.text_encoder.model is model
    assert not model.visual_prompts.requires_grad  # pools stay frozen (the pretraining config's prompts.finetune)
    enc = tok(["Heart size normal. No effusion or pneumothorax.", "Lungs clear."], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        fused = model(ids=ids, mask=mask)
        memory, real = summariser.conditioning({"findings_ids": ids, "findings_mask": mask})
    expected = summariser.memory_norm(summariser.text_proj(torch.cat([fused.text, fused.image], dim=1)))
    torch.testing.assert_close(memory, expected)
    assert real[1].tolist() == mask[1].tolist() + [1] * fused.image.shape[1]  # padding masked, prompts attended

    def summary(rows, beams):
        batch = {"findings_ids": ids[rows], "findings_mask": mask[rows]}
        if rows == [1]:  # alone: no padding at all
            n = int(mask[1].sum())
            batch = {"findings_ids": ids[1:2, :n], "findings_mask": mask[1:2, :n]}
        out = summariser.generate(batch, bos=tok.cls_token_id, eos=tok.sep_token_id, pad=tok.pad_token_id,
                                  num_beams=beams, max_new_tokens=6)
        return out[-1].tolist()

    for beams in (1, 2):
        assert summary([0, 1], beams) == summary([1], beams), beams


def _drop_impressions(cohort, n: int) -> None:
    """Rewrite ``n`` reports without their IMPRESSION section (manifest hashes updated)."""
    manifest = pd.read_parquet(cohort / MANIFEST_NAME)
    reports = manifest[manifest["modality"] == "report"].sort_values("study_id")
    dropped = 0
    for row in reports.itertuples():
        path = cohort / row.path
        text = path.read_text()
        if dropped < n and "FINDINGS:" in text and "IMPRESSION:" in text:
            path.write_text(text[: text.index("IMPRESSION:")].rstrip() + "\n")
            manifest.loc[row.Index, "sha256"] = entry_sha256(path)
            dropped += 1
    assert dropped == n
    manifest.to_parquet(cohort / MANIFEST_NAME, index=False)


def _rouge_n(hyp: str, ref: str, n: int) -> float:
    """ROUGE-N F-measure by hand: clipped n-gram overlap."""
    def grams(text):
        t = tokenize(text)
        return Counter(tuple(t[i : i + n]) for i in range(len(t) - n + 1))

    h, r = grams(hyp), grams(ref)
    overlap = sum((h & r).values())
    if not overlap:
        return 0.0
    p, rec = overlap / sum(h.values()), overlap / sum(r.values())
    return 2 * p * rec / (p + rec)


@pytest.mark.slow
def test_summarise_trains_scores_baselines_and_counts_left_out_studies(ptunifier_pretrained, tiny_cohort, tmp_path,
                                                                       capsys):
    from medmm.pipelines.report import main

    cohort = tmp_path / "demo"
    shutil.copytree(tiny_cohort, cohort)
    _drop_impressions(cohort, 3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--config", str(SUMMARISE_TINY), *tiny_overrides(cohort, tmp_path),
              f"pretrained.source=models:/{ptunifier_pretrained['registered']}@champion",
              f"pretrained.tracking_uri={ptunifier_pretrained['uri']}",
              # few seconds: one epoch, the PTUnifier model frozen (no backward through it)
              "trainer.max_epochs=1", "pretrained.freeze=true", "generation.max_new_tokens=16"]

    code = main(["train", *common, "pretrained.kind=more"])
    err = capsys.readouterr().err
    assert code == 2 and "pretrained.kind=ptunifier" in err and len(err.strip().splitlines()) == 1

    code = main(["train", *common])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "ROUGE-L" in captured.out and "lead baseline" in captured.out
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("medmm-summarise-tiny").experiment_id])[0]
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["report_task"] == "summarise"
    for system in SYSTEMS:
        for metric in ("rouge1", "rouge2", "rouge_l"):
            value = metrics[f"test.{system}.{metric}"]
            assert 0.0 <= value <= 1.0, (system, metric, value)

    # the sections, read independently: studies lacking an IMPRESSION are counted and left out
    manifest = pd.read_parquet(cohort / MANIFEST_NAME)
    pairs = {"train": 0, "val": 0, "test": 0}
    no_impression, lead_pairs = 0, []
    for row in manifest[manifest["modality"] == "report"].sort_values("study_id").itertuples():
        sections = read_report(cohort / row.path).sections
        if "FINDINGS" in sections and "IMPRESSION" not in sections:
            no_impression += 1
        if "FINDINGS" in sections and "IMPRESSION" in sections:
            pairs[row.split] += 1
            if row.split == "test":
                lead = re.split(r"(?<=[.!?])\s+", sections["FINDINGS"].strip())[0]
                lead_pairs.append((lead, sections["IMPRESSION"]))
    assert no_impression >= 3 and metrics["data.n_left_out.no_impression"] == no_impression
    assert {s: metrics[f"data.n_{s}_pairs"] for s in pairs} == pairs

    # the lead baseline: the first FINDINGS sentence, scored by hand (ROUGE-1/2) and by rouge-score (ROUGE-L)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=type("Words", (), {"tokenize": staticmethod(tokenize)}))
    expected = {"rouge1": sum(_rouge_n(h, r, 1) for h, r in lead_pairs) / len(lead_pairs),
                "rouge2": sum(_rouge_n(h, r, 2) for h, r in lead_pairs) / len(lead_pairs),
                "rouge_l": sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in lead_pairs) / len(lead_pairs)}
    for metric, value in expected.items():
        assert metrics[f"test.lead.{metric}"] == pytest.approx(value, abs=1e-9), metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "results")}
    assert {"results/summarise_metrics.txt", "results/summarise_metrics.json"} <= artifacts
