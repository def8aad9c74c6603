"""Symile vs CLIP, missing modalities and GradCache, in one run -> benchmarks/results/symile.json.

    python benchmarks/symile.py                         # full sizes
    python benchmarks/symile.py --studies 300 --epochs 2   # a short run (say so when quoting it)
    python benchmarks/symile.py --section higher_order     # 4, below -> benchmarks/results/symile_higher_order.json

1. XOR (Saporta et al. 2024): zero-shot accuracy of predicting v_1 from the others, Symile
   vs pairwise CLIP, 3 variables, 8 variables, and 3 variables with 20% missing training values.
2. Demo cohort, complete and with 30% of ECGs and 30% of reports removed (train/val; the test
   split stays complete): held-out retrieval, zero-shot AUROC and Symile-MIMIC's
   "X-ray among 10 from ECG + labs", for the CLIP and the Symile loss.
3. Pretraining step time and peak memory at batch 256 with and without GradCache (each in a
   fresh process; on CPU the peak is the process's max RSS, on GPU max allocated memory).
4. (``--section higher_order``) The pairwise demo cohort and its higher-order variant (X-ray
   cardiomegaly = ECG pattern XOR lab value, each independent of the X-ray), X-ray, ECG and
   labs only: X-ray among 10 from ECG + labs and zero-shot cardiomegaly from ECG + labs,
   Symile vs CLIP over 3 training seeds (mean and sd).
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

import numpy as np

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


def _pretrain(work: Path, root: Path, loss: str, epochs: int, overrides: list[str]) -> dict:
    """One tiny-config pretraining run on a demo cohort (shared decoded cache and MLflow store)."""
    from medmm.config.core import build_config
    from medmm.workflows.contrastive.config import PretrainConfig
    from medmm.workflows.contrastive.run import run

    cfg = build_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml",
                       [f"data.root={root}", f"data.cache_dir={root / '.cache'}", f"output_dir={work / 'runs'}",
                        f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"trainer.max_epochs={epochs}",
                        f"loss.name={loss}", "model.labs.hidden=[64,128]", "trainer.log_every_n_steps=5", *overrides])
    start = time.perf_counter()
    outcome = run(cfg)
    return {"run_id": outcome.run_id, "seconds": round(time.perf_counter() - start), "metrics": outcome.metrics}


def _demo_cohort(root: Path, studies: int | None, **kwargs) -> Path:
    from medmm.demo.generator import build_demo_cohort

    if not (root / "manifest.parquet").exists():
        build_demo_cohort(root, n_studies=studies, seed=0, workers=2, **kwargs)
    return root


def cohort_section(work: Path, studies: int, epochs: int) -> list[dict]:
    cohorts = {"complete": {}, "ECG 30% + report 30% missing": {"ecg": 0.3, "report": 0.3}}
    keep = ("xray_to_report.R@1", "xray_to_report.P@5", "ecg_to_report.P@5", "xray_to_ecg.R@5",
            "zeroshot_xray.planted_mean", "zeroshot_ecg.planted_mean", "xray_from_ecg-labs.acc10",
            "xray_from_ecg-labs-report.acc10")
    rows = []
    for name, missing in cohorts.items():
        root = _demo_cohort(work / ("cohort_" + ("complete" if not missing else "missing")), studies, missing=missing)
        for loss in ("clip", "symile"):
            r = _pretrain(work, root, loss, epochs, [
                "model.modalities=[xray,ecg,report,labs]", "loss.modalities=[xray,ecg,report,labs]",
                "loss.pairs=[[xray,report],[ecg,report],[xray,ecg],[xray,labs],[ecg,labs]]"])
            rows.append({"cohort": name, "loss": loss, "seconds": r["seconds"], **{k: r["metrics"].get(k) for k in keep}})
            print(rows[-1], flush=True)
    return rows


# Symile-MIMIC's setting: X-ray, ECG and labs only; Symile over the three, CLIP over the three pairs.
THREE_MODALITIES = ["model.modalities=[xray,ecg,labs]", "loss.modalities=[xray,ecg,labs]",
                    "loss.pairs=[[xray,ecg],[xray,labs],[ecg,labs]]"]


def _mean_sd(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}


def higher_order_section(work: Path, studies: int, epochs: int, seeds: list[int], batch: int,
                         structures: list[str], done: list[dict]) -> dict:
    """Symile vs CLIP on the pairwise demo and on its higher-order variant (X-ray cardiomegaly
    = ECG pattern XOR lab value): X-ray among 10 from ECG + labs and zero-shot cardiomegaly
    from ECG + labs, over ``seeds``. ``done``: rows of earlier runs of this section (kept; their
    runs are not repeated), so that the structures can run as separate processes and be merged."""
    from medmm.demo.generator import INTERACTION_FINDING, STRUCTURES

    metrics = ("xray_from_ecg-labs.acc10", f"xray_from_ecg-labs.zeroshot_{INTERACTION_FINDING}")
    rows = list(done)
    for structure in structures:
        root = _demo_cohort(work / f"cohort_{structure}_{studies}", studies, structure=structure)
        for seed in seeds:
            for loss in ("clip", "symile"):
                if any((r["structure"], r["loss"], r["seed"]) == (structure, loss, seed) for r in rows):
                    continue
                # the evaluation scores zero-shot X-ray findings from ECG + labs against validation
                # X-ray prototypes (evaluation.query_zero_shot_rows)
                r = _pretrain(work, root, loss, epochs, [*THREE_MODALITIES, f"seed={seed}",
                                                         f"data.batch_size={batch}", "eval.memory_retrieval=false"])
                rows.append({"structure": structure, "loss": loss, "seed": seed, "run_id": r["run_id"],
                             "seconds": r["seconds"], **{k: r["metrics"].get(k) for k in metrics}})
                print(rows[-1], flush=True)
    summary = [{"structure": st, "loss": loss, **{k: _mean_sd([r[k] for r in rows if r["structure"] == st
                                                              and r["loss"] == loss]) for k in metrics}}
               for st in STRUCTURES for loss in ("clip", "symile") if any(r["structure"] == st for r in rows)]
    for s in summary:
        print(s, flush=True)
    return {"studies": studies, "epochs": epochs, "batch_size": batch, "seeds": seeds, "runs": rows,
            "summary": summary}


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
    p.add_argument("--section", choices=["all", "higher_order"], default="all",
                   help="all: XOR, demo cohort and throughput (-> symile.json); higher_order: Symile vs CLIP on the "
                        "pairwise demo and its higher-order variant over --seeds (-> symile_higher_order.json)")
    p.add_argument("--studies", type=int, default=None,
                   help="demo cohort size (default: every usable report; higher_order: 780)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 7; higher_order: 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (higher_order)")
    p.add_argument("--structures", nargs="+", default=["pairwise", "higher_order"],
                   choices=["pairwise", "higher_order"], help="demo cohort structures to run (higher_order)")
    p.add_argument("--resume", type=Path, nargs="*", default=[],
                   help="earlier symile_higher_order.json files whose runs are kept, not repeated (higher_order)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 256 for throughput; higher_order: 32)")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--work", type=Path, default=REPO / "data/benchmark_symile")
    p.add_argument("--skip", nargs="*", default=[], choices=["xor", "cohort", "throughput"])
    p.add_argument("--out", type=Path, default=None,
                   help="result file (default benchmarks/results/symile.json or symile_higher_order.json)")
    p.add_argument("--throughput-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    higher_order = args.section == "higher_order"
    if args.throughput_worker is not None:
        print(json.dumps(throughput_worker(args.throughput_worker or None, args.batch or 256, args.steps)))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out = args.out or REPO / "benchmarks/results" / ("symile_higher_order.json" if higher_order else "symile.json")
    result = {"settings": vars(args) | {"work": str(args.work), "out": str(args.out),
                                        "resume": [str(f) for f in args.resume]}, "load_average": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if higher_order:
        done = [r for f in args.resume for r in json.loads(f.read_text())["higher_order"]["runs"]]
        sections = {"higher_order": lambda: higher_order_section(args.work, args.studies or 780, args.epochs or 8,
                                                                 args.seeds, args.batch or 32, args.structures, done)}
    else:
        sections = {"xor": xor_section, "throughput": lambda: throughput_section(args.batch or 256, args.chunk,
                                                                                  args.steps),
                    "cohort": lambda: cohort_section(args.work, args.studies, args.epochs or 7)}
    for name, section in sections.items():
        if name not in args.skip:
            result[name] = section()
            result["load_average_end"] = os.getloadavg()
            args.out.write_text(json.dumps(result, indent=2))  # after each section: a killed run keeps the rest
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
