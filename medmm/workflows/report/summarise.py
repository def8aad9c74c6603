"""Findings summarisation, a PTUnifier downstream task (``task: summarise`` of
``python -m medmm.pipelines.report train``): the IMPRESSION section written from the
FINDINGS section of a report.

The report decoder (:class:`~medmm.models.heads.report_decoder.FindingsSummariser`) reads
PTUnifier's fusion-encoder tokens of the FINDINGS (text-only input, pseudo-image prompts) and
is trained on the train split to write the IMPRESSION; the epoch with the lowest validation
loss is scored on the held-out split. Sections come from the cohort's report files through
:func:`medmm.io.reports.read_report`; a study without a report, with an unreadable one, or
lacking either section is left out and counted (``data.n_left_out.<reason>``, first reason
that applies), never failing the run.

Scored beside three baselines, all ROUGE-1 / -2 / -L F-measures (rouge-score, on the report
metrics' tokens) against the reference IMPRESSION:

- ``lead``: the first sentence of the FINDINGS;
- ``extractive``: the FINDINGS sentence closest (TF-IDF cosine) to the mean TF-IDF vector of
  the training impressions, i.e. the sentence that reads most like an impression;
- ``nearest_impression``: the IMPRESSION of the training study whose FINDINGS are closest to
  the query's in the pretrained model's text embedding (PTUnifier's ITC text side).
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from sklearn.feature_extraction.text import TfidfVectorizer
from torch.utils.data import DataLoader

from medmm.cohort.manifest import Manifest
from medmm.config.core import ConfigError
from medmm.console import Number, headline, progress
from medmm.io.errors import MedmmInputError
from medmm.io.reports import parse_report, read_report
from medmm.metrics.report_generation import rouge_scores, tokenize
from medmm.models.heads.report_decoder import FindingsSummariser
from medmm.tracking.figures import show_cohort_examples
from medmm.tracking.pipeline_run import finish, lightning_logger, log_context, log_json, log_metrics, run_name
from medmm.workflows.preflight import CohortNeeds, check_before_run
from medmm.workflows.report.config import ReportConfig
from medmm.workflows.report.module import (
    ReportGenerationTask,
    embed_texts_chunked,
    fit_best,
    generate_reports,
    start_task,
)

ROUGE = ("rouge1", "rouge2", "rouge_l")
BASELINES = {"lead": "lead baseline", "extractive": "extractive baseline",
             "nearest_impression": "nearest-impression baseline"}
TABLE = "results/summarise_metrics.txt"
# a sentence ends at . ! or ? followed by white space
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z0-9]")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` that hold a word (a stray "." is no sentence)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if _WORD.search(s)]


def lead_sentence(text: str) -> str:
    """The first sentence of ``text`` (the lead baseline's summary)."""
    return next(iter(sentences(text)), text.strip())


def summary_scores(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1 / -2 / -L F-measures over pairs (the report metrics' ``rouge_scores``)
    and the summaries' mean length in words."""
    return {**rouge_scores(hyps, refs), "mean_words": float(np.mean([len(tokenize(h)) for h in hyps]))}


def extractive_summaries(findings: list[str], train_impressions: list[str]) -> list[str]:
    """For each FINDINGS text, its sentence closest (TF-IDF cosine) to the mean TF-IDF vector
    of the training impressions; ties go to the earlier sentence."""
    vectorizer = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None)
    centroid = np.asarray(vectorizer.fit_transform(train_impressions).mean(axis=0)).ravel()
    out = []
    for text in findings:
        candidates = sentences(text) or [text]
        vectors = vectorizer.transform(candidates)  # rows L2-normalised
        out.append(candidates[int(np.argmax(vectors @ centroid))])
    return out


@dataclass
class SectionPairs:
    """The (FINDINGS, IMPRESSION) pairs of a cohort's studies, and the studies left out."""

    splits: np.ndarray  # [N] split of each pair
    findings: list[str]
    impressions: list[str]
    left_out: Counter = field(default_factory=Counter)  # reason -> studies

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)


def section_pairs(manifest: Manifest, limit: int | None = None) -> SectionPairs:
    """FINDINGS and IMPRESSION of each study (the first ``limit`` studies, in the order the
    report workflow reads them); a study without both is counted under the first reason that
    applies: ``no_report``, ``unreadable_report``, ``no_findings``, ``no_impression``."""
    studies = manifest.studies()
    if limit is not None:
        studies = studies.iloc[:limit]
    splits, findings, impressions, left_out = [], [], [], Counter()
    for row in progress(studies.to_dict("records"), "read report sections"):
        held, path = row.get("report_text"), row.get("report")
        if not isinstance(held, str) and not (isinstance(path, str) and path):
            left_out["no_report"] += 1
            continue
        try:
            report = parse_report(held) if isinstance(held, str) else read_report(manifest.resolve(path))
        except (MedmmInputError, OSError):
            left_out["unreadable_report"] += 1
            continue
        f, i = report.sections.get("FINDINGS"), report.sections.get("IMPRESSION")
        if not f or not i:
            left_out["no_findings" if not f else "no_impression"] += 1
            continue
        splits.append(row["split"])
        findings.append(f)
        impressions.append(i)
    return SectionPairs(np.array(splits, dtype=object), findings, impressions, left_out)


class PairCollate:
    """Pair indices -> a batch: ``findings_ids`` / ``findings_mask`` (the conditioning text),
    ``report_ids`` / ``report_mask`` (the IMPRESSION, the target), ``index``; each trimmed to
    the longest text of the batch."""

    def __init__(self, tokenizer, pairs: SectionPairs, max_tokens: int):
        def encode(texts):
            enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
            return enc["input_ids"], enc["attention_mask"]

        self.findings, self.impressions = encode(pairs.findings), encode(pairs.impressions)

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        batch = {"index": torch.tensor(idx)}
        for prefix, (ids, mask) in (("findings", self.findings), ("report", self.impressions)):
            length = int(mask[idx].sum(1).max())
            batch[f"{prefix}_ids"], batch[f"{prefix}_mask"] = ids[idx, :length], mask[idx, :length]
        return batch


def pair_loader(collate: PairCollate, indices: np.ndarray, batch_size: int, *, train: bool = False,
                seed: int = 0) -> DataLoader:
    """Batches of the pairs ``indices``; training batches shuffle and drop the last partial
    one, and are never larger than the split (a split smaller than a batch trains as one)."""
    size = max(1, min(batch_size, len(indices))) if train else batch_size
    return DataLoader([int(i) for i in indices], batch_size=size, shuffle=train, drop_last=train, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed) if train else None)


