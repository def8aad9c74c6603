"""``python -m medmm.workflows.finetune.run``: one downstream task from one pretrained
checkpoint, evaluated on the cohort's held-out split and tracked in MLflow.

    python -m medmm.workflows.finetune.run --config configs/finetune/image_classification.yaml \\
        checkpoint=runs/ptunifier/<run id>/export data.label_fraction=0.01

Tasks: image-only finding classification (PTUnifier: through pseudo-text prompts),
text-only report classification, image-report retrieval both ways, and VQA with closed
questions generated from each study's findings. The checkpoint may be a PTUnifier
export or a contrastive ("more") model (its MLflow artifacts folder or a models:/ URI):
the two families are compared on the tasks where both apply.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmm.config.core import ConfigError, build_config, options_help
from medmm.io.errors import MedmmInputError
from medmm.workflows.finetune.config import FinetuneConfig


@dataclass
class FinetuneOutcome:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    family: str
    model_uri: str | None = None  # the registered fine-tuned model (tracking.register_model)
    version: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m medmm.workflows.finetune.run",
        description="Fine-tune / evaluate a pretrained medmm model on a downstream task, tracked in MLflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config options (override any with key=value):\n" + "\n".join(options_help(FinetuneConfig)),
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML config (configs/finetune/<task>.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. checkpoint=runs/.../export")
    return parser.parse_intermixed_args(argv)


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
        import torch

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
    from torch.utils.data import DataLoader

    from medmm.data.datamodule import StudyCollate, StudyDataset
    from medmm.data.vqa import effusion_sides, study_questions, target_matrix

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
    import torch

    return DataLoader(list(range(len(questions))), batch_size=cfg.data.batch_size, shuffle=train, drop_last=False,
                      collate_fn=collate, generator=torch.Generator().manual_seed(seed) if train else None)


def _study_loader(dm, cfg: FinetuneConfig, indices: np.ndarray, train: bool, seed: int):
    import torch
    from torch.utils.data import DataLoader

    from medmm.data.datamodule import StudyCollate, StudyDataset

    ds = StudyDataset(dm.cohort, indices, dm.token_ids, dm.token_len)
    collate = StudyCollate(ds, augment=train and cfg.data.augment, seed=seed)
    # Retrieval trains on in-batch negatives: drop a last batch of one.
    drop_last = train and cfg.task == "retrieval" and len(ds) > cfg.data.batch_size
    return DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=train, drop_last=drop_last, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed) if train else None)


def evaluate(task, loader, cfg: FinetuneConfig) -> dict[str, float]:
    """Held-out metrics: macro / per-finding AUROC (classification), R@k and label P@k both
    ways (retrieval), accuracy and balanced accuracy of closed answers and AUROC of the
    findings named for "What is abnormal?" (VQA)."""
    import torch
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from medmm.data.vqa import ANSWERS
    from medmm.io.findings import FINDINGS
    from medmm.metrics.retrieval import retrieval_metrics
    from medmm.metrics.zeroshot import per_finding_auroc

    task.eval()
    outs, targets, labels, kinds, imgs, txts = [], [], [], [], [], []
    with torch.no_grad():
        for batch in loader:
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
        return m
    logits = np.concatenate(outs)
    if cfg.task in ("image_classification", "text_classification"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            auc = per_finding_auroc(logits, lab, FINDINGS)
        return {f"auroc.{k}": v for k, v in auc.items() if v is not None}
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
    return m


def run(cfg: FinetuneConfig) -> FinetuneOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    import lightning as L
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from medmm.data.config import DataConfig
    from medmm.data.datamodule import PretrainDataModule
    from medmm.models.encoders.text import load_tokenizer
    from medmm.tracking.figures import grouped_bars_figure
    from medmm.tracking.pipeline_run import (
        finish,
        lightning_logger,
        log_context,
        log_figure,
        log_json,
        log_metrics,
        register_with_aliases,
    )
    from medmm.tracking.run_context import default_tracking_uri
    from medmm.workflows.finetune.module import (
        Backbone,
        FinetuneTask,
        label_subset,
        load_pretrained,
        resolve_checkpoint,
    )
    from medmm.workflows.finetune.served import log_finetuned_model

    if cfg.checkpoint is None:
        raise ConfigError("checkpoint is required: checkpoint=<exported model folder or MLflow URI>")
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    folder = resolve_checkpoint(cfg.checkpoint, tracking_uri)
    family, model, pre = load_pretrained(folder)
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
    tokenizer = load_tokenizer(pre.model.text.model_path)
    if cfg.task == "vqa":
        from medmm.data.vqa import ANSWERS

        train_loader = _vqa_data(dm, cfg, tokenizer, train_idx, True, cfg.seed)
        test_loader = _vqa_data(dm, cfg, tokenizer, test_idx, False, cfg.seed)
        outputs = list(ANSWERS)
    else:
        from medmm.io.findings import FINDINGS

        train_loader = _study_loader(dm, cfg, train_idx, True, cfg.seed)
        test_loader = _study_loader(dm, cfg, test_idx, False, cfg.seed)
        outputs = list(FINDINGS) if cfg.task != "retrieval" else []

    itc_t = getattr(getattr(pre, "loss", None), "itc_temperature", 0.1)
    task = FinetuneTask(cfg, Backbone(family, model, itc_t), len(outputs), prompts_trainable)
    logger = lightning_logger(cfg.tracking.experiment, cfg.tracking.run_name, tracking_uri)
    run_id = logger.run_id
    client = MlflowClient(tracking_uri)
    log_context(client, run_id, "finetune", cfg, dm.manifest, dm.cohort.skipped)
    for key, value in {"pretrained_family": family, "pretrained_checkpoint": str(folder),
                       "prompts_trainable": str(prompts_trainable).lower(), "task": cfg.task}.items():
        client.set_tag(run_id, key, value)
    log_metrics(client, run_id, {"data.n_train_studies_labelled": len(train_idx), "data.n_test_studies": len(test_idx),
                                 "data.n_skipped_studies": len(dm.cohort.skipped)})
    if cfg.epochs > 0:
        trainer = L.Trainer(max_epochs=cfg.epochs, accelerator="cpu" if not torch.cuda.is_available() else "auto",
                            logger=logger, enable_checkpointing=False, enable_model_summary=False,
                            num_sanity_val_steps=0, log_every_n_steps=5, limit_train_batches=cfg.limit_train_batches,
                            gradient_clip_val=1.0, limit_val_batches=0)
        trainer.fit(task, train_dataloaders=train_loader)
    train_s = time.perf_counter() - start
    metrics = evaluate(task, test_loader, cfg)
    log_metrics(client, run_id, metrics, prefix="test.")
    log_metrics(client, run_id, {"time.total_s": time.perf_counter() - start, "time.train_s": train_s})
    log_json(client, run_id, "test_metrics.json", metrics)
    log_figure(client, run_id, grouped_bars_figure({f"{cfg.task} ({family} checkpoint)": metrics}, list(metrics),
                                                   f"fine-tuned {cfg.task} on the held-out split"), "test_metrics")
    model_uri = version = None
    if cfg.tracking.register_model:
        model_uri = log_finetuned_model(run_id, task, cfg, pre, outputs, prompts_trainable)
        version = register_with_aliases(client, model_uri, registered_name(cfg), run_id, metric=None)
    finish(client, run_id)
    return FinetuneOutcome(run_id, tracking_uri, metrics, family, model_uri, version)


def registered_name(cfg: FinetuneConfig) -> str:
    return cfg.tracking.registered_name or f"medmm-finetune-{cfg.task}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(FinetuneConfig, args.config, args.overrides)
        outcome = run(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except MedmmInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{cfg.task} ({outcome.family} checkpoint), held-out split:\n")
    for name, value in outcome.metrics.items():
        print(f"  {name:32s} {value:.3f}")
    print(f"\nMLflow run id: {outcome.run_id}\nTracking store: {outcome.tracking_uri}")
    if outcome.model_uri:
        print(f"Registered model: {registered_name(cfg)} version {outcome.version} ({outcome.model_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
