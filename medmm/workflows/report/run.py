"""Report generation from a pretrained encoder (``python -m medmm.pipelines.report``).

``train`` fits the decoder (and fine-tunes the encoders) on the train split, keeps the
epoch with the lowest validation loss, scores it on the held-out split with greedy and
beam search beside two baselines (nearest-neighbour retrieval of a training report
through the pretrained embedding; the most frequent training report), logs everything to
MLflow and registers the model. ``evaluate`` scores a registered model again;
``generate`` writes reports for given files. ``task: summarise`` trains and scores a
FINDINGS -> IMPRESSION summariser instead (:mod:`medmm.workflows.report.summarise`).
"""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import transformers
from torch.utils.data import DataLoader, Subset

from medmm.config.core import ConfigError
from medmm.console import Number, headline
from medmm.data.datamodule import PretrainDataModule
from medmm.io.errors import MedmmInputError
from medmm.io.labeler import label_report
from medmm.metrics.report_generation import report_generation_metrics
from medmm.models.heads.report_decoder import ReportGenerator, pretrained_encoders
from medmm.tracking.figures import metric_curves_figure, show_cohort_examples
from medmm.tracking.pipeline_run import (
    finish,
    lightning_logger,
    log_cohort_summary,
    log_context,
    log_figure,
    log_json,
    log_metrics,
    register_with_aliases,
    run_name,
    start_run,
)
from medmm.tracking.run_context import source_tag
from medmm.tracking.saved_model import load_saved_model, served_model
from medmm.tracking.store import default_tracking_uri
from medmm.workflows.preflight import CohortNeeds, check_before_run, decoded_cohort_outputs
from medmm.workflows.pretrained import load_pretrained
from medmm.workflows.report import summarise
from medmm.workflows.report.config import ReportConfig
from medmm.workflows.report.figures import examples_figure, metrics_figure
from medmm.workflows.report.module import (
    ReportGenerationTask,
    embed_texts_chunked,
    fit_best,
    generate_reports,
    most_frequent_report,
    nearest_report,
    start_task,
)
from medmm.workflows.report.served import log_report_model
from medmm.workflows.report.summarise import SummariseOutcome

HEADLINE = ("bleu1", "bleu4", "rouge_l", "cider", "ce_f1")
METRIC_ORDER = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "ce_precision", "ce_recall", "ce_f1",
                "ce_macro_f1")


@dataclass
class ReportOutcome:
    run_id: str
    tracking_uri: str
    metrics: dict[str, dict[str, float]]  # system -> metric -> value
    table: str
    model_uri: str | None
    version: str | None
    split: str = "test"
    registered_name: str | None = None

    def __str__(self) -> str:  # what the command prints
        # the model's decoding with the best clinical-efficacy F1, beside both baselines
        decodings = [system for system in self.metrics if system.startswith("model")]
        best = max(decodings, key=lambda system: self.metrics[system].get("ce_f1") or 0.0, default=None)
        baselines = {"nearest-report baseline": "nearest_neighbour", "most-frequent baseline": "most_frequent"}
        numbers = [Number(f"{label} ({best.removeprefix('model_')})", self.metrics[best][key],
                          tuple((name, self.metrics.get(system, {}).get(key)) for name, system in baselines.items()))
                   for key, label in (("bleu4", "BLEU-4"), ("rouge_l", "ROUGE-L"), ("ce_f1", "findings F1"))
                   if best is not None and self.metrics[best].get(key) is not None]
        notes = [f"registered model: {self.registered_name} version {self.version} ({self.model_uri})"] \
            if self.version else []
        return headline(f"report generation, '{self.split}' split (held-out patients)", numbers, run_id=self.run_id,
                        tracking_uri=self.tracking_uri, table="results/report_metrics.txt", notes=notes)


def _data_module(cfg: ReportConfig, pretrain_cfg):
    # The encoders were trained on inputs of the pretraining run's size and ECG rate.
    data = cfg.data.model_copy(update={"image_size": pretrain_cfg.data.image_size, "ecg_fs": pretrain_cfg.data.ecg_fs})
    dm = PretrainDataModule(data, max_tokens=cfg.decoder.max_tokens, seed=cfg.seed,
                            tokenizer_path=pretrain_cfg.model.text.model_path)
    dm.setup()
    return dm


