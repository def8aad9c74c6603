"""CT / MR segmentation run (``python -m medmm.pipelines.segment``): MulModSeg text-conditioned
heads beside a plain head (as is, or matched to their parameter count) on the same backbone,
tracked in MLflow.

``train`` fits every variant of ``variants`` on the cohort's train split with the same
seed, data stream and step budget, then scores the held-out test split (Dice / HD95 per
class and modality, policy in :mod:`medmm.metrics.segmentation`) and logs the masks as
NIfTI with each source image's affine. ``infer`` loads a run's weights and writes one mask
per input (NIfTI file or DICOM series folder), again with the input's affine.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from monai.utils import set_determinism

from medmm.config.core import ConfigError
from medmm.console import Number, headline
from medmm.data.segmentation import cohort_classes, load_volume_cohort, model_input, read_input_volume
from medmm.io.errors import MedmmInputError
from medmm.metrics.segmentation import POLICY, summarise
from medmm.models.registry import create_model
from medmm.models.segmentation import trainable_parameters
from medmm.tracking.figures import (
    grouped_bars_figure,
    metric_curves_figure,
    segmentation_overlays_figure,
    show_cohort_examples,
)
from medmm.tracking.pipeline_run import (
    finish,
    log_context,
    log_figure,
    log_json,
    log_metrics,
    register_with_aliases,
    run_name,
    save_weights,
    start_run,
)
from medmm.tracking.run_context import log_json_artifact
from medmm.tracking.store import default_tracking_uri
from medmm.workflows.preflight import CohortNeeds, check_before_run
from medmm.workflows.segment.config import SegmentConfig
from medmm.workflows.segment.served import log_segmenter, segmenter_from_files
from medmm.workflows.segment.training import (
    MIXED,
    evaluate_cases,
    predict_volume,
    save_mask,
    train_variant,
)


@dataclass
class SegmentOutcome:
    run_id: str
    tracking_uri: str
    summary: list[dict]
    table: str
    n_skipped: int

    def __str__(self) -> str:  # what the command prints
        # mean Dice over classes per modality: the text-conditioned variant beside the plain head
        means = {(r["variant"], r["modality"]): r["dice"] for r in self.summary if r["class"] == "mean"}
        variants = sorted({v for v, _ in means}, key=lambda v: v != "text")
        numbers = [Number(f"{modality.upper()} mean Dice, {VARIANT_NAMES.get(variants[0], variants[0])}", value,
                          tuple((VARIANT_NAMES.get(v, v), means.get((v, modality))) for v in variants[1:]))
                   for (variant, modality), value in sorted(means.items(), key=lambda kv: kv[0][1])
                   if variant == variants[0]]
        notes = [f"skipped cases with unreadable files: {self.n_skipped}"] if self.n_skipped else []
        return headline("test split (held-out cases)", numbers, run_id=self.run_id, tracking_uri=self.tracking_uri,
                        table="results/test_table.md", notes=notes)


def metric_key(*parts: str) -> str:
    return ".".join(str(p).replace(" ", "_") for p in parts)


VARIANT_NAMES = {"text": "MulModSeg (text-conditioned)", "none": "plain head",
                 "none_matched": "plain head, matched parameters"}
VOLUME_MODALITIES = ("ct", "mr")


def loss_curve_group(key: str) -> tuple[str, str]:
    """Curves panel and line of a metric key: ``<variant>.train_loss.<modality>`` -> the
    modality's training-loss panel, one line per variant."""
    parts = key.split(".")
    if len(parts) == 3 and parts[1] == "train_loss":
        panel = "CT + MR (mixed batches)" if parts[2] == MIXED else parts[2].upper()
        return f"{panel} training loss", VARIANT_NAMES.get(parts[0], parts[0])
    return key, key


