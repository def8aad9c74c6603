"""The contrastive evaluation's chance / oracle levels come from the cohort's own files,
and a cohort without them (a real cohort) is evaluated with no levels beside the rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medmm.io.findings import FINDINGS
from medmm.metrics.reference_levels import (
    REFERENCE_LEVELS_FILE,
    REFERENCE_MODEL_FILE,
    ReferenceModel,
    levels_from_model,
)
from medmm.workflows.contrastive.evaluation import cohort_reference_levels, evaluate_contrastive, format_table

MODEL = ReferenceModel(findings=FINDINGS, observable={"xray": FINDINGS[:3], "report": FINDINGS},
                       directions=(("xray", "report"), ("report", "xray")), zero_shot=("xray",))
LABELS = np.random.default_rng(0).integers(0, 2, (24, len(FINDINGS)))


def test_a_real_cohort_has_no_levels(tmp_path):
    assert cohort_reference_levels(tmp_path, LABELS) == {}


def test_the_levels_file_is_used_when_it_describes_the_test_studies(tmp_path):
    stored = {"n_test_studies": len(LABELS), "retrieval": {}, "zero_shot": {}, "observable": {}}
    (tmp_path / REFERENCE_LEVELS_FILE).write_text(json.dumps(stored))
    MODEL.save(tmp_path / REFERENCE_MODEL_FILE)
    assert cohort_reference_levels(tmp_path, LABELS) == stored


def test_levels_are_recomputed_from_the_reference_model_for_other_studies(tmp_path):
    (tmp_path / REFERENCE_LEVELS_FILE).write_text(json.dumps({"n_test_studies": len(LABELS) + 3}))
    MODEL.save(tmp_path / REFERENCE_MODEL_FILE)
    got = cohort_reference_levels(tmp_path, LABELS)
    assert got == levels_from_model(LABELS, MODEL)
    assert got["n_test_studies"] == len(LABELS)


def test_a_levels_file_for_other_studies_without_a_model_gives_no_levels_and_one_warning(tmp_path, capsys):
    (tmp_path / REFERENCE_LEVELS_FILE).write_text(json.dumps({"n_test_studies": len(LABELS) + 3}))
    assert cohort_reference_levels(tmp_path, LABELS) == {}
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "WARNING" in err and REFERENCE_MODEL_FILE in err


def test_a_reference_model_of_other_findings_is_refused(tmp_path):
    ReferenceModel(findings=("a", "b"), observable={"xray": ("a",)}, directions=(), zero_shot=("xray",)).save(
        tmp_path / REFERENCE_MODEL_FILE)
    with pytest.raises(ValueError, match="findings"):
        cohort_reference_levels(tmp_path, LABELS)


class _PairedEmbeddings(torch.nn.Module):
    """Returns the batch's own embeddings; encodes prompt text as a fixed random vector."""

    modalities = ("xray", "report")

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch, modalities):
        return {m: batch[m] for m in modalities}

    def encode(self, modality, batch):
        ids = batch["report_ids"].float()
        return torch.nn.functional.normalize(torch.sin(ids[:, :1] * torch.arange(1, 9)), dim=-1)


def _tokenizer(texts, padding, truncation, max_length, return_tensors):
    ids = torch.tensor([[sum(map(ord, t)) % 97 + 1] for t in texts])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _loader():
    rng = np.random.default_rng(1)
    xray = rng.normal(size=(len(LABELS), 8)).astype(np.float32)
    report = xray + 0.5 * rng.normal(size=xray.shape).astype(np.float32)
    return [{"xray": torch.from_numpy(xray[i:i + 8]), "report": torch.from_numpy(report[i:i + 8]),
             "labels": torch.from_numpy(LABELS[i:i + 8]), "index": torch.arange(i, min(i + 8, len(LABELS)))}
            for i in range(0, len(LABELS), 8)]


def test_evaluation_without_levels_reports_every_row_with_no_chance_or_oracle():
    plain = evaluate_contrastive(_PairedEmbeddings(), _loader(), _tokenizer, {}, max_tokens=8)
    leveled = evaluate_contrastive(_PairedEmbeddings(), _loader(), _tokenizer, levels_from_model(LABELS, MODEL),
                                   max_tokens=8)
    # the planted-findings mean needs the cohort's knowledge of what each modality shows
    assert plain.metrics == {k: v for k, v in leveled.metrics.items() if not k.endswith("planted_mean")}
    assert [r["metric"] for r in plain.rows] == [r["metric"] for r in leveled.rows if "planted" not in r["metric"]]
    assert any(r["metric"] == "xray->report R@1" for r in plain.rows)
    assert any(r["metric"].startswith("zero-shot xray AUROC") for r in plain.rows)
    assert all(r["chance"] is None and r["oracle"] is None and r["gap_closed"] is None for r in plain.rows)
    assert any(r["chance"] is not None for r in leveled.rows if r["metric"].startswith("xray->report"))
    table = format_table(plain.rows)
    assert len(table.splitlines()) == len(plain.rows) + 2
    assert "xray->report R@1" in table and "nan" not in table


def test_rows_carry_the_oracle_band_and_the_table_flags_a_figure_beyond_it():
    leveled = evaluate_contrastive(_PairedEmbeddings(), _loader(), _tokenizer, levels_from_model(LABELS, MODEL),
                                   max_tokens=8)
    row = next(r for r in leveled.rows if r["metric"] == "xray->report P@5")
    assert row["oracle"] <= row["oracle_upper"] <= 1
    inside = dict(row, value=row["oracle_upper"])
    beyond = dict(row, metric="xray->report P@5 leaked", value=min(1.0, row["oracle_upper"] + 0.01))
    table = format_table([inside, beyond]).splitlines()
    assert not table[2].endswith("!") and table[3].endswith("  !")
    assert table[-1].startswith("! above the band")
    assert not format_table([inside]).splitlines()[-1].startswith("!")


@pytest.mark.parametrize("scoring", ["clip", "symile"])
def test_query_zero_shot_scores_each_finding_against_validation_xray_prototypes(scoring):
    from sklearn.metrics import roc_auc_score

    from medmm.workflows.contrastive.evaluation import query_zero_shot_rows

    rng = np.random.default_rng(3)
    n, d = 30, 4
    emb = {m: rng.normal(size=(n, d)).astype(np.float32) for m in ("xray", "ecg", "labs")}
    labels = rng.integers(0, 2, (n, len(FINDINGS)))
    val_xray, val_labels = rng.normal(size=(12, d)).astype(np.float32), rng.integers(0, 2, (12, len(FINDINGS)))
    val_labels[:, 1] = 1  # one class in validation: no prototype, finding skipped
    metrics, rows = query_zero_shot_rows(emb, labels, val_xray, val_labels, scoring)
    assert f"xray_from_ecg-labs.zeroshot_{FINDINGS[1]}" not in metrics
    j = 0
    has = val_labels[:, j].astype(bool)
    proto = np.stack([val_xray[~has].mean(0), val_xray[has].mean(0)])
    if scoring == "symile":  # the multilinear inner product <ecg, labs, x>
        s = np.einsum("nd,nd,pd->np", emb["ecg"], emb["labs"], proto)
    else:  # the sum of the query's dot products with x
        s = (emb["ecg"] + emb["labs"]) @ proto.T
    want = roc_auc_score(labels[:, j], s[:, 1] - s[:, 0])
    assert metrics[f"xray_from_ecg-labs.zeroshot_{FINDINGS[j]}"] == pytest.approx(want, abs=1e-6)
    assert [r["metric"] for r in rows][0].startswith("zero-shot X-ray AUROC from ecg+labs, mean of ")
