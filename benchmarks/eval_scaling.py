"""Evaluation scaling benchmark: the time of one retrieval direction of the contrastive
evaluation (plain metrics on test, the prior-correction and memory-translation grid
searches on validation, both re-rankers' test metrics: the calls
``medmm.workflows.contrastive.evaluation.evaluate_contrastive`` makes per direction) at
500 to 8,000 test studies, and the exponent of a power law fitted to it. Written to
benchmarks/results/eval_scaling.json.

    python benchmarks/eval_scaling.py [--sizes 500 1000 2000 4000 8000] [--rounds 3]

Synthetic embeddings of the demo's shape: 128-d float32, 9 findings at chest X-ray report
prevalences (so most studies share the no-finding pattern and label matches tie), splits in
the demo's proportions (train : val : test = 7 : 1 : 2; train is the memory). The query
modality shows six of the nine findings, as an X-ray does. Sizes run interleaved within each
round and the medians are reported, beside the load average, because the cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from medmm.metrics.retrieval import retrieval_metrics
from medmm.retrieval.gallery_prior import fit_prior_correction
from medmm.retrieval.memory_retrieval import PairedMemory, fit_memory_translation

OUT = Path(__file__).resolve().parent / "results" / "eval_scaling.json"
DIM = 128
PREVALENCE = np.array([0.12, 0.06, 0.03, 0.01, 0.08, 0.07, 0.10, 0.05, 0.06])  # the 9 findings
OBSERVED_BY_QUERY = 6
LOGIT_SCALE = 1 / 0.07  # CLIP's initial temperature
LABEL_KS = (1, 5)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_split(n: int, rng: np.random.Generator, axes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    labels = (rng.random((n, len(PREVALENCE))) < PREVALENCE).astype(np.int8)
    shown = labels[:, :OBSERVED_BY_QUERY].astype(np.float32)
    candidates = _unit(labels @ axes["report"] + axes["no_finding"] + 0.5 * rng.normal(size=(n, DIM)))
    queries = _unit(shown @ (0.5 * axes["report"][:OBSERVED_BY_QUERY] + axes["xray"]) + axes["no_finding"]
                    + 0.8 * rng.normal(size=(n, DIM)))
    return {"queries": queries, "candidates": candidates, "labels": labels}


def synthetic_direction(n_test: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    axes = {"report": rng.normal(size=(len(PREVALENCE), DIM)), "xray": rng.normal(size=(OBSERVED_BY_QUERY, DIM)),
            "no_finding": rng.normal(size=DIM)}
    sizes = {"test": n_test, "val": n_test // 2, "memory": 7 * n_test // 2}
    return {name: synthetic_split(n, rng, axes) for name, n in sizes.items()}


def evaluate_direction(data: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, float], dict[str, float]]:
    """The evaluation's per-direction calls; returns (metrics, seconds per stage)."""
    test, val, memory = data["test"], data["val"], data["memory"]
    metric = f"P@{max(LABEL_KS)}"
    seconds, metrics = {}, {}
    start = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[stage] = now - start
        start = now

    def test_label_match(scores: np.ndarray) -> dict[str, float]:
        return retrieval_metrics(scores, test["labels"], test["labels"], ks=(), label_ks=LABEL_KS)

    metrics.update(retrieval_metrics(test["queries"] @ test["candidates"].T, test["labels"], test["labels"],
                                     ks=(1, 5, 10), label_ks=LABEL_KS))
    metrics["plain.val"] = retrieval_metrics(val["queries"] @ val["candidates"].T, val["labels"], val["labels"],
                                             ks=(), label_ks=(max(LABEL_KS),))[metric]
    lap("plain")
    prior, metrics["prior.val"] = fit_prior_correction(val["queries"], val["candidates"], val["labels"], LOGIT_SCALE,
                                                       metric=metric)
    lap("prior_fit")
    metrics.update({f"prior.{k}": v for k, v in test_label_match(
        prior.scores(test["queries"], test["candidates"], LOGIT_SCALE)).items()})
    lap("prior_test")
    paired = PairedMemory(memory["queries"], memory["candidates"])
    translation, metrics["memory.val"] = fit_memory_translation(val["queries"], val["candidates"], val["labels"],
                                                                paired, LOGIT_SCALE, metric=metric)
    lap("memory_fit")
    metrics.update({f"memory.{k}": v for k, v in test_label_match(
        translation.scores(test["queries"], test["candidates"], paired, LOGIT_SCALE)).items()})
    lap("memory_test")
    metrics.update({"prior.bandwidth": prior.bandwidth, "prior.weight": prior.weight, "memory.k": translation.k,
                    "memory.weight": translation.weight})
    return metrics, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    data = {n: synthetic_direction(n) for n in args.sizes}
    runs = {n: [] for n in args.sizes}
    for round_index in range(args.rounds):
        for n in args.sizes:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            metrics, stages = evaluate_direction(data[n])
            total = time.perf_counter() - start
            runs[n].append({"seconds": total, "stages": stages, "load_average": load, "metrics": metrics})
            print(f"round {round_index} n={n}: {total:.2f} s (load {load:.1f}) "
                  + " ".join(f"{k}={v:.2f}" for k, v in stages.items()), flush=True)
    medians = {n: float(np.median([r["seconds"] for r in runs[n]])) for n in args.sizes}
    exponent = (float(np.polyfit(np.log(args.sizes), np.log([medians[n] for n in args.sizes]), 1)[0])
                if len(args.sizes) > 1 else None)
    rows = [{"n_test": n, "n_val": len(data[n]["val"]["labels"]), "n_memory": len(data[n]["memory"]["labels"]),
             "seconds_median": medians[n], "seconds_rounds": [r["seconds"] for r in runs[n]],
             "stage_seconds_median": {s: float(np.median([r["stages"][s] for r in runs[n]])) for s in runs[n][0]["stages"]},
             "load_average_median": float(np.median([r["load_average"] for r in runs[n]])),
             "metrics": runs[n][0]["metrics"]} for n in args.sizes]
    payload = {"machine": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
               "rounds": args.rounds, "fitted_exponent": exponent,
               "goal": "<= 10 s per direction at 4,000 test studies; fitted exponent <= 1.3 from 500 to 8,000",
               "note": "the cores are shared with other jobs (see the load averages): absolute times are inflated",
               "rows": rows}
    print(f"fitted exponent {exponent if exponent is None else round(exponent, 2)}; medians " + ", ".join(f"{n}: {medians[n]:.2f} s" for n in args.sizes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