def format_table(summary: list[dict]) -> str:
    """Markdown: one row per modality x class, Dice and HD95 of each variant side by side."""
    variants = sorted({r["variant"] for r in summary}, key=lambda v: v != "text")
    header = "| modality | class | " + " | ".join(f"Dice {VARIANT_NAMES[v]} | HD95 mm {VARIANT_NAMES[v]}"
                                                for v in variants) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(variants))]
    keys = sorted({(r["modality"], r["class"]) for r in summary}, key=lambda k: (k[0], k[1] == "mean", k[1]))
    by = {(r["variant"], r["modality"], r["class"]): r for r in summary}
    for modality, cls in keys:
        cells = []
        for v in variants:
            r = by.get((v, modality, cls))
            if r is None:
                cells += ["", ""]
                continue
            miss = f" ({r['n_missed']} missed)" if r.get("n_missed") else ""
            cells += [f"{r['dice']:.3f}{miss}", f"{r['hd95']:.1f}"]
        name = f"**{cls}**" if cls == "mean" else cls
        lines.append(f"| {modality.upper()} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_means(summary: list[dict]) -> list[dict]:
    """Append per (variant, modality) the mean over classes (each class weighs the same)."""
    out = list(summary)
    for variant in sorted({r["variant"] for r in summary}):
        for modality in sorted({r["modality"] for r in summary}):
            rs = [r for r in summary if r["variant"] == variant and r["modality"] == modality and r["n_cases"]]
            if rs:
                out.append({"variant": variant, "modality": modality, "class": "mean",
                            "dice": float(np.mean([r["dice"] for r in rs])),
                            "hd95": float(np.mean([r["hd95"] for r in rs])),
                            "n_cases": min(r["n_cases"] for r in rs),
                            "n_missed": sum(r["n_missed"] for r in rs),
                            "n_false_positive": sum(r["n_false_positive"] for r in rs)})
    return out


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def train(cfg: SegmentConfig) -> SegmentOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asked = tuple(cfg.data.modalities or ())
    facts = check_before_run(cfg.tracking.uri, output_dirs={"output_dir": cfg.output_dir},
                             cohort=CohortNeeds(cfg.data.root, asked, study_modality=None,
                                                why=f"segmentation (data.modalities: {', '.join(asked)})"))
    if not asked:  # the cohort's own image modalities
        cfg = cfg.model_copy(deep=True)
        cfg.data.modalities = [m for m in VOLUME_MODALITIES if m in facts.modalities]
        if not cfg.data.modalities:
            raise MedmmInputError(cfg.data.root, f"segmentation needs ct or mr images; the cohort's manifest has "
                                                 f"{facts.describe()}")
    cohort_classes(cfg.data.root)  # labels.json or dataset.json: a missing class list fails before any run
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    client, run_id, tracking_uri = start_run(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg, "segment"),
                                             "segment")

    start = time.perf_counter()
    try:
        cohort = load_volume_cohort(cfg.data)
    except FileNotFoundError as exc:
        finish(client, run_id, "FAILED")
        raise ConfigError(str(exc)) from exc
    for split in ("train", "test"):
        if not cohort.select(split):
            raise MedmmInputError(cfg.data.root, f"no readable {split} case with a label map in "
                                                 f"{', '.join(cfg.data.modalities)} ({len(cohort.skipped)} skipped)")
    log_context(client, run_id, "segment", cfg, cohort.manifest, cohort.skipped)
    log_metrics(client, run_id, {"data.n_skipped_cases": len(cohort.skipped),
                                 **{metric_key("data", f"n_{split}", m): len(cohort.select(split, m))
                                    for split in ("train", "val", "test") for m in cfg.data.modalities}})
    client.set_tag(run_id, "metric_policy", POLICY)
    client.set_tag(run_id, "classes", json.dumps(cohort.classes))
    labels = {"classes": cohort.classes, "modality_classes": cohort.modality_classes}
    log_json_artifact(client, run_id, "labels.json", labels, "run")
    test_cases = cohort.select("test")
    out_dir = Path(cfg.output_dir) / run_id
    to_register, registered = cfg.variant_to_register(), None
    rows: list[dict] = []
    # the first test case of each modality, drawn with every variant's prediction (images of the
    # cohort: only where show_cohort_examples allows)
    shown = {m: cases[0] for m in cfg.data.modalities if (cases := cohort.select("test", m))}
    if not show_cohort_examples(cfg.examples_figure, cfg.data.root):
        shown = {}
    overlays: dict[str, dict[str, np.ndarray]] = {m: {} for m in shown}
    for variant in cfg.variants:
        _seed(cfg.seed)
        model = create_model(cfg.model.name, cfg.model, class_names=cohort.classes, conditioning=variant)
        log_metrics(client, run_id, {metric_key(variant, "n_trainable_params"): trainable_parameters(model)})

        def on_step(step, modality, loss, last, variant=variant):
            if step % cfg.trainer.log_every_n_steps == 0 or last:
                log_metrics(client, run_id, {metric_key(variant, "train_loss", modality): loss}, step=step)

        fit = train_variant(model, cohort, cfg, on_step)
        t0 = time.perf_counter()
        mask_dir = out_dir / "masks" / variant
        rows += evaluate_cases(model, test_cases, cohort, cfg, variant, mask_dir if cfg.save_test_masks else None)
        for modality, case in shown.items():
            overlays[modality][VARIANT_NAMES[variant]] = predict_volume(
                model, case.image, modality, cfg.data.roi, cfg.trainer.sw_batch_size, cfg.trainer.sw_overlap)
        log_metrics(client, run_id, {metric_key(variant, "n_optimiser_steps"): fit["steps"],
                                     metric_key(variant, "time", "train_s"): fit["train_s"],
                                     metric_key(variant, "time", "eval_s"): time.perf_counter() - t0})
        if cfg.save_test_masks and mask_dir.exists():
            client.log_artifacts(run_id, str(mask_dir), f"masks/{variant}")
        with tempfile.TemporaryDirectory() as tmp:  # every variant's weights: what `infer` reads
            client.log_artifact(run_id, str(save_weights(model, Path(tmp) / f"{variant}.safetensors")), "model")
        if variant == to_register:
            registered = model

    summary = with_means(summarise(rows))
    log_metrics(client, run_id, {metric_key("test", r["variant"], r["modality"], r["class"], name): r[name]
                                 for r in summary for name in ("dice", "hd95")})
    means = {v: [r["dice"] for r in summary if r["variant"] == v and r["class"] == "mean"] for v in cfg.variants}
    table = format_table(summary)
    log_json(client, run_id, "test_scores_per_case.json", rows)
    log_json(client, run_id, "test_summary.json", summary)
    client.log_text(run_id, table + f"\n\nmetric policy: {POLICY}\n", "results/test_table.md")
    log_json(client, run_id, "test_cases.json", {"test_cases": [{"case": c.case_id, "modality": c.modality,
                                                                 "source": c.source} for c in test_cases]})
    bars = {VARIANT_NAMES[v]: {f"{r['modality'].upper()} {r['class']}": r["dice"] for r in summary
                               if r["variant"] == v} for v in cfg.variants}
    order = sorted({(r["modality"], r["class"]) for r in summary}, key=lambda k: (k[0], k[1] == "mean", k[1]))
    log_figure(client, run_id, grouped_bars_figure(bars, [f"{m.upper()} {c}" for m, c in order],
                                                   "segmentation on the held-out split", "Dice"), "test_dice")
    if shown:
        examples = [{"caption": f"{m.upper()} test case #0 of {len(cohort.select('test', m))}", "image": case.image[0],
                     "label": case.label[0], "predictions": overlays[m]} for m, case in shown.items()]
        log_figure(client, run_id, segmentation_overlays_figure(examples, cohort.classes), "segmentation_overlays")
    curves = metric_curves_figure(client, run_id, group=loss_curve_group)
    if curves is not None:
        log_figure(client, run_id, curves, "metric_curves")
    log_metrics(client, run_id, {"time.total_s": time.perf_counter() - start})
    if registered is not None and means[to_register]:
        log_metrics(client, run_id, {"test.mean_dice": float(np.mean(means[to_register]))})
        uri = log_segmenter(run_id, registered, cfg, labels, to_register)
        # a fixed step budget selects nothing on validation data: newest only, no champion
        register_with_aliases(client, uri, cfg.tracking.registered_name, run_id, metric=None)
    finish(client, run_id)
    return SegmentOutcome(run_id, tracking_uri, summary, table, len(cohort.skipped))



