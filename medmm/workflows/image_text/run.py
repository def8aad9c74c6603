"""Image-text pretraining from labels over several imaging modalities
(``python -m medmm.pipelines.image_text``), the setting of UniMed-CLIP (Khattak et al. 2024):
classification datasets of chest X-rays, CT and MR slices and pathology tiles become
image-caption pairs (:mod:`medmm.workflows.image_text.data`), and one dual encoder - one image
tower for every modality, the MiniLM text tower with LoRA - is trained with CLIP's loss on
batches that mix the modalities. Identical captions in a batch are each other's positives
(soft targets), not negatives.

Each seed also trains, where ``per_modality_baselines`` is set, one model of the same
architecture, size and starting weights per modality on that modality alone, for as many
optimiser steps as the mixed model (``baseline_budget: steps``, the same compute) or as many
passes over its own images (``epochs``). Every model is scored zero-shot on each modality's held-out
test images from prompts written with the modality's caption style: per class, the AUROC of
the positive-minus-negative prompt similarity (multi-label styles) or of the softmax over the
classes' prompts (single-label styles, plus accuracy); the macro mean over classes is the
headline. The weights kept are those with the best validation zero-shot macro AUROC, checked
once per mixed-model epoch.

Metrics: ``test.<model>.<modality>.<metric>`` (step = seed), their ``_mean`` / ``_sd`` over
seeds, ``train.<model>.*``, ``data.<modality>.*``; ``results/image_text_table.md`` and
``results/image_text.json``. Each seed's mixed model is saved as a medmm pretraining folder
(``<output_dir>/mixed_seed<seed>``, also the run's ``model/`` artifacts), so its image tower
can start other work (``model.xray.checkpoint``, ``tile_features``' ``encoder.pretrained``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import time as clock
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medmm.cohort.captions import caption_style, class_prompts
from medmm.console import Number, headline
from medmm.data.config import DataConfig
from medmm.data.tokenizer import load_tokenizer
from medmm.losses.contrastive import clip_loss, label_aware_targets
from medmm.metrics.zeroshot import binary_auroc, zero_shot_scores
from medmm.models import create_model
from medmm.models.more import ModelConfig
from medmm.tracking.figures import grouped_bars_figure
from medmm.tracking.pipeline_run import finish, log_context, log_figure, log_json, log_metrics, run_name, start_run
from medmm.training.schedule import cosine_with_warmup
from medmm.workflows.contrastive.config import LossConfig, PretrainConfig
from medmm.workflows.image_text.config import ImageTextConfig
from medmm.workflows.image_text.data import LabelledSet, load_labelled_set, read_label_table
from medmm.workflows.preflight import check_before_run
from medmm.workflows.pretrained import save_pretrained_folder

TABLE = "results/image_text_table.md"
MIXED, PER_MODALITY = "mixed", "per_modality"


class Texts:
    """Every caption and prompt tokenised once; a text is addressed by its row."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.row: dict[str, int] = {}
        self.ids: list[torch.Tensor] = []

    def add(self, texts: list[str]) -> np.ndarray:
        fresh = [t for t in dict.fromkeys(texts) if t not in self.row]
        if fresh:
            encoded = self.tokenizer(fresh, truncation=True, max_length=self.max_tokens)["input_ids"]
            for text, ids in zip(fresh, encoded):
                self.row[text] = len(self.ids)
                self.ids.append(torch.tensor(ids))
        return np.array([self.row[t] for t in texts], dtype=np.int64)

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and mask of ``rows``."""
        seqs = [self.ids[r] for r in rows]
        ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
        return ids, mask


@dataclass
class Pool:
    """The images and caption rows of several labelled sets, one index space."""

    sets: list[LabelledSet]
    images: torch.Tensor
    caption_rows: np.ndarray

    @classmethod
    def of(cls, sets: list[LabelledSet], caption_rows: dict[str, np.ndarray]) -> "Pool":
        return cls(sets, torch.cat([s.images for s in sets]),
                   np.concatenate([caption_rows[s.modality] for s in sets]))

    def rows(self, split: str) -> np.ndarray:
        offsets = np.cumsum([0] + [len(s.images) for s in self.sets])
        return np.concatenate([s.rows(split) + o for s, o in zip(self.sets, offsets)])


def pretrain_config(cfg: ImageTextConfig) -> PretrainConfig:
    """The image-text model as a contrastive pretraining config (image tower = ``xray``,
    text tower = ``report``), so that its saved folder loads wherever a medmm pretraining
    model does: an encoder checkpoint, tile features, fine-tuning."""
    m = cfg.model
    model_cfg = ModelConfig(modalities=["xray", "report"], embed_dim=m.embed_dim, proj_hidden=m.proj_hidden,
                            init_temperature=m.init_temperature, xray=m.image, text=m.text)
    # the loss as trained: image-caption InfoNCE, identical captions as positives
    loss = LossConfig(pairs=[("xray", "report")], label_aware_weight=1.0)
    return PretrainConfig(model=model_cfg, data=DataConfig(image_size=cfg.image_size), loss=loss)


def build_model(cfg: ImageTextConfig):
    return create_model("more", pretrain_config(cfg).model, image_size=cfg.image_size)


def _text_embeddings(model, texts: Texts, rows: np.ndarray) -> torch.Tensor:
    ids, mask = texts.batch(rows)
    return model.encode("report", {"report_ids": ids, "report_mask": mask})


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode("xray", {"xray": images[i:i + batch_size]})
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def zero_shot(model, lset: LabelledSet, rows: np.ndarray, texts: Texts) -> dict[str, float]:
    """Zero-shot scores of ``lset``'s ``rows`` (module docstring): per-class AUROC, macro AUROC,
    and for a single-label style accuracy. A class without both labels among the rows has no
    AUROC and stays out of the macro mean."""
    if not len(rows):  # a split without images of this modality (a small set)
        return {"macro_auroc": float("nan")}
    model.eval()
    image = image_embeddings(model, lset.images[rows])
    prompts = [class_prompts(c, lset.caption_style) for c in lset.classes]
    pos = torch.stack([_text_embeddings(model, texts, texts.add(p)) for p, _ in prompts])
    labels = lset.labels[rows]
    results: dict[str, float] = {}
    if caption_style(lset.caption_style).single_label:
        logits = model.logit_scale().exp() * image @ F.normalize(pos.mean(1), dim=-1).T
        scores = torch.softmax(logits, dim=1).numpy()
        truth = np.nan_to_num(labels, nan=0.0)
        single = (truth == 1).sum(1) == 1
        if single.any():
            results["accuracy"] = float((scores[single].argmax(1) == truth[single].argmax(1)).mean())
    else:
        neg = torch.stack([_text_embeddings(model, texts, texts.add(n)) for _, n in prompts])
        scores = zero_shot_scores(image, pos, neg).numpy()
    aurocs = {}
    for c, name in enumerate(lset.classes):
        known = np.isin(labels[:, c], (0.0, 1.0))
        value = binary_auroc(scores[known, c], labels[known, c]) if known.any() else None
        if value is not None:
            aurocs[name] = value
            results[f"auroc.{name}"] = value
    results["macro_auroc"] = float(np.mean(list(aurocs.values()))) if aurocs else float("nan")
    return results


@dataclass(frozen=True)
class Budget:
    """Optimiser steps, and how often the validation zero-shot score is checked."""

    steps: int
    eval_every: int

    @classmethod
    def epochs_of(cls, pool: Pool, cfg: ImageTextConfig) -> "Budget":
        per_epoch = max(1, len(pool.rows("train")) // cfg.train.batch_size)
        return cls(per_epoch * cfg.train.epochs, per_epoch)


def _batches(rows: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Full batches of ``rows`` for ever, reshuffled at each pass (a short last batch is left
    out: batch norm and the contrastive loss want full ones)."""
    while True:
        order = rng.permutation(rows)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def fit(model, pool: Pool, texts: Texts, cfg: ImageTextConfig, budget: Budget, seed: int,
        label: str) -> dict[str, float]:
    """Train on the pool's training rows in batches that mix its modalities for ``budget.steps``
    steps; keep the weights with the best mean validation zero-shot macro AUROC over the pool's
    modalities (checked every ``budget.eval_every`` steps; ``train.patience`` checks without
    progress stop the run)."""
    t = cfg.train
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, val = pool.rows("train"), {s.modality: s.rows("val") for s in pool.sets}
    if len(train) < t.batch_size:
        raise ValueError(f"{label}: {len(train)} training images, fewer than one batch ({t.batch_size})")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_with_warmup(s, budget.steps, t.warmup_steps, 0.05))
    best, best_state, best_step, waited, steps = -np.inf, None, 0, 0, 0
    model.train()
    for rows in _batches(train, t.batch_size, rng):
        unique, inverse = np.unique(pool.caption_rows[rows], return_inverse=True)
        image = model.encode("xray", {"xray": pool.images[rows]})
        text = _text_embeddings(model, texts, unique)[torch.from_numpy(inverse)]
        targets = label_aware_targets(torch.from_numpy(inverse)[:, None], 1.0)  # same caption: positives
        loss = clip_loss(image, text, model.logit_scale, targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        steps += 1
        if steps % budget.eval_every and steps < budget.steps:
            continue
        scores = [zero_shot(model, s, val[s.modality], texts)["macro_auroc"] for s in pool.sets if len(val[s.modality])]
        score = float(np.nanmean(scores)) if scores and not np.isnan(scores).all() else float(steps)
        print(f"    seed {seed} {label}: step {steps}/{budget.steps}, validation zero-shot macro AUROC {score:.3f}",
              flush=True)
        if score > best + 1e-4:  # without validation images the last weights are kept
            best, best_state, best_step, waited = score, copy.deepcopy(model.state_dict()), steps, 0
        else:
            waited += 1
        if waited >= t.patience or steps >= budget.steps:
            break
        model.train()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"best_step": best_step, "val_macro_auroc": best, "steps": steps, "budget_steps": budget.steps}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def format_table(sets: list[LabelledSet], results: dict, seeds: list[int]) -> str:
    """Per modality: the mixed and the per-modality model's test zero-shot macro AUROC as mean ±
    sd over seeds, and their paired difference."""
    lines = [f"| modality | classes | test images | mixed model | per-modality model | mixed - per-modality | "
             f"chance |  (macro AUROC, mean ± sd over {len(seeds)} seed(s))", "|---|---|---|---|---|---|---|"]
    for s in sets:
        mixed = [results[seed][MIXED][s.modality]["macro_auroc"] for seed in seeds]
        cells = [f"{m:.3f} ± {sd:.3f}" for m, sd in [_mean_sd(mixed)]]
        if all(PER_MODALITY in results[seed] for seed in seeds):
            alone = [results[seed][PER_MODALITY][s.modality]["macro_auroc"] for seed in seeds]
            diff = _mean_sd([a - b for a, b in zip(mixed, alone)])
            cells += [f"{_mean_sd(alone)[0]:.3f} ± {_mean_sd(alone)[1]:.3f}", f"{diff[0]:+.3f} ± {diff[1]:.3f}"]
        else:
            cells += ["-", "-"]
        lines.append(f"| {s.modality} | {len(s.classes)} | {len(s.rows('test'))} | " + " | ".join(cells) + " | 0.5 |")
    return "\n".join(lines)


