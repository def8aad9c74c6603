"""The MLflow pyfunc flavour of a medmm report generator: loads back in a fresh process
through ``mlflow.pyfunc.load_model`` and writes reports.

``predict`` takes a DataFrame with an ``xray`` column (DICOM bytes or paths) and, for a model
conditioned on ECG too, an ``ecg`` column (DICOM-waveform bytes, WFDB / DICOM-waveform paths); it returns one
generated report per row. ``params={"num_beams": n}`` picks greedy (1) or beam search.
Inputs are read as the pretraining run read them (its ``data.image_size``, ``data.ecg_fs``
and tokenizer), for a generator on either pretraining family's X-ray encoder.
Weights travel as safetensors (never pickle), configs as YAML / JSON.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from safetensors.torch import load_model, save_model
from transformers import BertConfig

from medmm.config.core import build_config
from medmm.data.inputs import served_input_batch
from medmm.data.tokenizer import load_tokenizer
from medmm.models.encoders.ecg import build_ecg_encoder
from medmm.models.encoders.xray import build_xray_encoder
from medmm.models.heads.report_decoder import PTUnifierImageTower, ReportGenerator
from medmm.tracking.run_context import saved_config_yaml
from medmm.tracking.saved_model import log_saved_model
from medmm.workflows.pretrained import build_model, read_pretrain_config
from medmm.workflows.report.config import ReportConfig

PIP_REQUIREMENTS = ["medmm", "torch", "transformers", "pydicom", "wfdb", "safetensors"]


def build_generator(report_cfg, family: str, pretrain_cfg, bert_config):
    """A ReportGenerator skeleton (random weights) of the saved shapes, its X-ray encoder that
    of the pretraining ``family`` (PTUnifier: the image path of a model of its config)."""
    if family == "ptunifier":
        xray = PTUnifierImageTower(build_model(family, pretrain_cfg))
    else:
        xray = build_xray_encoder(pretrain_cfg.model.xray, pretrain_cfg.data.image_size)
    ecg = build_ecg_encoder(pretrain_cfg.model.ecg) if report_cfg.decoder.use_ecg else None
    return ReportGenerator(xray, ecg, bert_config)


class ReportGeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        a = context.artifacts
        self.cfg = build_config(ReportConfig, a["report_config"])
        family, self.pretrain_cfg = read_pretrain_config(Path(a["pretrain_config"]))
        bert = BertConfig.from_dict(json.loads(Path(a["decoder_config"]).read_text()))
        self.model = build_generator(self.cfg, family, self.pretrain_cfg, bert)
        load_model(self.model, a["weights"])
        self.model.eval()
        self.tokenizer = load_tokenizer(self.pretrain_cfg.model.text.model_path)

    def predict(self, context, model_input, params=None):
        if "xray" not in model_input.columns:
            raise ValueError("the input needs an 'xray' column of DICOM files (bytes or paths)")
        batch = served_input_batch("xray", model_input["xray"].tolist(), self.pretrain_cfg, self.tokenizer)
        if self.cfg.decoder.use_ecg:
            if "ecg" not in model_input.columns:
                raise ValueError("this model is conditioned on ECG too: give an 'ecg' column")
            batch.update(served_input_batch("ecg", model_input["ecg"].tolist(), self.pretrain_cfg, self.tokenizer))
        g = self.cfg.generation
        beams = int((params or {}).get("num_beams", g.beams[0]))
        ids = self.model.generate(batch, bos=self.tokenizer.cls_token_id, eos=self.tokenizer.sep_token_id,
                                  pad=self.tokenizer.pad_token_id, num_beams=beams,
                                  max_new_tokens=g.max_new_tokens, no_repeat_ngram_size=g.no_repeat_ngram_size)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def log_report_model(run_id: str, model, report_cfg, pretrain_cfg) -> str:
    """Log the generator as the pyfunc artifact ``model`` of ``run_id``; returns its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles the decoder's tied embeddings
        (tmp / "report_config.yaml").write_text(saved_config_yaml(report_cfg))
        (tmp / "pretrain_config.yaml").write_text(saved_config_yaml(pretrain_cfg))
        (tmp / "decoder_config.json").write_text(model.decoder.config.to_json_string())
        return log_saved_model(run_id, ReportGeneratorModel, {
            "weights": str(tmp / "model.safetensors"), "report_config": str(tmp / "report_config.yaml"),
            "pretrain_config": str(tmp / "pretrain_config.yaml"), "decoder_config": str(tmp / "decoder_config.json")},
            PIP_REQUIREMENTS)