def evaluate_systems(cfg: ReportConfig, generator, pretrained, dm, split: str) -> tuple[dict, list[dict]]:
    """Metrics of the model (each decoding) and of both baselines on ``split``, and examples."""
    cohort, tok = dm.cohort, pretrained.tokenizer
    loader = dm.loader(split, batch_size=cfg.generation.batch_size)
    if cfg.eval.max_studies is not None and cfg.eval.max_studies < len(loader.dataset):
        loader = DataLoader(Subset(loader.dataset, range(cfg.eval.max_studies)), batch_size=loader.batch_size,
                            collate_fn=loader.collate_fn)
    outputs: dict[str, list[str]] = {}
    index = None
    g = cfg.generation
    for beams in g.beams:
        name = "model_greedy" if beams == 1 else f"model_beam{beams}"
        outputs[name], index = generate_reports(generator, loader, tok, num_beams=beams,
                                                max_new_tokens=g.max_new_tokens,
                                                no_repeat_ngram_size=g.no_repeat_ngram_size)
    refs = [str(t) for t in cohort.report_text[index]]
    train_texts = [str(t) for t in cohort.report_text[cohort.indices("train")]]
    backbone = pretrained.backbone()  # the retrieval embeddings of either pretraining family
    train_emb = embed_texts_chunked(backbone, tok, train_texts, pretrained.config.model.text.max_tokens)
    outputs["nearest_neighbour"] = nearest_report(backbone, loader, train_emb, train_texts)
    outputs["most_frequent"] = [most_frequent_report(train_texts)] * len(refs)
    metrics = {name: report_generation_metrics(hyps, refs) for name, hyps in outputs.items()}
    first = next(iter(outputs))
    examples = []
    for i in range(min(cfg.eval.n_examples, len(refs))):
        examples.append({
            "generated": outputs[first][i], "decoding": first, "reference": refs[i],
            "nearest_neighbour": outputs["nearest_neighbour"][i],
            "generated_findings": list(label_report(outputs[first][i]).positive) if outputs[first][i] else [],
            "reference_findings": list(label_report(refs[i]).positive),
        })
    return metrics, examples


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    header = f"{'system':<20}" + "".join(f"{m:>13}" for m in METRIC_ORDER)
    lines = [header, "-" * len(header)]
    for system, values in metrics.items():
        lines.append(f"{system:<20}" + "".join(f"{values[m]:>13.4f}" for m in METRIC_ORDER))
    best = {m: max(metrics, key=lambda s: metrics[s][m]) for m in METRIC_ORDER}
    lines.append("")
    lines.append("best per metric: " + ", ".join(f"{m}: {s}" for m, s in best.items()))
    return "\n".join(lines)


def _log_evaluation(client, run_id, metrics, examples, split, log_text: bool) -> str:
    for system, values in metrics.items():
        log_metrics(client, run_id, values, prefix=f"{split}.{system}.")
    rows = [{"system": s, **v} for s, v in metrics.items()]
    log_json(client, run_id, "report_metrics.json", rows)
    table = format_metrics(metrics)
    client.log_text(run_id, table, "results/report_metrics.txt")
    log_figure(client, run_id, metrics_figure(metrics, HEADLINE), "report_metrics")
    if log_text:  # report text is the cohort's own data: on for the demo or where the user turns it on
        log_json(client, run_id, "report_examples.json", examples)
        log_figure(client, run_id, examples_figure(examples[:4], split), "report_examples")
    return table


def train(cfg: ReportConfig) -> ReportOutcome | SummariseOutcome:
    if cfg.task == "summarise":  # FINDINGS -> IMPRESSION, a workflow of its own
        return summarise.train(cfg)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    transformers.logging.set_verbosity_error()  # the decoder's new cross-attention weights are expected
    if cfg.pretrained.source is None:
        raise ConfigError("pretrained.source is required: an MLflow model URI or a folder of a pretraining model")
    check_before_run(cfg.tracking.uri, output_dirs=decoded_cohort_outputs(cfg.data, cfg.output_dir),
                     cohort=CohortNeeds(cfg.data.root, ("xray", "report") + (("ecg",) if cfg.decoder.use_ecg else ()),
                                        {"train": 1, "val": 1, cfg.eval.split: 1},
                                        limit_studies=cfg.data.limit_studies,
                                        why="report generation" + (" (decoder.use_ecg)" if cfg.decoder.use_ecg else "")),
                     pretrained=cfg.pretrained.source, pretrained_tracking_uri=cfg.pretrained.tracking_uri)
    start, tracking_uri, pretrained = start_task(cfg)
    clock = {"start": start}
    cfg.check_pretrained_encoders(pretrained.backbone().modalities)  # before a run is opened
    logger = lightning_logger(cfg.tracking.experiment, run_name(cfg, "report"), tracking_uri)
    run_id = logger.run_id
    client = logger.experiment
    dm = _data_module(cfg, pretrained.config)
    if dm.cohort.skipped:
        print(f"WARNING: skipped {len(dm.cohort.skipped)} stud(ies) with unreadable files:", file=sys.stderr)
        for s in dm.cohort.skipped:
            print(f"  {s['path']}: {s['problem']}", file=sys.stderr)
    log_context(client, run_id, "report", cfg, dm.manifest, dm.cohort.skipped)
    client.set_tag(run_id, "pretrained_weights_sha256", pretrained.weights_sha256)
    client.set_tag(run_id, "pretrained_kind", pretrained.kind)
    log_cohort_summary(client, run_id, dm.cohort)
    log_metrics(client, run_id, {"data.n_skipped_studies": len(dm.cohort.skipped),
                                 **{f"data.n_{s}_studies": len(dm.cohort.indices(s)) for s in ("train", "val", "test")}})
    clock["data"] = time.perf_counter()

    generator = ReportGenerator.from_pretrained(copy.deepcopy(pretrained_encoders(pretrained.model)), cfg.decoder)
    task = ReportGenerationTask(cfg, generator)
    fit_best(cfg, task, logger, Path(cfg.output_dir) / run_id / "checkpoints", datamodule=dm)
    clock["train"] = time.perf_counter()

    metrics, examples = evaluate_systems(cfg, generator, pretrained, dm, cfg.eval.split)
    clock["eval"] = time.perf_counter()
    table = _log_evaluation(client, run_id, metrics, examples, cfg.eval.split,
                            log_text=show_cohort_examples(cfg.eval.examples_figure, cfg.data.root))
    log_metrics(client, run_id, {"time.data_s": clock["data"] - clock["start"],
                                 "time.train_s": clock["train"] - clock["data"],
                                 "time.eval_s": clock["eval"] - clock["train"]})
    curves = metric_curves_figure(client, run_id)
    if curves is not None:
        log_figure(client, run_id, curves, "metric_curves")
    model_uri = version = None
    if cfg.tracking.register_model:
        model_uri = log_report_model(run_id, generator, cfg, pretrained.config)
        version = register_with_aliases(client, model_uri, cfg.tracking.registered_name, run_id, "best_val_loss",
                                        higher_is_better=False)
    finish(client, run_id)
    return ReportOutcome(run_id, tracking_uri, metrics, table, model_uri, version, cfg.eval.split,
                         cfg.tracking.registered_name)