@dataclass
class ImageTextOutcome:
    run_id: str
    tracking_uri: str
    results: dict  # seed -> model -> modality -> metrics
    table: str

    def __str__(self) -> str:
        seeds = list(self.results)
        numbers = []
        for modality in self.results[seeds[0]][MIXED]:
            mixed = _mean_sd([self.results[s][MIXED][modality]["macro_auroc"] for s in seeds])[0]
            against = [("chance", 0.5)]
            if PER_MODALITY in self.results[seeds[0]]:
                against.append(("per-modality model", _mean_sd(
                    [self.results[s][PER_MODALITY][modality]["macro_auroc"] for s in seeds])[0]))
            numbers.append(Number(f"{modality} zero-shot macro AUROC, mixed model", mixed, tuple(against)))
        return headline(f"held-out test images, mean over {len(seeds)} seed(s)", numbers, run_id=self.run_id,
                        tracking_uri=self.tracking_uri, table=TABLE)


def run_seed(cfg: ImageTextConfig, sets: list[LabelledSet], texts: Texts, caption_rows: dict, seed: int) -> tuple:
    """The mixed model and, if asked, one model per modality, trained and scored with ``seed``."""
    results, training = {MIXED: {}}, {}
    torch.manual_seed(seed)
    model = build_model(cfg)
    t0 = clock.perf_counter()
    pool = Pool.of(sets, caption_rows)
    mixed_budget = Budget.epochs_of(pool, cfg)
    training[MIXED] = {**fit(model, pool, texts, cfg, mixed_budget, seed, MIXED),
                       "fit_s": clock.perf_counter() - t0,
                       "parameters": float(sum(p.numel() for p in model.parameters()))}
    for s in sets:
        results[MIXED][s.modality] = zero_shot(model, s, s.rows("test"), texts)
    save_pretrained_folder(model, pretrain_config(cfg), cfg.output_dir / f"mixed_seed{seed}")
    if cfg.per_modality_baselines:
        results[PER_MODALITY] = {}
        for s in sets:
            torch.manual_seed(seed)  # the mixed model's starting weights
            alone = build_model(cfg)
            t0 = clock.perf_counter()
            own = Pool.of([s], caption_rows)
            budget = mixed_budget if cfg.baseline_budget == "steps" else Budget.epochs_of(own, cfg)
            training[f"{PER_MODALITY}.{s.modality}"] = {**fit(alone, own, texts, cfg, budget, seed,
                                                                    f"{s.modality} alone"),
                                                        "fit_s": clock.perf_counter() - t0}
            results[PER_MODALITY][s.modality] = zero_shot(alone, s, s.rows("test"), texts)
    return results, training


