"""Time PTUnifier pretraining steps of a config on real demo batches: wall clock and CPU
time (process time, all threads), to estimate a full run where the machine is shared.

    python benchmarks/ptunifier_step_time.py --config configs/pretrain/ptunifier.yaml --steps 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import torch

    from medmm.config.core import build_config
    from medmm.data.datamodule import PretrainDataModule
    from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig
    from medmm.workflows.ptunifier.module import PTUnifierPretrainTask, param_groups, pretrain_losses

    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, default=REPO / "configs/pretrain/ptunifier.yaml")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = build_config(PTUnifierPretrainConfig, args.config, args.overrides)
    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed)
    dm.setup()
    task = PTUnifierPretrainTask(cfg)
    opt = torch.optim.AdamW(param_groups(task.model, cfg.optim))
    loader = iter(dm.train_dataloader())
    task.model.train()
    walls, cpus = [], []
    for _ in range(args.steps + 1):  # the first step warms up and is not counted
        batch = next(loader)
        w, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        pretrain_losses(task.model, batch, cfg.loss, task.masker)["loss"].backward()
        opt.step()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    n_train = len(dm.cohort.indices("train"))
    steps = cfg.trainer.max_epochs * (n_train // cfg.data.batch_size)
    cpu_step = sum(cpus[1:]) / args.steps
    out = {"wall_s_per_step": sum(walls[1:]) / args.steps, "cpu_s_per_step": cpu_step, "train_steps": steps,
           "estimate_train_cpu_s": cpu_step * steps, "threads": torch.get_num_threads()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
