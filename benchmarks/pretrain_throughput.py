"""Training throughput of the default pretraining model vs the data pipeline's own rate.

Measured side by side in one process on the demo cohort (``make benchmark``):
  * data: batches from the training DataLoader (decoded-cohort cache, seeded
    augmentation, collate) with no model, in studies / s;
  * model: full optimisation steps (forward, the configured loss, backward, AdamW) in the
    precision training uses, on batches collated beforehand, in pairs / s, once with the text prefix cache cold
    (first epoch) and once warm (every later epoch).
The pipeline must deliver at least 5x what the model consumes at the default batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/pretrain/default.yaml")
    parser.add_argument("--steps", type=int, default=12, help="optimisation steps timed per condition")
    parser.add_argument("--cold-studies", type=int, default=600, help="studies decoded from the files, uncached")
    parser.add_argument("--out", default="benchmarks/results/pretrain_throughput.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    from medmm.config.core import build_config
    from medmm.data.datamodule import PretrainDataModule
    from medmm.training.precision import default_precision
    from medmm.workflows.contrastive.config import PretrainConfig
    from medmm.workflows.contrastive.module import ContrastivePretrainTask

    cfg = build_config(PretrainConfig, args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed)
    dm.setup()
    setup_s = time.perf_counter() - t0
    n_train = len(dm.cohort.indices("train"))

    # cold decode (DICOM + WFDB + report + preprocessing, parallel processes, no cache):
    # paid once per cohort and preprocessing setting, before the first epoch
    from medmm.data.decoded_cohort import decode_cohort

    t0 = time.perf_counter()
    cold = decode_cohort(dm.manifest, image_size=cfg.data.image_size, ecg_fs=cfg.data.ecg_fs,
                         limit=args.cold_studies, workers=2)
    cold_rate = len(cold) / (time.perf_counter() - t0)

    # data pipeline alone: one full pass over the training split
    loader = dm.train_dataloader()
    t0 = time.perf_counter()
    n = sum(len(batch["index"]) for batch in loader)
    data_rate = n / (time.perf_counter() - t0)

    # model alone: optimisation steps on pre-collated batches
    batches = [b for _, b in zip(range(2 * args.steps), dm.train_dataloader())]
    # the training loss as configured (cross-modal + same-label terms), in the precision
    # the pipeline picks when the config leaves it unset
    task = ContrastivePretrainTask(cfg).train()
    model = task.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    precision = cfg.trainer.precision or default_precision()
    bf16 = precision.startswith("bf16")  # this benchmark runs on CPU: bf16 or float32

    def steps(batch_list):
        t = time.perf_counter()
        for batch in batch_list:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = task._loss(model(batch, task.modalities), batch, "train")
            opt.zero_grad()
            loss.backward()
            opt.step()
        return sum(len(b["index"]) for b in batch_list) / (time.perf_counter() - t)

    first = steps(batches[: args.steps])  # text prefix cache empty for these reports
    warm = steps(batches[: args.steps])  # the same reports again: cache filled, as in epochs >= 2
    result = {
        "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, no GPU",
        "batch_size": cfg.data.batch_size,
        "precision": precision,
        "train_studies": n_train,
        "setup_s (decoded cache load or build, tokenisation)": round(setup_s, 1),
        "cold_decode_studies_per_s (once per cohort)": round(cold_rate, 1),
        "data_pipeline_studies_per_s (every epoch)": round(data_rate, 1),
        "model_pairs_per_s_first_epoch": round(first, 1),
        "model_pairs_per_s_later_epochs": round(warm, 1),
        "pipeline_over_model_first_epoch": round(data_rate / first, 1),
        "pipeline_over_model_later_epochs": round(data_rate / warm, 1),
        "cold_decode_over_model_later_epochs": round(cold_rate / warm, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
