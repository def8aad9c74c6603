"""LightningModule for report generation (and findings summarisation), and the generation /
baseline helpers its evaluation uses (model vs nearest-neighbour retrieval vs the most
frequent report)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medmm.console import progress
from medmm.tracking.pipeline_run import log_metrics
from medmm.tracking.store import default_tracking_uri
from medmm.training.epoch_seeding import EpochSeededData
from medmm.training.lightning_run import progress_callbacks
from medmm.training.schedule import cosine_with_warmup
from medmm.workflows.pretrained import PretrainedModel, embed_texts, load_pretrained
from medmm.workflows.report.config import ReportConfig

# the pretrained encoders a generator or summariser holds (frozen or trained at encoder_lr)
ENCODERS = ("xray_encoder", "ecg_encoder", "text_encoder")


def start_task(cfg: ReportConfig) -> tuple[float, str, PretrainedModel]:
    """What both report tasks do once their checks have passed: the start time, seeding and
    threads, the tracking store and the pretrained model."""
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    pretrained = load_pretrained(cfg.pretrained.source, cfg.pretrained.kind,
                                 tracking_uri=cfg.pretrained.tracking_uri or tracking_uri)
    return start, tracking_uri, pretrained


class ReportGenerationTask(EpochSeededData, L.LightningModule):
    """Trains a :class:`~medmm.models.heads.report_decoder.ConditionedDecoder`: a report
    generator, or a findings summariser (the batch carries its conditioning and target text)."""

    def __init__(self, cfg: ReportConfig, model: torch.nn.Module):
        super().__init__()
        self.cfg, self.model = cfg, model
        if cfg.pretrained.freeze:
            for module in self._encoders():
                module.requires_grad_(False)

    def _encoders(self) -> list[torch.nn.Module]:
        return [m for m in (getattr(self.model, name, None) for name in ENCODERS) if m is not None]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.pretrained.freeze:  # frozen encoders keep their BatchNorm statistics
            for module in self._encoders():
                module.eval()
        return self

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]), on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.model(batch), batch_size=len(batch["index"]), on_step=False, on_epoch=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        encoder, decay, no_decay = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(tuple(f"{e}." for e in ENCODERS)):
                encoder.append(p)
            elif p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "lr": o.lr, "weight_decay": o.weight_decay},
                  {"params": no_decay, "lr": o.lr, "weight_decay": 0.0},
                  {"params": encoder, "lr": o.encoder_lr, "weight_decay": o.weight_decay}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_with_warmup(s, total, int(o.warmup_fraction * total), o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit_best(cfg: ReportConfig, task: ReportGenerationTask, logger, ckpt_dir: Path, **data) -> None:
    """Train ``task`` (``data``: Lightning's ``datamodule=`` or ``train_dataloaders=`` /
    ``val_dataloaders=``) and load back the epoch with the lowest validation loss, logged as
    ``best_val_loss``."""
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1)
    precision = cfg.trainer.precision or ("16-mixed" if torch.cuda.is_available() else "32-true")
    trainer = L.Trainer(max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator,
                        devices=cfg.trainer.devices, precision=precision, logger=logger,
                        log_every_n_steps=cfg.trainer.log_every_n_steps,
                        limit_train_batches=cfg.trainer.limit_train_batches,
                        gradient_clip_val=cfg.trainer.gradient_clip_val, enable_model_summary=False,
                        num_sanity_val_steps=0, **progress_callbacks([best]))
    trainer.fit(task, **data)
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
        log_metrics(logger.experiment, logger.run_id, {"best_val_loss": float(best.best_model_score)})


def generate_reports(model, loader, tokenizer, *, num_beams: int, max_new_tokens: int,
                     no_repeat_ngram_size: int) -> tuple[list[str], np.ndarray]:
    """Generated text (report, or impression of a summariser) and the ``index`` of every
    study of ``loader``."""
    model.eval()
    texts, index = [], []
    for batch in progress(loader, "generate reports"):
        ids = model.generate(batch, bos=tokenizer.cls_token_id, eos=tokenizer.sep_token_id,
                             pad=tokenizer.pad_token_id, num_beams=num_beams, max_new_tokens=max_new_tokens,
                             no_repeat_ngram_size=no_repeat_ngram_size)
        texts.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
        index.append(batch["index"].numpy())
    return [t.strip() for t in texts], np.concatenate(index)


def embed_texts_chunked(model, tokenizer, texts: list[str], max_tokens: int, chunk: int = 256) -> np.ndarray:
    """:func:`medmm.workflows.pretrained.embed_texts` in chunks of ``chunk`` texts (bounded memory)."""
    return np.concatenate([embed_texts(model, tokenizer, texts[i : i + chunk], max_tokens)
                           for i in range(0, len(texts), chunk)])


def most_frequent_report(train_texts: list[str]) -> str:
    """The training report seen most often (ties: the first in cohort order)."""
    counts = Counter(train_texts)
    return max(train_texts, key=lambda t: (counts[t], -train_texts.index(t)))


@torch.no_grad()
def nearest_report(backbone, query_batches, train_text_emb: np.ndarray, train_texts: list[str]) -> list[str]:
    """For each query X-ray, the training report closest to it in the pretrained model's
    retrieval space (X-ray -> report, cosine): the contrastive model's shared embeddings, or
    PTUnifier's ITC embeddings (``backbone``: a :class:`medmm.workflows.pretrained.Backbone`)."""
    out = []
    for batch in query_batches:
        q = backbone.encode("xray", batch).numpy()
        out.extend(train_texts[j] for j in (q @ train_text_emb.T).argmax(1))
    return out