@dataclass
class SummariseOutcome:
    run_id: str
    tracking_uri: str
    metrics: dict[str, dict[str, float]]  # system -> metric -> value
    table: str
    left_out: dict[str, int]
    split: str = "test"

    def __str__(self) -> str:  # what the command prints
        model = next((s for s in self.metrics if s.startswith("model")), None)
        numbers = [Number(f"{label} ({model.removeprefix('model_')})", self.metrics[model][key],
                          tuple((name, self.metrics.get(system, {}).get(key)) for system, name in BASELINES.items()))
                   for key, label in (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rouge_l", "ROUGE-L"))
                   if model is not None]
        left = sum(self.left_out.values())
        notes = [f"left out: {left} stud(ies) lacking FINDINGS or IMPRESSION ({_describe(self.left_out)})"] \
            if left else []
        return headline(f"findings -> impression summarisation, '{self.split}' split (held-out patients)", numbers,
                        run_id=self.run_id, tracking_uri=self.tracking_uri, table=TABLE, notes=notes)


def _describe(left_out: dict[str, int]) -> str:
    return ", ".join(f"{reason.replace('_', ' ')}: {n}" for reason, n in sorted(left_out.items()))


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    columns = (*ROUGE, "mean_words")
    header = f"{'system':<20}" + "".join(f"{m:>12}" for m in columns)
    lines = [header, "-" * len(header)]
    lines += [f"{system:<20}" + "".join(f"{values[m]:>12.4f}" for m in columns) for system, values in metrics.items()]
    return "\n".join(lines)


def evaluate_summaries(cfg: ReportConfig, summariser, pretrained, pairs: SectionPairs, collate: PairCollate,
                       split: str) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """ROUGE of the model (each decoding) and of the three baselines on ``split``, and examples."""
    held_out = pairs.indices(split)[: cfg.eval.max_studies]
    loader = pair_loader(collate, held_out, cfg.generation.batch_size)
    g, tok = cfg.generation, pretrained.tokenizer
    outputs: dict[str, list[str]] = {}
    index = held_out
    for beams in g.beams:
        name = "model_greedy" if beams == 1 else f"model_beam{beams}"
        outputs[name], index = generate_reports(summariser, loader, tok, num_beams=beams,
                                                max_new_tokens=g.max_new_tokens,
                                                no_repeat_ngram_size=g.no_repeat_ngram_size)
    refs = [pairs.impressions[i] for i in index]
    findings = [pairs.findings[i] for i in index]
    train = pairs.indices("train")
    outputs["lead"] = [lead_sentence(f) for f in findings]
    outputs["extractive"] = extractive_summaries(findings, [pairs.impressions[i] for i in train])
    backbone, max_tokens = pretrained.backbone(), pretrained.config.model.text.max_tokens
    train_emb = embed_texts_chunked(backbone, tok, [pairs.findings[i] for i in train], max_tokens)
    query_emb = embed_texts_chunked(backbone, tok, findings, max_tokens)
    outputs["nearest_impression"] = [pairs.impressions[train[j]] for j in (query_emb @ train_emb.T).argmax(1)]
    metrics = {name: summary_scores(hyps, refs) for name, hyps in outputs.items()}
    examples = [{"findings": findings[i], "reference": refs[i], **{name: out[i] for name, out in outputs.items()}}
                for i in range(min(cfg.eval.n_examples, len(refs)))]
    return metrics, examples


def _check_pairs(pairs: SectionPairs, root, splits: tuple[str, ...]) -> None:
    for split in splits:
        if not len(pairs.indices(split)):
            raise MedmmInputError(root, f"the {split} split holds no study with both a FINDINGS and an IMPRESSION "
                                        f"section (left out: {_describe(pairs.left_out) or 'none'})")


def train(cfg: ReportConfig) -> SummariseOutcome:
    """Fit the summariser, score it and the baselines on ``eval.split``, log it all to MLflow."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    transformers.logging.set_verbosity_error()  # the decoder's new cross-attention weights are expected
    cfg.check_summarise(cfg.pretrained.kind)
    if cfg.pretrained.source is None:
        raise ConfigError("pretrained.source is required: an MLflow model URI or a folder of a PTUnifier model")
    splits = ("train", "val", cfg.eval.split)
    facts = check_before_run(cfg.tracking.uri, output_dirs={"output_dir": cfg.output_dir},
                             cohort=CohortNeeds(cfg.data.root, ("report",), dict.fromkeys(splits, 1),
                                                study_modality="report", limit_studies=cfg.data.limit_studies,
                                                why="summarisation"),
                             pretrained=cfg.pretrained.source, pretrained_tracking_uri=cfg.pretrained.tracking_uri)
    start, tracking_uri, pretrained = start_task(cfg)
    clock = {"start": start}
    cfg.check_summarise(pretrained.kind)  # before a run is opened
    pairs = section_pairs(facts.manifest, cfg.data.limit_studies)
    _check_pairs(pairs, cfg.data.root, splits)
    if pairs.left_out:
        print(f"summarisation: left out {sum(pairs.left_out.values())} stud(ies) ({_describe(pairs.left_out)})",
              file=sys.stderr)

    logger = lightning_logger(cfg.tracking.experiment, run_name(cfg, "report-summarise"), tracking_uri)
    run_id, client = logger.run_id, logger.experiment
    log_context(client, run_id, "report", cfg, facts.manifest, [])
    client.set_tag(run_id, "pretrained_weights_sha256", pretrained.weights_sha256)
    client.set_tag(run_id, "pretrained_kind", pretrained.kind)
    client.set_tag(run_id, "report_task", "summarise")
    log_metrics(client, run_id, {**{f"data.n_{s}_pairs": len(pairs.indices(s)) for s in ("train", "val", "test")},
                                 "data.n_left_out": sum(pairs.left_out.values()),
                                 **{f"data.n_left_out.{r}": n for r, n in pairs.left_out.items()}})
    collate = PairCollate(pretrained.tokenizer, pairs, cfg.decoder.max_tokens)
    clock["data"] = time.perf_counter()

    summariser = FindingsSummariser.from_pretrained(copy.deepcopy(pretrained.model), cfg.decoder)
    task = ReportGenerationTask(cfg, summariser)
    fit_best(cfg, task, logger, cfg.output_dir / run_id / "checkpoints",
             train_dataloaders=pair_loader(collate, pairs.indices("train"), cfg.data.batch_size, train=True,
                                           seed=cfg.seed),
             val_dataloaders=pair_loader(collate, pairs.indices("val"), cfg.data.batch_size))
    clock["train"] = time.perf_counter()

    metrics, examples = evaluate_summaries(cfg, summariser, pretrained, pairs, collate, cfg.eval.split)
    clock["eval"] = time.perf_counter()
    for system, values in metrics.items():
        log_metrics(client, run_id, values, prefix=f"{cfg.eval.split}.{system}.")
    log_json(client, run_id, "summarise_metrics.json", [{"system": s, **v} for s, v in metrics.items()])
    table = format_metrics(metrics)
    client.log_text(run_id, table, TABLE)
    if show_cohort_examples(cfg.eval.examples_figure, cfg.data.root):  # report text: the demo's, or when asked
        log_json(client, run_id, "summarise_examples.json", examples)
    log_metrics(client, run_id, {"time.data_s": clock["data"] - clock["start"],
                                 "time.train_s": clock["train"] - clock["data"],
                                 "time.eval_s": clock["eval"] - clock["train"]})
    finish(client, run_id)
    return SummariseOutcome(run_id, tracking_uri, metrics, table, dict(pairs.left_out), cfg.eval.split)
