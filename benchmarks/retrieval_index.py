"""Retrieval-index benchmark: build time, index memory and query latency of the exact,
HNSW and IVF indexes medmm's retrieval pipeline builds, at 1e4 / 1e5 / 1e6 vectors, with
recall@10 against exact search. Tracked in MLflow (experiment medmm-retrieval-benchmark)
and written to benchmarks/results/retrieval_index.json.

    python benchmarks/retrieval_index.py [--sizes 10000 100000 1000000] [--dim 128] [--threads 1]

With ``--wrapper``: the time of ``StudyIndex.search`` (hits with their study rows, as
columns) over the raw FAISS call it wraps, and of the same hits read out as dicts query by
query, on an exact index at 1e4 / 1e5 vectors, for single queries and a batch of 200, the
calls rotated within interleaved rounds; medians, the load average beside each round. Written to benchmarks/results/retrieval_wrapper.json.

    python benchmarks/retrieval_index.py --wrapper [--sizes 10000 100000] [--rounds 5]

Vectors: unit-norm, 128-d (the default embedding size), drawn around 1,000 random centres
(embeddings of a cohort cluster by finding pattern; uniform random vectors would be the
worst case for approximate search). Queries come from the same distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medmm.retrieval.index import IndexParams, StudyIndex, build_faiss_index

OUT = Path(__file__).resolve().parent / "results" / "retrieval_index.json"
WRAPPER_OUT = Path(__file__).resolve().parent / "results" / "retrieval_wrapper.json"


def vectors(n: int, dim: int, rng, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def measure(x: np.ndarray, q: np.ndarray, exact_ids: np.ndarray | None, kind: str, k: int) -> dict:
    import faiss

    params = IndexParams(exact_max=len(x) if kind == "exact" else 0, approximate=kind if kind != "exact" else "hnsw")
    start = time.perf_counter()
    index = build_faiss_index(x, params)
    build_s = time.perf_counter() - start
    memory = len(faiss.serialize_index(index))
    lat = []
    for row in q[:200]:
        t = time.perf_counter()
        index.search(row[None], k)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, ids = index.search(q, k)
    batch_s = time.perf_counter() - t
    recall = 1.0 if exact_ids is None else float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact_ids)]))
    return {"kind": kind, "n": len(x), "build_s": build_s, "index_mb": memory / 2**20,
            "query_ms_p50": 1e3 * float(np.median(lat)), "query_ms_p95": 1e3 * float(np.percentile(lat, 95)),
            "batch_qps": len(q) / batch_s, f"recall_at_{k}": recall}, ids


def _timed(call, *args) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def wrapper_overhead(sizes: list[int], dim: int, queries: np.ndarray, rounds: int, batch: int, k: int, rng,
                     centres: np.ndarray) -> dict:
    """Per size: median seconds of the wrapper and of the raw call, single query and batch,
    and their ratio (the median over rounds of each round's ratio of medians)."""
    batched = queries[:batch]  # the single queries are its rows, one call each
    indexes = {}
    with tempfile.TemporaryDirectory(prefix="medmm-wrapper-bench-") as folder:
        for n in sizes:
            studies = pd.DataFrame({"study_id": [f"S{i:07d}" for i in range(n)],
                                    "split": rng.choice(["train", "val", "test"], n),
                                    "report_text": [f"Findings: study {i}. " + "The lungs are clear. " * 12
                                                    for i in range(n)]})
            indexes[n] = StudyIndex.build(Path(folder) / str(n), {"report": vectors(n, dim, rng, centres)}, studies,
                                          IndexParams(exact_max=n), {})
    whos = ("raw", "wrapper", "hits")
    times = {(n, mode, who): [] for n in sizes for mode in ("single", "batch") for who in whos}
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for n in sizes:
            wrapped = indexes[n]
            raw = wrapped.indexes["report"]
            calls = {("single", "raw"): lambda row, index=raw: index.search(row[None], k),
                     ("single", "wrapper"): lambda row, index=wrapped: index.search(row, "report", k),
                     ("batch", "raw"): lambda _, index=raw: index.search(batched, k),
                     ("batch", "wrapper"): lambda _, index=wrapped: index.search(batched, "report", k),
                     # the wrapper's hits read as dicts, query by query (what the CLI prints)
                     ("single", "hits"): lambda row, index=wrapped: list(index.search(row, "report", k)),
                     ("batch", "hits"): lambda _, index=wrapped: list(index.search(batched, "report", k))}
            # each query / repeat rotates which call goes first, so none always runs warm
            for mode, inputs in (("single", batched), ("batch", range(5))):
                for i, x in enumerate(inputs):
                    for who in whos[i % 3:] + whos[:i % 3]:
                        times[n, mode, who].append(_timed(calls[mode, who], x))
    rows = []
    for n in sizes:
        for mode, per_round in (("single", len(batched)), ("batch", 5)):
            split = {who: np.array(times[n, mode, who]).reshape(rounds, per_round) for who in whos}
            ratios = np.median(split["wrapper"], axis=1) / np.median(split["raw"], axis=1)
            hit_ratios = np.median(split["hits"], axis=1) / np.median(split["raw"], axis=1)
            rows.append({"n": n, "mode": mode, "queries_per_call": 1 if mode == "single" else len(batched),
                         "wrapper_ms_median": 1e3 * float(np.median(split["wrapper"])),
                         "raw_ms_median": 1e3 * float(np.median(split["raw"])),
                         "hits_ms_median": 1e3 * float(np.median(split["hits"])),
                         "ratio_median": float(np.median(ratios)), "ratio_per_round": ratios.round(3).tolist(),
                         "hits_ratio_median": float(np.median(hit_ratios))})
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "load_average_per_round": [round(x, 2) for x in loads]}