def run(cfg: ImageTextConfig) -> ImageTextOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_before_run(cfg.tracking.uri, output_dirs={"output_dir": cfg.output_dir}, model=cfg.model)
    checked = [read_label_table(s, cfg.split_seed) for s in cfg.sources]  # every CSV before any image
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    start = clock.perf_counter()
    sets = [load_labelled_set(c, cfg.image_size, cfg.split_fractions, cfg.split_seed) for c in checked]
    texts = Texts(load_tokenizer(cfg.model.text.model_path), cfg.model.text.max_tokens)
    caption_rows = {s.modality: texts.add(s.captions) for s in sets}
    client, run_id, tracking_uri = start_run(cfg.tracking.uri, cfg.tracking.experiment,
                                             run_name(cfg, "image_text"), "image_text")
    digest = hashlib.sha256(b"".join(s.labels.tobytes() + "\n".join(s.captions).encode() for s in sets)).hexdigest()
    log_context(client, run_id, "image_text", cfg, None, [], content_hash=digest)
    for s in sets:
        log_metrics(client, run_id, {**s.counts(), "classes": len(s.classes)}, prefix=f"data.{s.modality}.")
    results: dict[int, dict] = {}
    for seed in cfg.seeds:
        results[seed], training = run_seed(cfg, sets, texts, caption_rows, seed)
        for name, info in training.items():
            log_metrics(client, run_id, info, prefix=f"train.{name}.", step=seed)
        for model_name, per in results[seed].items():
            for modality, metrics in per.items():
                log_metrics(client, run_id, metrics, prefix=f"test.{model_name}.{modality}.", step=seed)
                print(f"  seed {seed}  {model_name:13s} {modality:10s} zero-shot macro AUROC "
                      f"{metrics['macro_auroc']:.3f}", flush=True)
    summary = {}
    for model_name in results[cfg.seeds[0]]:
        for s in sets:
            mean, sd = _mean_sd([results[seed][model_name][s.modality]["macro_auroc"] for seed in cfg.seeds])
            summary[f"test.{model_name}.{s.modality}.macro_auroc_mean"] = mean
            summary[f"test.{model_name}.{s.modality}.macro_auroc_sd"] = sd
    log_metrics(client, run_id, summary)
    table = format_table(sets, results, cfg.seeds)
    bars = {name: {s.modality: summary[f"test.{name}.{s.modality}.macro_auroc_mean"] for s in sets}
            for name in results[cfg.seeds[0]]}
    log_figure(client, run_id, grouped_bars_figure(bars, [s.modality for s in sets],
                                                   "zero-shot macro AUROC, held-out test images"), "zero_shot")
    for seed in cfg.seeds:  # the mixed models, safetensors + config.yaml each
        client.log_artifacts(run_id, str(cfg.output_dir / f"mixed_seed{seed}"), f"model/mixed_seed{seed}")
    log_json(client, run_id, "image_text.json", {str(k): v for k, v in results.items()})
    client.log_text(run_id, table, TABLE)
    log_metrics(client, run_id, {"time.total_s": clock.perf_counter() - start})
    finish(client, run_id)
    return ImageTextOutcome(run_id, tracking_uri, results, table)
