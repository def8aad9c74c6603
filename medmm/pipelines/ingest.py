"""``python -m medmm.pipelines.ingest``: a directory tree -> a cohort manifest (Parquet).

    python -m medmm.pipelines.ingest --spec cohorts/mimic_cxr.yaml --root /data/mimic-cxr \\
        --out /data/mimic-cxr/manifest.parquet

DICOM is recognised by content, files are grouped into patients / studies / series,
modalities linked by the spec's rules, every file hashed; a second run reads only new
or changed files. Prints counts, never identifiers. Exit code 2 on a spec error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from medmm.config.core import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmm.pipelines.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="cohort spec, e.g. cohorts/mimic_cxr.yaml")
    parser.add_argument("--root", type=Path, default=None, help="data tree (default: the spec's root)")
    parser.add_argument("--out", type=Path, default=None, help="manifest path (default: <root>/manifest.parquet)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="reader processes")
    parser.add_argument("--chunk", type=int, default=64, help="files per worker task")
    parser.add_argument("--memory-limit", default=None,
                        help="cap on the ingest database's buffer, e.g. 64MB (default) or 1GB; past it, it works on disk")
    parser.add_argument("--stats-json", type=Path, default=None, help="also write the run's counts here")
    args = parser.parse_args(argv)

    from medmm.cohort.ingest import ingest
    from medmm.cohort.spec import load_cohort_spec

    try:
        spec = load_cohort_spec(args.spec)
    except ConfigError as exc:
        print(f"spec error: {exc}", file=sys.stderr)
        return 2
    root = args.root or spec.root
    if not root.is_dir():
        print(f"error: data root {root} is not a folder", file=sys.stderr)
        return 2
    out = args.out or root / "manifest.parquet"
    try:
        limit = {"memory_limit": args.memory_limit} if args.memory_limit else {}
        stats = ingest(spec, root, out, workers=args.workers, chunk=args.chunk, **limit)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{spec.name}: {stats.n_patients} patients, {stats.n_studies} studies, {stats.n_rows} rows -> {out}\n"
          f"  files matched {stats.n_files_seen} (read {stats.n_files_read}, unchanged {stats.n_files_reused}), "
          f"table items {stats.n_items_from_tables}, links {stats.n_links}, "
          f"studies dropped for a missing required modality {stats.n_dropped_studies}\n"
          f"  unreadable {stats.n_problems} {stats.problems or ''}, without patient/study {stats.n_unidentified} "
          f"[{stats.seconds:.1f} s]")
    if stats.n_problems:
        print(f"  the unreadable files and why: column 'problem' of {out.with_name(out.stem + '.files.parquet')}",
              file=sys.stderr)
    if args.stats_json:
        args.stats_json.write_text(json.dumps(stats.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
