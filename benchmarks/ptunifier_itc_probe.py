"""Whether PTUnifier's image-text contrastive (ITC) term learns, for each pooling and ITC input.

    python benchmarks/ptunifier_itc_probe.py --config configs/pretrain/ptunifier_hybrid.yaml --steps 60

Each variant trains the config's full objective (ITC + ITM + MLM at its weights) from the
same seed on the same batches for ``--steps`` optimiser steps (AdamW with the pretraining's
parameter groups, linear warm-up over the first tenth, gradients clipped at 1.0, as the
pipeline does), and every ``--every`` steps scores a fixed batch of held-out studies: the ITC
loss (chance = ln of the batch size) and the mean cosine similarity between different studies'
ITC embeddings (near 1 = collapsed to one vector). Variants (``model.pooling`` /
``model.itc_input``): ``paper`` cls / fused, ``mean_fused`` mean / fused, ``mean_unimodal``
mean / unimodal (configs/pretrain/ptunifier_hybrid.yaml). Also prints how alike the text encoder's [CLS] and its
mean-pooled tokens are across the held-out reports, before training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ptunifier_collapse import mean_cosine_between_studies  # noqa: E402
from medmm.config.core import build_config  # noqa: E402
from medmm.data.datamodule import PretrainDataModule  # noqa: E402
from medmm.losses.ptunifier import itc_loss  # noqa: E402
from medmm.models.encoders.text import masked_mean  # noqa: E402
from medmm.models.ptunifier import itc_embeddings  # noqa: E402
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig  # noqa: E402
from medmm.workflows.ptunifier.module import PTUnifierPretrainTask, param_groups, pretrain_losses  # noqa: E402

VARIANTS = {"paper": ["model.pooling=cls", "model.itc_input=fused"],
            "mean_fused": ["model.pooling=mean", "model.itc_input=fused"],
            "mean_unimodal": ["model.pooling=mean", "model.itc_input=unimodal"]}


def held_out_scores(model, batch: dict, temperature: float) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        image, text = itc_embeddings(model, batch["xray"], batch["report_ids"], batch["report_mask"])
    return {"held_out_itc": round(float(itc_loss(image, text, temperature)), 4),
            "cosine_between_studies_image": round(mean_cosine_between_studies(image), 4),
            "cosine_between_studies_text": round(mean_cosine_between_studies(text), 4)}


def text_encoder_summaries(model, batch: dict) -> dict[str, float]:
    """How alike different reports look to the text encoder, at [CLS] and mean-pooled."""
    with torch.no_grad():
        hidden = model.encode_text(batch["report_ids"], batch["report_mask"])
    return {"cls": round(mean_cosine_between_studies(hidden[:, 0]), 5),
            "mean_pooled": round(mean_cosine_between_studies(masked_mean(hidden, batch["report_mask"])), 5)}


def probe(cfg: PTUnifierPretrainConfig, data: PretrainDataModule, steps: int, every: int,
          held_out: dict) -> tuple[list[dict], dict[str, float]]:
    """The held-out curve of ``steps`` training steps, and the text encoder's report similarity
    before the first step (the pretrained encoder as loaded)."""
    torch.manual_seed(cfg.seed)
    task = PTUnifierPretrainTask(cfg)
    model = task.model
    text_encoder = text_encoder_summaries(model.eval(), held_out)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim))
    base = [group["lr"] for group in optimizer.param_groups]
    warmup = max(1, math.ceil(cfg.optim.warmup_fraction * steps))
    generator = torch.Generator().manual_seed(cfg.seed)
    data.set_epoch(0)
    batches = iter(data.train_dataloader())
    curve = [{"step": 0, **held_out_scores(model, held_out, cfg.loss.itc_temperature)}]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        try:
            batch = next(batches)
        except StopIteration:
            data.set_epoch(step)
            batches = iter(data.train_dataloader())
            batch = next(batches)
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * min(1.0, step / warmup)
        model.train()
        parts = pretrain_losses(model, batch, cfg.loss, task.masker, generator)
        optimizer.zero_grad()
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % every == 0 or step == steps:
            curve.append({"step": step, "train_itc": round(float(parts["itc"]), 4),
                          **held_out_scores(model, held_out, cfg.loss.itc_temperature),
                          "seconds": round(time.perf_counter() - start)})
            print(json.dumps(curve[-1]), flush=True)
    return curve, text_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs/pretrain/ptunifier_hybrid.yaml")
    parser.add_argument("--root", default=None, help="cohort folder (default: the config's data.root)")
    parser.add_argument("--cache-dir", default=None, help="decoded cache folder (default: the config's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--held-out", type=int, default=64, help="held-out studies scored")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ptunifier_itc_probe.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_overrides = [*([f"data.root={args.root}"] if args.root else []),
                      *([f"data.cache_dir={args.cache_dir}"] if args.cache_dir else [])]
    config = args.config.resolve()
    results = {"config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config),
               "steps": args.steps, "variants": {}}
    for name in args.variants:
        cfg = build_config(PTUnifierPretrainConfig, args.config, [*data_overrides, *VARIANTS[name]])
        data = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                                  tokenizer_path=cfg.model.text.model_path)
        data.setup()
        held_out = next(iter(data.loader("test", batch_size=args.held_out)))
        results["chance_held_out_itc"] = round(math.log(len(held_out["index"])), 4)
        print(name, flush=True)
        curve, text_encoder = probe(cfg, data, args.steps, args.every, held_out)
        # every variant loads the same pretrained text encoder: its similarity is the first's
        results.setdefault("text_encoder_cosine_between_reports", text_encoder)
        results["variants"][name] = {"overrides": VARIANTS[name], "curve": curve}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
