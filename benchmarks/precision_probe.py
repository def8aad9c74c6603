"""The default pretraining step's precision vs float32 and bf16 autocast, side by side.

On the default config's model and a real training batch of the demo cohort, in one process:
  * the precision the pipeline picks when the config leaves it unset (a fresh probe, with a
    private cache, so its own time and figures are part of the result);
  * full optimisation steps (forward, the configured loss, backward, AdamW) in the default's
    precision, in float32 and under bf16 autocast, in interleaved rounds (the order rotates
    every round, each timed step after an untimed one of its kind) on one copy of the model; medians, and the median of per-round ratios.
The default must be no slower than float32 (default / float32 <= 1.02) and, on an AMX CPU,
no slower than bf16. The machine's CPU flags and load average are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from medmm.config.core import build_config
from medmm.data.datamodule import PretrainDataModule
from medmm.training.precision import (
    BF16,
    choose_precision,
    cpu_identity,
    default_precision,
    interleaved_step_times,
)
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.contrastive.module import ContrastivePretrainTask
from medmm.workflows.contrastive.run import precision_fingerprint, precision_probe_step

REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/pretrain/default.yaml")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds of the three arms")
    parser.add_argument("--out", default="benchmarks/results/precision_probe.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/path/to/demo")
    args = parser.parse_args()

    cfg = build_config(PretrainConfig, args.config, args.overrides)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.seed)
    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=cfg.model.text.model_path)
    dm.setup()
    task = ContrastivePretrainTask(cfg)
    load_before = os.getloadavg()

    # a private cache: the benchmark measures a fresh probe, not one a run left behind
    with tempfile.TemporaryDirectory() as cache_home:
        os.environ["XDG_CACHE_HOME"] = cache_home
        start = time.perf_counter()
        choice = choose_precision(cfg.trainer.precision, lambda: precision_probe_step(task, dm),
                                  precision_fingerprint(cfg))
        probe_s = time.perf_counter() - start

    # one model copy for every arm: the arms differ in their precision alone
    step = precision_probe_step(task, dm)
    arms = {"default": (step, choice.precision == BF16), "float32": (step, False), "bf16": (step, True)}
    times = interleaved_step_times({name: partial(step, use_bf16) for name, (step, use_bf16) in arms.items()},
                                   min_rounds=args.rounds, max_rounds=args.rounds, budget_s=0.0)
    median = {name: statistics.median(values) for name, values in times.items()}
    paired = {other: statistics.median(d / o for d, o in zip(times["default"], times[other]))
              for other in ("float32", "bf16")}
    identity = cpu_identity()
    flags = set(identity["cpu_flags"].split())
    batch = next(iter(dm.loader("train")))
    result = {
        "machine": {"cpu_model": identity["cpu_model"], "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": identity["torch"],
                    "cpu_flags": {flag: flag in flags for flag in REPORTED_FLAGS},
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "config": args.config, "overrides": args.overrides,
        "batch": {"studies": len(batch["index"]), "xray": list(batch["xray"].shape),
                  "ecg": list(batch["ecg"].shape), "report_tokens": list(batch["report_ids"].shape)},
        "rule_precision_without_probe": default_precision(),
        "default_precision": choice.precision,
        "default_source": choice.source,
        "probe": {**{k: round(v, 4) for k, v in choice.figures.items()}, "wall_s": round(probe_s, 1)},
        "rounds": args.rounds,
        "median_step_s": {name: round(value, 4) for name, value in median.items()},
        "default_over_float32": round(median["default"] / median["float32"], 3),
        "default_over_bf16": round(median["default"] / median["bf16"], 3),
        "bf16_over_float32": round(median["bf16"] / median["float32"], 3),
        "median_paired_default_over_float32": round(paired["float32"], 3),
        "median_paired_default_over_bf16": round(paired["bf16"], 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
