"""Fine-tuning run (``python -m medmm.pipelines.finetune``): one downstream task from one
pretrained checkpoint, evaluated on the cohort's held-out split and tracked in MLflow.

Tasks: image-only finding classification (PTUnifier: through pseudo-text prompts),
text-only report classification, image-report retrieval both ways, and VQA with closed
questions generated from each study's findings. The checkpoint may be a PTUnifier
export or a contrastive ("more") model (its MLflow artifacts folder or a models:/ URI):
the two families are compared on the tasks where both apply.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass

import lightning as L
import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch.utils.data import DataLoader

from medmm.config.core import ConfigError
from medmm.console import Number, headline, progress
from medmm.data.config import DataConfig
from medmm.data.datamodule import PretrainDataModule, StudyCollate, StudyDataset
from medmm.data.vqa import ANSWERS, effusion_sides, study_questions, target_matrix
from medmm.io.findings import FINDINGS
from medmm.metrics.retrieval import retrieval_metrics
from medmm.metrics.zeroshot import per_finding_auroc
from medmm.tracking.figures import (
    confusion_matrices_figure,
    grouped_bars_figure,
    metric_curves_figure,
    roc_curves_figure,
)
from medmm.tracking.pipeline_run import (
    finish,
    lightning_logger,
    log_context,
    log_figure,
    log_json,
    log_metrics,
    register_with_aliases,
    run_name,
)
from medmm.tracking.run_context import source_tag
from medmm.tracking.store import default_tracking_uri
from medmm.training.lightning_run import progress_callbacks
from medmm.workflows.finetune.config import FinetuneConfig
from medmm.workflows.finetune.module import FinetuneTask, balanced_pos_weight, label_subset
from medmm.workflows.finetune.served import log_finetuned_model
from medmm.workflows.preflight import CohortNeeds, check_before_run, decoded_cohort_outputs
from medmm.workflows.pretrained import Backbone, load_pretrained


@dataclass
class FinetuneOutcome:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    family: str
    model_uri: str | None = None  # the registered fine-tuned model (tracking.register_model)
    version: str | None = None
    task: str = ""
    registered_name: str | None = None

    def __str__(self) -> str:  # what the command prints
        # each task's headline metrics: (label, chance level where one holds for any cohort)
        wanted = {"auroc.macro": ("macro AUROC over findings", 0.5),
                  "xray_to_report.P@5": ("X-ray -> report P@5 (findings match)", None),
                  "report_to_xray.P@5": ("report -> X-ray P@5 (findings match)", None),
                  "closed_balanced_accuracy": ("closed questions, balanced accuracy", 0.5),
                  "abnormal_auroc": ("'what is abnormal?' AUROC", 0.5)}
        numbers = [Number(label, self.metrics[key], (("chance", chance),))
                   for key, (label, chance) in wanted.items() if self.metrics.get(key) is not None]
        notes = [f"registered model: {self.registered_name} version {self.version} ({self.model_uri})"] \
            if self.model_uri else []
        return headline(f"{self.task} from a {self.family} checkpoint, held-out split", numbers, run_id=self.run_id,
                        tracking_uri=self.tracking_uri, table="results/test_metrics.json", notes=notes)


class QuestionCollate:
    """VQA batches: the study's X-ray (as the study collate gives it), the question's
    tokens and the answer targets."""

    def __init__(self, study_collate, questions, question_tokens: dict, targets: np.ndarray):
        self.studies, self.questions, self.tokens, self.targets = study_collate, questions, question_tokens, targets

    @property
    def epoch(self):
        return self.studies.epoch

    @epoch.setter
    def epoch(self, value):
        self.studies.epoch = value

    def __call__(self, idx: list[int]) -> dict:
        qs = [self.questions[i] for i in idx]
        batch = self.studies([q.study for q in qs])
        ids = [self.tokens[q.text] for q in qs]
        length = max(len(t) for t in ids)
        batch["question_ids"] = torch.tensor([t + [0] * (length - len(t)) for t in ids])
        batch["question_mask"] = torch.tensor([[1] * len(t) + [0] * (length - len(t)) for t in ids])
        batch["targets"] = torch.from_numpy(self.targets[idx])
        batch["question_kind"] = [q.kind for q in qs]
        return batch


def _vqa_data(dm, cfg: FinetuneConfig, tokenizer, indices: np.ndarray, train: bool, seed: int):
    sides = effusion_sides(dm.cohort.report_text[indices])
    questions = []
    rng = np.random.default_rng(seed)
    for row, side in zip(indices, sides):
        qs = study_questions(int(row), dm.cohort.labels[row], side)
        if train:
            qs = [qs[i] for i in rng.choice(len(qs), size=min(cfg.data.questions_per_study, len(qs)), replace=False)]
        questions.extend(qs)
    texts = sorted({q.text for q in questions})
    enc = tokenizer(texts, truncation=True, max_length=cfg.data.question_max_tokens)
    tokens = dict(zip(texts, enc["input_ids"]))
    studies = StudyCollate(StudyDataset(dm.cohort, indices, dm.token_ids, dm.token_len),
                           augment=train and cfg.data.augment, seed=seed)
    collate = QuestionCollate(studies, questions, tokens, target_matrix(questions))

    return DataLoader(list(range(len(questions))), batch_size=cfg.data.batch_size, shuffle=train, drop_last=False,
                      collate_fn=collate, generator=torch.Generator().manual_seed(seed) if train else None)


def _study_loader(dm, cfg: FinetuneConfig, indices: np.ndarray, train: bool, seed: int):
    ds = StudyDataset(dm.cohort, indices, dm.token_ids, dm.token_len)
    collate = StudyCollate(ds, augment=train and cfg.data.augment, seed=seed)
    # Retrieval trains on in-batch negatives: drop a last batch of one.
    drop_last = train and cfg.task == "retrieval" and len(ds) > cfg.data.batch_size
    return DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=train, drop_last=drop_last, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed) if train else None)


def evaluate(task, loader, cfg: FinetuneConfig) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Held-out metrics: macro / per-finding AUROC (classification), R@k and label P@k both
    ways (retrieval), accuracy and balanced accuracy of closed answers and AUROC of the
    findings named for "What is abnormal?" (VQA); and what the figures draw (findings'
    labels and logits; closed answers' truth and prediction)."""
    task.eval()
    outs, targets, labels, kinds, imgs, txts = [], [], [], [], [], []
    with torch.no_grad():
        for batch in progress(loader, "evaluate"):
            labels.append(batch["labels"].numpy())
            if cfg.task == "retrieval":
                i, t = task.backbone.retrieval_embeddings(batch["xray"], batch["report_ids"], batch["report_mask"])
                imgs.append(i.numpy())
                txts.append(t.numpy())
                continue
            outs.append(task(batch).float().numpy())
            if cfg.task == "vqa":
                targets.append(batch["targets"].numpy())
                kinds.extend(batch["question_kind"])
    lab = np.concatenate(labels)
    if cfg.task == "retrieval":
        sim = np.concatenate(imgs) @ np.concatenate(txts).T
        m = {f"xray_to_report.{k}": v for k, v in retrieval_metrics(sim, lab, lab).items()}
        m.update({f"report_to_xray.{k}": v for k, v in retrieval_metrics(sim.T, lab, lab).items()})
        return m, {}
    logits = np.concatenate(outs)
    if cfg.task in ("image_classification", "text_classification"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            auc = per_finding_auroc(logits, lab, FINDINGS)
        return {f"auroc.{k}": v for k, v in auc.items() if v is not None}, {"labels": lab, "logits": logits}
    tgt, kinds = np.concatenate(targets), np.array(kinds)
    closed = kinds == "closed"
    truth = tgt[closed, 1].astype(int)  # 1 = yes
    pred = (logits[closed, 1] > logits[closed, 0]).astype(int)
    m = {"closed_accuracy": float(accuracy_score(truth, pred)),
         "closed_balanced_accuracy": float(balanced_accuracy_score(truth, pred))}
    ab = ~closed
    finding_cols = [ANSWERS.index(f) for f in FINDINGS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        auc = per_finding_auroc(logits[ab][:, finding_cols], tgt[ab][:, finding_cols].astype(int), FINDINGS)
    if auc["macro"] is not None:
        m["abnormal_auroc"] = auc["macro"]
    predicted_sets = logits[ab] > 0
    m["abnormal_exact_match"] = float((predicted_sets == tgt[ab].astype(bool)).all(1).mean())
    return m, {"closed_truth": truth, "closed_predicted": pred}


def log_held_out_figures(client, run_id: str, cfg: FinetuneConfig, held_out: dict[str, np.ndarray]) -> None:
    """Confusion matrices of the held-out predictions (a finding is predicted present at
    probability 0.5, logit 0; a closed question's answer is the larger logit) and, for
    classification, ROC curves per finding."""
    if "logits" in held_out:
        labels, logits = held_out["labels"], held_out["logits"]
        log_figure(client, run_id, confusion_matrices_figure(
            labels, logits > 0, FINDINGS, title=f"{cfg.task}, held-out split (present: probability > 0.5)"),
                   "confusion_matrices")
        log_figure(client, run_id, roc_curves_figure(labels, logits, FINDINGS, f"{cfg.task}, held-out split"),
                   "roc_curves")
    if "closed_truth" in held_out:
        log_figure(client, run_id, confusion_matrices_figure(
            held_out["closed_truth"], held_out["closed_predicted"], ["closed questions (yes / no)"], ("no", "yes"),
            "VQA, held-out split"), "confusion_matrices")


def run(cfg: FinetuneConfig) -> FinetuneOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    if cfg.checkpoint is None:
        raise ConfigError("checkpoint is required: checkpoint=<exported model folder or MLflow URI>")
    check_before_run(cfg.tracking.uri, output_dirs=decoded_cohort_outputs(cfg.data, cfg.output_dir),
                     cohort=CohortNeeds(cfg.data.root, ("xray", "report"), {"train": 1, "test": 1},
                                        limit_studies=cfg.data.limit_studies, why=f"fine-tuning ({cfg.task})"),
                     pretrained=cfg.checkpoint, pretrained_setting="checkpoint")
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    pretrained = load_pretrained(cfg.checkpoint, kind=None, tracking_uri=tracking_uri)
    family, model, pre, folder = pretrained.kind, pretrained.model, pretrained.config, pretrained.source
    if cfg.task == "vqa" and family != "ptunifier":
        raise ConfigError(f"task vqa needs a PTUnifier checkpoint; {folder} holds a {family!r} model")
    prompts_trainable = (cfg.prompts == "trained" if cfg.prompts != "checkpoint"
                         else getattr(pre.model, "prompts", None) is not None
                         and pre.model.prompts.finetune == "trained")

    d = cfg.data
    data_cfg = DataConfig(root=d.root, image_size=pre.data.image_size, ecg_fs=pre.data.ecg_fs,
                          batch_size=d.batch_size, cache_dir=d.cache_dir, augment=d.augment, strict=d.strict,
                          limit_studies=d.limit_studies)
    dm = PretrainDataModule(data_cfg, max_tokens=pre.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=pre.model.text.model_path)
    dm.setup()
    train_idx = label_subset(dm.cohort.indices("train"), d.label_fraction, cfg.seed)
    test_idx = dm.cohort.indices("test")
    if d.max_test_studies is not None and d.max_test_studies < len(test_idx):
        test_idx = np.sort(np.random.default_rng(cfg.seed).choice(test_idx, d.max_test_studies, replace=False))
    tokenizer = pretrained.tokenizer
    if cfg.task == "vqa":
        train_loader = _vqa_data(dm, cfg, tokenizer, train_idx, True, cfg.seed)
        test_loader = _vqa_data(dm, cfg, tokenizer, test_idx, False, cfg.seed)
        outputs = list(ANSWERS)
    else:
        train_loader = _study_loader(dm, cfg, train_idx, True, cfg.seed)
        test_loader = _study_loader(dm, cfg, test_idx, False, cfg.seed)
        outputs = list(FINDINGS) if cfg.task != "retrieval" else []

    itc_t = getattr(getattr(pre, "loss", None), "itc_temperature", 0.1)
    pos_weight = (balanced_pos_weight(train_loader.collate_fn.targets)
                  if cfg.task == "vqa" and cfg.vqa_loss == "balanced" else None)
    task = FinetuneTask(cfg, Backbone(family, model, itc_t), len(outputs), prompts_trainable, pos_weight)
    logger = lightning_logger(cfg.tracking.experiment, run_name(cfg, "finetune"), tracking_uri)
    run_id = logger.run_id
    client = MlflowClient(tracking_uri)
    log_context(client, run_id, "finetune", cfg, dm.manifest, dm.cohort.skipped)
    for key, value in {"pretrained_family": family, "pretrained_checkpoint": source_tag(cfg.checkpoint, cfg),
                       "prompts_trainable": str(prompts_trainable).lower(), "task": cfg.task}.items():
        client.set_tag(run_id, key, value)
    log_metrics(client, run_id, {"data.n_train_studies_labelled": len(train_idx), "data.n_test_studies": len(test_idx),
                                 "data.n_skipped_studies": len(dm.cohort.skipped)})
    if cfg.epochs > 0:
        trainer = L.Trainer(max_epochs=cfg.epochs, accelerator="cpu" if not torch.cuda.is_available() else "auto",
                            logger=logger, enable_checkpointing=False, enable_model_summary=False,
                            num_sanity_val_steps=0, log_every_n_steps=5, limit_train_batches=cfg.limit_train_batches,
                            gradient_clip_val=1.0, limit_val_batches=0, **progress_callbacks())
        trainer.fit(task, train_dataloaders=train_loader)
    train_s = time.perf_counter() - start
    metrics, held_out = evaluate(task, test_loader, cfg)
    log_metrics(client, run_id, metrics, prefix="test.")
    log_metrics(client, run_id, {"time.total_s": time.perf_counter() - start, "time.train_s": train_s})
    log_json(client, run_id, "test_metrics.json", metrics)
    log_figure(client, run_id, grouped_bars_figure({f"{cfg.task} ({family} checkpoint)": metrics}, list(metrics),
                                                   f"fine-tuned {cfg.task} on the held-out split"), "test_metrics")
    log_held_out_figures(client, run_id, cfg, held_out)
    curves = metric_curves_figure(client, run_id)
    if curves is not None:
        log_figure(client, run_id, curves, "metric_curves")
    model_uri = version = None
    if cfg.tracking.register_model:
        model_uri = log_finetuned_model(run_id, task, cfg, pre, outputs, prompts_trainable)
        version = register_with_aliases(client, model_uri, registered_name(cfg), run_id, metric=None)
    finish(client, run_id)
    return FinetuneOutcome(run_id, tracking_uri, metrics, family, model_uri, version, cfg.task, registered_name(cfg))


def registered_name(cfg: FinetuneConfig) -> str:
    return cfg.tracking.registered_name or f"medmm-finetune-{cfg.task}"