def load_trained(run_id: str, variant: str, tracking_uri: str):
    """-> (model in eval mode, its training config, class names) from a run's artifacts."""
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run/config.yaml", dst_path=tmp)
        labels = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run/labels.json", dst_path=tmp)
        try:
            weights = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"model/{variant}.safetensors",
                                                          dst_path=tmp)
        except Exception as exc:  # noqa: BLE001 - mlflow raises several types for a missing artifact
            raise ConfigError(f"run {run_id} has no trained variant {variant!r}") from exc
        return segmenter_from_files(Path(cfg_path), Path(labels), Path(weights), variant)


def mask_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return f"{name}_mask.nii.gz"


def infer(cfg: SegmentConfig) -> list[Path]:
    if not cfg.infer.run_id:
        raise ConfigError("infer needs infer.run_id=<MLflow run of a train command>")
    if not cfg.infer.inputs:
        raise ConfigError("infer needs infer.inputs=[file.nii.gz, dicom_folder, ...]")
    model, train_cfg, _ = load_trained(cfg.infer.run_id, cfg.infer.variant, cfg.tracking.uri or default_tracking_uri())
    written = []
    for raw in cfg.infer.inputs:
        path = Path(raw)
        try:
            volume = read_input_volume(path)
        except MedmmInputError as exc:  # a bad input never loses the others
            print(f"WARNING: skipped {exc}", file=sys.stderr)
            continue
        pred = predict_volume(model, model_input(volume, cfg.infer.modality, train_cfg.data), cfg.infer.modality,
                              train_cfg.data.roi, train_cfg.trainer.sw_batch_size, train_cfg.trainer.sw_overlap)
        written.append(save_mask(pred, volume.affine, Path(cfg.infer.output_dir) / mask_name(path)))
    return written
