"""Retrieval-index benchmark: build time, index memory and query latency of the exact,
HNSW and IVF indexes medmm's retrieval pipeline builds, at 1e4 / 1e5 / 1e6 vectors, with
recall@10 against exact search. Tracked in MLflow (experiment medmm-retrieval-benchmark)
and written to benchmarks/results/retrieval_index.json.

    python benchmarks/retrieval_index.py [--sizes 10000 100000 1000000] [--dim 128] [--threads 1]

Vectors: unit-norm, 128-d (the default embedding size), drawn around 1,000 random centres
(embeddings of a cohort cluster by finding pattern; uniform random vectors would be the
worst case for approximate search). Queries come from the same distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from medmm.retrieval.index import IndexParams, build_faiss_index

OUT = Path(__file__).resolve().parent / "results" / "retrieval_index.json"


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
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)
    q = vectors(args.queries, args.dim, rng, centres)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}; MLflow run {run_id} in {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
