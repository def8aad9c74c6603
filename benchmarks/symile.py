"""Symile vs CLIP, missing modalities and GradCache, in one run -> benchmarks/results/symile.json.

    python benchmarks/symile.py                         # full sizes
    python benchmarks/symile.py --studies 300 --epochs 2   # a short run (say so when quoting it)

1. XOR (Saporta et al. 2024): zero-shot accuracy of predicting v_1 from the others, Symile
   vs pairwise CLIP, 3 variables, 8 variables, and 3 variables with 20% missing training values.
2. Demo cohort, complete and with 30% of ECGs and 30% of reports removed (train/val; the test
   split stays complete): held-out retrieval, zero-shot AUROC and Symile-MIMIC's
   "X-ray among 10 from ECG + labs", for the CLIP and the Symile loss.
3. Pretraining step time and peak memory at batch 256 with and without GradCache (each in a
   fresh process; on CPU the peak is the process's max RSS, on GPU max allocated memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def xor_section() -> list[dict]:
    import torch

    from medmm.workflows.contrastive.symile_xor import run_xor

    torch.set_num_threads(1)  # tiny matmuls: one thread beats contending ones
    settings = [
        ("3 variables", dict(n_vars=3, n_train=4000, n_test=2000, batch_size=200, epochs=10)),
        ("8 variables", dict(n_vars=8, n_train=2000, n_test=2000, batch_size=250, epochs=30, lr=0.05)),
        ("3 variables, 20% missing in training", dict(n_vars=3, missing=0.2, n_train=4000, n_test=2000,
                                                      batch_size=200, epochs=10)),
    ]
    rows = []
    for name, kw in settings:
        for loss in ("symile", "clip"):
            start = time.perf_counter()
            r = run_xor(loss, **kw)
            rows.append({"setting": name, "loss": loss, "accuracy": r.accuracy,
                         "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    return rows


def cohort_section(work: Path, studies: int, epochs: int) -> list[dict]:
    from medmm.config.core import build_config
    from medmm.demo.generator import build_demo_cohort
    from medmm.workflows.contrastive.config import PretrainConfig
    from medmm.workflows.contrastive.run import run

    cohorts = {"complete": {}, "ECG 30% + report 30% missing": {"ecg": 0.3, "report": 0.3}}
    rows = []
    for name, missing in cohorts.items():
        root = work / ("cohort_" + ("complete" if not missing else "missing"))
        if not (root / "manifest.parquet").exists():
            build_demo_cohort(root, n_studies=studies, seed=0, workers=2, missing=missing)
        for loss in ("clip", "symile"):
            overrides = [f"data.root={root}", f"data.cache_dir={root / '.cache'}", f"output_dir={work / 'runs'}",
                         f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"trainer.max_epochs={epochs}",
                         "model.modalities=[xray,ecg,report,labs]", f"loss.name={loss}",
                         "loss.pairs=[[xray,report],[ecg,report],[xray,ecg],[xray,labs],[ecg,labs]]",
                         "loss.modalities=[xray,ecg,report,labs]", "model.labs.hidden=[64,128]",
                         "trainer.log_every_n_steps=5"]
            cfg = build_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", overrides)
            start = time.perf_counter()
            outcome = run(cfg)
            m = outcome.metrics
            rows.append({"cohort": name, "loss": loss, "seconds": round(time.perf_counter() - start),
                         **{k: m.get(k) for k in ("xray_to_report.R@1", "xray_to_report.P@5", "ecg_to_report.P@5",
                                                  "xray_to_ecg.R@5", "zeroshot_xray.planted_mean",
                                                  "zeroshot_ecg.planted_mean", "xray_from_ecg-labs.acc10",
                                                  "xray_from_ecg-labs-report.acc10")}})
            print(rows[-1], flush=True)
    return rows


def throughput_worker(chunk: int | None, batch: int, steps: int) -> dict:
    """One configuration in this (fresh) process: mean step time and peak memory."""
    import torch

    from medmm.config.core import build_config
    from medmm.losses.contrastive import multi_modal_clip_loss
    from medmm.models.registry import create_model
    from medmm.training.grad_cache import grad_cache_backward, split_batch
    from medmm.workflows.contrastive.config import PretrainConfig

    cfg = build_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model("more", cfg.model, image_size=cfg.data.image_size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    s, t = cfg.data.image_size, cfg.data.ecg_fs * 10
    data = {"xray": torch.randn(batch, 1, s, s, generator=g), "ecg": torch.randn(batch, 12, t, generator=g),
            "report_ids": torch.randint(1000, 20000, (batch, 48), generator=g),
            "report_mask": torch.ones(batch, 48, dtype=torch.long), "index": torch.arange(batch)}
    data = {k: v.to(device) for k, v in data.items()}
    pairs = cfg.loss.pairs
    mods = cfg.loss.used_modalities()

    def loss_fn(emb):
        return multi_modal_clip_loss(emb, pairs, model.logit_scale)[0]

    def step():
        opt.zero_grad()
        if chunk:
            grad_cache_backward(lambda c: model(c, mods), split_batch(data, chunk), loss_fn)
        else:
            loss_fn(model(data, mods)).backward()
        opt.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"device": device, "batch": batch, "grad_cache_chunk": chunk, "step_s": round(seconds, 3),
            "samples_per_s": round(batch / seconds, 1), "peak_mib": round(peak)}


def throughput_section(batch: int, chunk: int, steps: int) -> list[dict]:
    rows = []
    for c in (None, chunk):
        out = subprocess.run([sys.executable, __file__, "--throughput-worker", str(c or 0), "--batch", str(batch),
                              "--steps", str(steps)], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=None, help="demo cohort size (default: every usable report)")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--work", type=Path, default=REPO / "data/benchmark_symile")
    p.add_argument("--skip", nargs="*", default=[], choices=["xor", "cohort", "throughput"])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/symile.json")
    p.add_argument("--throughput-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.throughput_worker is not None:
        print(json.dumps(throughput_worker(args.throughput_worker or None, args.batch, args.steps)))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"settings": vars(args) | {"work": str(args.work), "out": str(args.out)}, "load_average": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sections = {"xor": xor_section, "throughput": lambda: throughput_section(args.batch, args.chunk, args.steps),
                "cohort": lambda: cohort_section(args.work, args.studies, args.epochs)}
    for name, section in sections.items():
        if name not in args.skip:
            result[name] = section()
            result["load_average_end"] = os.getloadavg()
            args.out.write_text(json.dumps(result, indent=2))  # after each section: a killed run keeps the rest
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
