"""Training and evaluation of one segmentation variant (MulModSeg text-conditioned heads or
a plain head), with MulModSeg's alternating CT / MR optimiser steps or mixed CT + MR batches."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from medmm.console import progress
from medmm.data.segmentation import (
    VolumeCase,
    VolumeCohort,
    alternating_batches,
    patch_loader,
)
from medmm.losses.segmentation import dice_ce_loss
from medmm.metrics.segmentation import per_class_scores
from medmm.models.segmentation import MODALITY_INDEX
from medmm.training.schedule import cosine_with_warmup


def build_optimizer(model, optim_cfg, total_steps: int):
    # Only trainable parameters: the frozen text embeddings are a buffer, never optimised.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    warmup = max(1, round(optim_cfg.warmup_fraction * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total_steps, warmup, 0.0))
    return opt, sched


MIXED = "mixed"


def mixed_batches(loaders: dict) -> Iterator[tuple[str, dict]]:
    """Mixed training stream: one batch of every modality with data joined into one, with the
    modality index of each patch (``modality`` [B]). Drawn from the alternating stream, so it
    holds the same patches in the same order as alternating training, one batch per modality
    in each step."""
    n = sum(loader is not None for loader in loaders.values())
    stream = alternating_batches(loaders)
    while True:
        parts = [next(stream) for _ in range(n)]
        yield MIXED, {"image": torch.cat([b["image"] for _, b in parts]),
                      "label": torch.cat([b["label"] for _, b in parts]),
                      "modality": torch.cat([torch.full((len(b["image"]),), MODALITY_INDEX[m], dtype=torch.long)
                                             for m, b in parts])}


BATCH_STREAMS = {"alternating": alternating_batches, "mixed": mixed_batches}


def optimiser_steps(max_steps: int, batching: str, n_modalities: int) -> int:
    """``max_steps`` counts batches of one modality: mixed joins ``n_modalities`` of them per step."""
    return max_steps if batching == "alternating" else max(1, max_steps // max(1, n_modalities))


def train_steps(model, loaders: dict, loss_fn, opt, sched, n_steps: int, clip: float | None = None,
                on_step=None, batching: str = "alternating") -> list[tuple[str, float]]:
    """``n_steps`` optimiser steps over the ``batching`` stream (alternating: one modality per
    batch; mixed: CT and MR in every batch); each batch gets its own forward, backward and
    step. Returns (modality or "mixed", loss) per step; ``on_step(step, name, loss, last)``."""
    history = []
    stream = BATCH_STREAMS[batching](loaders)
    model.train()
    for step in range(n_steps):
        name, batch = next(stream)
        logits = model(batch["image"], batch["modality"] if name == MIXED else MODALITY_INDEX[name])
        loss = loss_fn(logits, batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        history.append((name, float(loss.detach())))
        if on_step is not None:
            on_step(step, name, float(loss.detach()), step == n_steps - 1)
    return history


def train_loaders(cohort: VolumeCohort, cfg) -> dict:
    """One seeded patch loader per configured modality (None where it has no training case)."""
    loaders = {}
    for m in cfg.data.modalities:
        cases = cohort.select("train", m)
        # seeded by the modality, not its place in the list: a model of MR alone draws the MR
        # patches of the joint model
        loaders[m] = patch_loader(cases, cfg.data, seed=cfg.seed + 101 * MODALITY_INDEX[m]) if cases else None
    return loaders


def train_variant(model, cohort: VolumeCohort, cfg, on_step=None) -> dict:
    loaders = train_loaders(cohort, cfg)
    n_steps = optimiser_steps(cfg.trainer.max_steps, cfg.trainer.batching,
                              sum(loader is not None for loader in loaders.values()))
    opt, sched = build_optimizer(model, cfg.optim, n_steps)
    start = time.perf_counter()
    history = train_steps(model, loaders, dice_ce_loss(), opt, sched, n_steps, cfg.trainer.gradient_clip_val,
                          on_step, cfg.trainer.batching)
    return {"history": history, "train_s": time.perf_counter() - start, "steps": n_steps}


@torch.no_grad()
def predict_volume(model, image: np.ndarray, modality: str, roi, sw_batch_size: int = 4,
                   overlap: float = 0.25) -> np.ndarray:
    """Sliding-window inference (MONAI) over a ``[1, i, j, k]`` input -> integer label map."""
    from monai.inferers import sliding_window_inference

    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image))[None]
    index = MODALITY_INDEX[modality]
    logits = sliding_window_inference(x, roi_size=tuple(int(r) for r in roi), sw_batch_size=sw_batch_size,
                                      predictor=lambda patch: model(patch, index), overlap=overlap,
                                      mode="gaussian")
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def evaluate_cases(model, cases: list[VolumeCase], cohort: VolumeCohort, cfg, variant: str,
                   mask_dir: Path | None = None) -> list[dict]:
    """Per (case, class) Dice / HD95 rows; masks written as NIfTI with the source affine."""
    rows = []
    for case in progress(cases, f"evaluate {variant}"):
        pred = predict_volume(model, case.image, case.modality, cfg.data.roi, cfg.trainer.sw_batch_size,
                              cfg.trainer.sw_overlap)
        if mask_dir is not None:
            save_mask(pred, case.affine, Path(mask_dir) / f"{case.case_id}.nii.gz")
        scores = per_class_scores(pred, case.label[0], cohort.class_indices(case.modality), case.spacing)
        for c, s in scores.items():
            rows.append({"variant": variant, "modality": case.modality, "class": cohort.classes[c],
                         "case": case.case_id, **s})
    return rows


def save_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """uint8 NIfTI whose affine is the source image's (both qform and sform), so the mask
    overlays the image in any viewer."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path