def main(argv=None) -> int:
    import faiss

    from medmm.tracking.pipeline_run import log_json, log_metrics, start_run

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", default=["exact", "hnsw", "ivf"])
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--wrapper", action="store_true", help="measure StudyIndex.search against the raw FAISS call")
    ap.add_argument("--rounds", type=int, default=5, help="--wrapper: interleaved rounds")
    ap.add_argument("--batch", type=int, default=200, help="--wrapper: queries in the batch call")
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)
    q = vectors(args.queries, args.dim, rng, centres)
    if args.wrapper:
        sizes = [n for n in args.sizes if n <= 100_000] if args.sizes != ap.get_default("sizes") else [10_000, 100_000]
        result = wrapper_overhead(sizes, args.dim, q, args.rounds, args.batch, 10, rng, centres)
        payload = {"machine": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
                   "threads": args.threads, "dim": args.dim, "k": 10, "index": "exact (IndexFlatIP)",
                   "goal": "wrapper / raw <= 1.1 at 1e4 and 1e5 vectors, single query and batch",
                   "note": "the cores are shared with other jobs (see the load averages)", **result}
        out = args.out or WRAPPER_OUT
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {out}")
        return 0
    client, run_id, uri = start_run(args.tracking_uri, "medmm-retrieval-benchmark", None, "retrieval-benchmark")
    client.log_param(run_id, "dim", args.dim)
    client.log_param(run_id, "threads", args.threads)
    client.log_param(run_id, "queries", args.queries)
    rows = []
    for n in args.sizes:
        x = vectors(n, args.dim, rng, centres)
        exact_ids = None
        for kind in ["exact"] + [k for k in args.kinds if k != "exact"]:
            row, ids = measure(x, q, exact_ids, kind, 10)
            if kind == "exact":
                exact_ids = ids
            rows.append(row)
            print(json.dumps(row), flush=True)
            log_metrics(client, run_id, {f"{kind}.{k}": v for k, v in row.items() if k not in ("kind", "n")}, step=n)
        del x
    payload = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "dim": args.dim,
               "cpu_cores": os.cpu_count(), "load_average_at_end": round(os.getloadavg()[0], 1),
               "note": "other jobs may share the cores (see the load average): absolute times are then inflated; "
                       "ratios between index kinds measured in one run are the meaningful part",
               "mlflow_run_id": run_id, "rows": rows}
    log_json(client, run_id, "retrieval_index.json", payload)
    client.set_terminated(run_id)
    out = args.out or OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}; MLflow run {run_id} in {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
