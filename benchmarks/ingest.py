"""Cohort ingest rate and memory as the tree grows (``python benchmarks/ingest.py``).

A MIMIC-CXR-layout tree of small real files (one 8x8 DICOM radiograph + one report per
study; as many files as the largest size) with the dataset's mapping tables
(``cxr-record-list.csv.gz``, ``cxr-study-list.csv.gz``) is generated once and cached
(default /tmp/medmm-bench-ingest). Each size (default 2,500, 10,000 and 40,000 files, hard
links into it, the tables whole: they list files a smaller tree lacks) is ingested in a fresh process with ``cohorts/mimic_cxr.yaml``: wall time,
files/s, the parent's peak RSS and peak traced Python heap (tracemalloc), and the worker
processes' peak RSS; then the same tree once more, unchanged, to time the incremental
path. Memory is "flat" when the peaks stop moving while the file count grows 16-fold:
the Python heap is bounded by one batch of rows, the parent's native memory by the
ingest database's ``--memory-limit`` (DuckDB fills its buffer up to it, then spills).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "cohorts/mimic_cxr.yaml"


TABLES = ("cxr-record-list.csv.gz", "cxr-study-list.csv.gz")


def generate(root: Path, n_files: int) -> None:
    """n_files / 2 studies, 1-3 per patient, under files/pXX/pNNNNNNNN/sNNNNNNNN/, and the
    two mapping tables at the root with MIMIC-CXR's columns."""
    import numpy as np
    import pandas as pd
    from pydicom.uid import generate_uid

    from medmm.demo.writers import write_cxr_dicom

    done = root / ".complete"
    if done.exists() and int(done.read_text()) == n_files and all((root / t).exists() for t in TABLES):
        return
    rng = np.random.default_rng(0)
    image = rng.random((8, 8))
    patient, left = 10000000, 0
    records, studies = [], []
    for s in range(n_files // 2):
        if left == 0:
            patient, left = patient + 1, int(rng.integers(1, 4))
        left -= 1
        study = 50000000 + s
        folder = f"files/p{str(patient)[:2]}/p{patient}"
        (root / folder / f"s{study}").mkdir(parents=True, exist_ok=True)
        uid = lambda kind: generate_uid(entropy_srcs=[str(study), kind])  # noqa: E731
        image_path, report_path = f"{folder}/s{study}/{study:08x}.dcm", f"{folder}/s{study}.txt"
        write_cxr_dicom(root / image_path, image, patient_id=str(patient),
                        patient_name="BENCH^PATIENT", study_uid=uid("study"), series_uid=uid("series"),
                        sop_uid=uid("sop"),
                        study_date=f"2180{1 + s % 12:02d}{1 + s % 28:02d}")
        (root / report_path).write_text("FINDINGS: No pleural effusion.\nIMPRESSION: Normal chest.\n")
        records.append({"subject_id": patient, "study_id": study, "dicom_id": f"{study:08x}", "path": image_path})
        studies.append({"subject_id": patient, "study_id": study, "path": report_path})
    pd.DataFrame(records).to_csv(root / TABLES[0], index=False)
    pd.DataFrame(studies).to_csv(root / TABLES[1], index=False)
    done.write_text(str(n_files))


def subset(full: Path, root: Path, n_files: int) -> None:
    """The first n_files files of the full tree (sorted paths) and its tables, hard-linked
    (same mtimes)."""
    if (root / ".complete").exists() and all((root / t).exists() for t in TABLES):
        return
    files = sorted(p for p in (full / "files").rglob("*") if p.is_file())[:n_files]
    for p in [*files, *(full / t for t in TABLES)]:
        target = root / p.relative_to(full)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(p, target)
    (root / ".complete").write_text(str(n_files))


def measure_once(root: Path, out: Path, workers: int, trace: bool, memory_limit: str) -> dict:
    """One ingest in this process (called in a fresh subprocess per tree)."""
    import resource
    import tracemalloc

    from medmm.cohort.ingest import ingest
    from medmm.cohort.spec import load_cohort_spec

    spec = load_cohort_spec(SPEC)
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    stats = ingest(spec, root, out, workers=workers, chunk=64, memory_limit=memory_limit)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] if trace else None
    return {"n_files": stats.n_files_seen, "n_read": stats.n_files_read, "n_reused": stats.n_files_reused,
            "n_rows": stats.n_rows, "n_patients": stats.n_patients, "n_links": stats.n_links, "seconds": round(seconds, 2),
            "files_per_s": round(stats.n_files_seen / seconds, 1),
            "parent_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "parent_peak_python_heap_mb": None if traced is None else round(traced / 2**20, 2),
            "worker_peak_rss_mb": round(stats.peak_rss_worker_kb / 1024, 1), "memory_limit": memory_limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/medmm-bench-ingest"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000, 40000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default=None, help="the ingest database's buffer (default: ingest's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ingest.json")
    parser.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--manifest", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        from medmm.cohort.ingest import MEMORY_LIMIT

        print(json.dumps(measure_once(args.one, args.manifest, args.workers, trace=not args.no_trace,
                                      memory_limit=args.memory_limit or MEMORY_LIMIT)))
        return

    full = args.cache / "full"
    t0 = time.perf_counter()
    generate(full, max(args.sizes))
    print(f"tree of {max(args.sizes)} files ready in {args.cache} [{time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def one(root: Path, manifest: Path, trace: bool) -> dict:
        cmd = [sys.executable, __file__, "--one", str(root), "--manifest", str(manifest),
               "--workers", str(args.workers)] + ([] if trace else ["--no-trace"]) + (
                   ["--memory-limit", args.memory_limit] if args.memory_limit else [])
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])

    rows = []
    for n in args.sizes:
        root = full if n == max(args.sizes) else args.cache / f"n{n}"
        if root is not full:
            subset(full, root, n)
        manifest = args.cache / f"manifest_{n}.parquet"
        for p in (manifest, manifest.with_name(manifest.stem + ".files.parquet")):
            p.unlink(missing_ok=True)
        first = one(root, manifest, trace=False)      # the rate, without tracemalloc's overhead
        for p in (manifest, manifest.with_name(manifest.stem + ".files.parquet")):
            p.unlink(missing_ok=True)
        traced = one(root, manifest, trace=True)      # the parent's Python heap peak
        rerun = one(root, manifest, trace=False)      # nothing changed: incremental path
        row = {**first, "parent_peak_python_heap_mb": traced["parent_peak_python_heap_mb"],
               "rerun_unchanged_seconds": rerun["seconds"], "rerun_n_read": rerun["n_read"]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    result = {"spec": "cohorts/mimic_cxr.yaml", "workers": args.workers,
              "tree": "MIMIC-CXR layout; per study one 8x8 DICOM (~1.6 kB) + one report; 1-3 studies per patient; "
                      "cxr-record-list / cxr-study-list of the largest tree",
              "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
