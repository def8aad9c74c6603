"""Report generation from a PTUnifier pretraining model (``pretrained.kind=ptunifier``): the
decoder reads the tokens of PTUnifier's image path, the nearest-report baseline PTUnifier's
ITC embeddings; the registered model loads in a fresh process and writes a report for a
DICOM X-ray; ``decoder.use_ecg`` on it is a one-line error before any run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from medmm.models.heads.report_decoder import (
    DecoderConfig,
    PTUnifierImageTower,
    ReportGenerator,
    pretrained_encoders,
    xray_tokens,
)
from medmm.models.ptunifier import itc_image_embeddings, itc_text_embeddings
from medmm.workflows.pretrained import Backbone, embed_texts
from medmm.workflows.report.config import ReportConfig
from medmm.workflows.report.module import ReportGenerationTask, nearest_report
from tests.conftest import REPO, REPORTS, TINY_REPORT_CONFIG, make_model, ptu_cfg, tiny_overrides

IMAGE_PATH = ("patch_embed.", "image_cls", "image_pos", "image_blocks.", "image_norm.")

# A fresh interpreter: the registered report model through mlflow.pyfunc.load_model, fed the bytes
# of a DICOM X-ray; prints the served model's X-ray encoder, input size and generated report.
LOAD_AND_GENERATE = """
import json, sys
import mlflow, pandas as pd
from medmm.data.inputs import served_input_batch
from medmm.tracking.saved_model import served_model
mlflow.set_tracking_uri(sys.argv[1])
loaded = mlflow.pyfunc.load_model(sys.argv[2])
dicom = open(sys.argv[3], "rb").read()
served = served_model(loaded)
batch = served_input_batch("xray", [dicom], served.pretrain_cfg, served.tokenizer)
print(json.dumps({"encoder": type(served.model.xray_encoder).__name__, "shape": list(batch["xray"].shape),
                  "reports": list(loaded.predict(pd.DataFrame({"xray": [dicom]})))}))
"""


def test_ptunifier_image_tower_is_the_models_image_path():
    model, pcfg = make_model()
    model.eval()
    size = pcfg.data.image_size
    image = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    encoders = pretrained_encoders(model)
    assert set(encoders) == {"xray"} and isinstance(encoders["xray"], PTUnifierImageTower)
    tokens = xray_tokens(encoders["xray"], image)
    assert tokens.shape == (2, 1 + (size // pcfg.model.image.patch_size) ** 2, pcfg.model.image.dim)
    torch.testing.assert_close(tokens, model.encode_image(image), rtol=0, atol=0)
    image_params = {n: p for n, p in model.named_parameters() if n.startswith(IMAGE_PATH)}
    assert {n: p.data_ptr() for n, p in encoders["xray"].named_parameters()} == {
        n: p.data_ptr() for n, p in image_params.items()}  # the same tensors, no copy

    dcfg = DecoderConfig(init_from_minilm=False, num_layers=1, hidden_size=32, heads=2)
    generator = ReportGenerator.from_pretrained(copy.deepcopy(encoders), dcfg)
    assert generator.ecg_encoder is None and generator.xray_proj.in_features == pcfg.model.image.dim
    encoder_keys = {k for k in generator.state_dict() if k.startswith("xray_encoder.")}
    assert encoder_keys == {f"xray_encoder.{k}" for k in model.state_dict() if k.startswith(IMAGE_PATH)}
    rcfg = build_config(ReportConfig, TINY_REPORT_CONFIG, ["pretrained.freeze=true", "decoder.use_ecg=false"])
    task = ReportGenerationTask(rcfg, generator).train()
    assert not any(p.requires_grad for p in generator.xray_encoder.parameters())
    assert not generator.xray_encoder.training and generator.decoder.training
    assert all(p.requires_grad for p in generator.decoder.parameters())
    assert task.model is generator


def test_nearest_report_baseline_reads_ptunifier_itc_embeddings(tokenizer):
    model, pcfg = make_model()
    backbone = Backbone("ptunifier", model)
    assert backbone.modalities == ("xray", "report")
    size = pcfg.data.image_size
    images = torch.randn(5, 1, size, size, generator=torch.Generator().manual_seed(1))
    text_emb = embed_texts(backbone, tokenizer, REPORTS, pcfg.model.text.max_tokens)
    enc = tokenizer(REPORTS, padding=True, truncation=True, max_length=pcfg.model.text.max_tokens,
                    return_tensors="pt")
    with torch.no_grad():
        expected_text = itc_text_embeddings(model.eval(), enc["input_ids"], enc["attention_mask"]).numpy()
        expected_image = itc_image_embeddings(model, images).numpy()
    torch.testing.assert_close(torch.from_numpy(text_emb), torch.from_numpy(expected_text))
    nearest = nearest_report(backbone, [{"xray": images[:3]}, {"xray": images[3:]}], text_emb, REPORTS)
    assert nearest == [REPORTS[j] for j in (expected_image @ expected_text.T).argmax(1)]


@pytest.mark.slow
def test_report_from_a_ptunifier_model_trains_scores_registers_and_serves(ptunifier_pretrained, tiny_cohort,
                                                                          tmp_path, capsys):
    from medmm.pipelines.report import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--config", str(TINY_REPORT_CONFIG), *tiny_overrides(tiny_cohort, tmp_path), "pretrained.kind=ptunifier",
              f"pretrained.source=models:/{ptunifier_pretrained['registered']}@champion",
              f"pretrained.tracking_uri={ptunifier_pretrained['uri']}", "tracking.registered_name=ptunifier-report"]

    code = main(["train", *common, "decoder.use_ecg=true"])
    err = capsys.readouterr().err
    assert code == 2 and "decoder.use_ecg: the pretrained model has no ecg encoder (it encodes xray, report)" in err
    assert len(err.strip().splitlines()) == 1
    client = MlflowClient(uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])

    code = main(["train", *common, "decoder.use_ecg=false"])
    assert code == 0, capsys.readouterr().err[-3000:]
    run = client.search_runs([client.get_experiment_by_name("medmm-report-tiny").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["pretrained_kind"] == "ptunifier"
    for system in ("model_greedy", "model_beam2", "nearest_neighbour", "most_frequent"):
        for metric in ("bleu1", "bleu4", "rouge_l"):
            assert 0.0 <= run.data.metrics[f"test.{system}.{metric}"] <= 1.0, (system, metric)

    code = main(["evaluate", "--model", "models:/ptunifier-report@champion", *common, "eval.max_studies=4"])
    assert code == 0, capsys.readouterr().err[-3000:]
    again = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id]
    assert len(again) == 1 and again[0].info.status == "FINISHED"
    assert 0.0 <= again[0].data.metrics["test.nearest_neighbour.rouge_l"] <= 1.0

    xray = sorted(tiny_cohort.glob("patients/*/*/xray.dcm"))[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", LOAD_AND_GENERATE, uri, "models:/ptunifier-report@champion",
                          str(xray)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    size = ptu_cfg().data.image_size  # the pretraining run's input size, not the report config's
    assert served["encoder"] == "PTUnifierImageTower" and served["shape"] == [1, 1, size, size]
    assert len(served["reports"]) == 1 and served["reports"][0].strip()

    code = main(["generate", "--model", "models:/ptunifier-report@champion", "--xray", str(xray), "--json",
                 "--config", str(TINY_REPORT_CONFIG), f"tracking.uri={uri}"])
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("["):])
    assert code == 0 and len(rows) == 1 and rows[0]["report"].strip()
