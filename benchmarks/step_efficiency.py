"""How much of the CPU's float32 matmul peak the default pretraining step uses, and where
the rest goes.

In one process, on the default config's model and a real training batch of the demo cohort:
  * the machine's float32 peak: the median rate of a 2048 x 2048 matmul (and of the same
    matmul in bf16, for reference), timed between the steps so that both see the same load;
  * the step's FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` over the
    forward and backward pass (matmuls, convolutions, attention; the optimizer's elementwise
    work is not counted, though its time is);
  * the step as training runs it: the configured loss, backward and the task's own AdamW,
    in float32 and under bf16 autocast, interleaved rounds; efficiency = FLOPs / median step
    time / float32 peak;
  * the profile's top operators by self CPU time, for the step in float32.
Target: the default step (float32 on a CPU without AMX: ``benchmarks/precision_probe.py``)
at least 35 % of the float32 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from medmm.config.core import build_config
from medmm.data.datamodule import PretrainDataModule
from medmm.training.precision import cpu_identity
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.contrastive.module import ContrastivePretrainTask

MATMUL_SIZE = 2048


def matmul_rate(dtype: torch.dtype, reps: int = 5) -> float:
    """Median FLOP/s of a square matmul of MATMUL_SIZE in ``dtype``."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * MATMUL_SIZE**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pretrain/default.yaml")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/step_efficiency.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/path/to/demo")
    args = parser.parse_args()

    cfg = build_config(PretrainConfig, args.config, args.overrides)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.seed)
    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=cfg.model.text.model_path)
    dm.setup()
    task = ContrastivePretrainTask(cfg).train()
    optimizer = task.optimizer()
    batch = next(iter(dm.loader("train")))
    load_before = os.getloadavg()

    def loss_of() -> torch.Tensor:
        return task._loss(task.model(batch, task.modalities), batch, "train")[0]

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    loss_of().backward()  # fills the text encoder's cache of its frozen layers, as epoch 1 does
    optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:  # what every later step computes
        loss_of().backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    arms = {"float32": lambda: step(False), "bf16": lambda: step(True),
            "peak_float32": lambda: peaks["float32"].append(matmul_rate(torch.float32)),
            "peak_bf16": lambda: peaks["bf16"].append(matmul_rate(torch.bfloat16))}
    peaks: dict[str, list[float]] = {"float32": [], "bf16": []}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for name in ("float32", "bf16"):
        arms[name]()  # warm-up
    for round_index in range(args.rounds):
        names = list(arms)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - t0)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step(False)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    top = [{"op": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 3 / 1e3, 2), "calls_per_step": e.count // 3}
           for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]

    peak = {name: statistics.median(values) for name, values in peaks.items()}
    step_s = {name: statistics.median(times[name]) for name in ("float32", "bf16")}
    identity = cpu_identity()
    flags = set(identity["cpu_flags"].split())
    result = {
        "machine": {"cpu_model": identity["cpu_model"], "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": identity["torch"],
                    "amx": "amx_tile" in flags, "avx512_bf16": "avx512_bf16" in flags,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "config": args.config, "overrides": args.overrides,
        "batch_studies": len(batch["index"]),
        "step_gflop": round(flops / 1e9, 2),
        "peak_gflops": {name: round(value / 1e9, 1) for name, value in peak.items()},
        "step_s": {name: round(value, 4) for name, value in step_s.items()},
        "efficiency_of_float32_peak": {name: round(flops / value / peak["float32"], 3)
                                       for name, value in step_s.items()},
        "rounds": args.rounds,
        "top_ops_float32": top,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(json.dumps({k: v for k, v in result.items() if k != "top_ops_float32"}, indent=2))


if __name__ == "__main__":
    main()