def _load_report_model(uri: str, tracking_uri: str | None):
    """The report model at ``uri`` (folder or MLflow URI); a folder holding code is refused."""
    try:
        return load_saved_model(uri, tracking_uri)
    except MedmmInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a bad model
        raise MedmmInputError(uri, f"cannot load a report model from it ({exc})") from None


def evaluate(cfg: ReportConfig, model_uri: str) -> ReportOutcome:
    """Score a registered report model (and the baselines) again on ``eval.split``, as a new run."""
    if cfg.task == "summarise":
        raise ConfigError("evaluate: task=summarise scores its model in train; summarisation models are not registered")
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    wrapper = served_model(_load_report_model(model_uri, tracking_uri))
    source = cfg.pretrained.source
    if source is None:
        raise ConfigError("pretrained.source is required for the nearest-neighbour baseline")
    pretrained = load_pretrained(source, cfg.pretrained.kind, tracking_uri=cfg.pretrained.tracking_uri or tracking_uri)
    cfg = cfg.model_copy(update={"decoder": wrapper.cfg.decoder})
    client, run_id, _ = start_run(tracking_uri, cfg.tracking.experiment, run_name(cfg, "report-evaluate"), "report-evaluate")
    dm = _data_module(cfg, wrapper.pretrain_cfg)
    log_context(client, run_id, "report-evaluate", cfg, dm.manifest, dm.cohort.skipped)
    client.set_tag(run_id, "evaluated_model", source_tag(model_uri, cfg))
    metrics, examples = evaluate_systems(cfg, wrapper.model, pretrained, dm, cfg.eval.split)
    table = _log_evaluation(client, run_id, metrics, examples, cfg.eval.split,
                            log_text=show_cohort_examples(cfg.eval.examples_figure, cfg.data.root))
    finish(client, run_id)
    return ReportOutcome(run_id, tracking_uri, metrics, table, model_uri, None, cfg.eval.split,
                         cfg.tracking.registered_name)


def generate(model_uri: str, tracking_uri: str | None, xrays: list[str], ecgs: list[str], beams: int | None) -> list[dict]:
    if not xrays:
        raise ConfigError("generate: give at least one --xray file")
    if ecgs and len(ecgs) != len(xrays):
        raise ConfigError(f"generate: {len(ecgs)} --ecg files for {len(xrays)} --xray files")
    model = _load_report_model(model_uri, tracking_uri or default_tracking_uri())
    frame = pd.DataFrame({"xray": xrays, **({"ecg": ecgs} if ecgs else {})})
    texts = model.predict(frame, params={"num_beams": beams} if beams else None)
    return [{"xray": x, **({"ecg": e} if ecgs else {}), "report": t}
            for x, e, t in zip(xrays, ecgs or [None] * len(xrays), texts)]


def format_generated(rows: list[dict]) -> str:
    """The generated reports, one block per X-ray."""
    return "\n".join(f"== {row['xray']}\n{row['report']}\n" for row in rows)
