"""Build a cohort manifest from a data tree, by a cohort spec that says which files are which modality.

The spec (``cohorts/*.yaml``) names the files of each modality by path, content and DICOM
header tags, the mapping tables that give them patient and study, and how modalities link
(by accession number, StudyInstanceUID or study, or the same patient nearest in time).
DICOM and JPEG / PNG are recognised by content; every claimed file is checked complete (a
cut-off DICOM, JPEG, PNG or WFDB file is listed as unreadable) and hashed; a second run
reads only new or changed files. The command prints counts, never identifiers: what was
found, linked, and dropped by category (unreadable by reason, not selected by tag or table
value, not claimed, without patient / study, unlinked, studies lacking a required
modality). A spec that matches nothing on the tree, or leaves no row, is an error (exit
code 2) that says what the tree holds.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from medmm.pipelines.command import Command


def arguments(parser) -> None:
    parser.add_argument("--spec", type=Path, required=True, help="cohort spec, e.g. cohorts/mimic_cxr.yaml")
    parser.add_argument("--root", type=Path, default=None, help="data tree (default: the spec's root)")
    parser.add_argument("--out", type=Path, default=None, help="manifest path (default: <root>/manifest.parquet)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="reader processes")
    parser.add_argument("--chunk", type=int, default=64, help="files per worker task")
    parser.add_argument("--memory-limit", default=None,
                        help="cap on the ingest database's buffer, e.g. 64MB (default) or 1GB; past it, it works "
                             "on disk")
    parser.add_argument("--stats-json", type=Path, default=None, help="also write the run's counts here")


COMMAND = Command("ingest", __doc__, None, arguments=arguments,
                  inputs=["a cohort spec (--spec, e.g. cohorts/mimic_cxr.yaml)",
                          "the data tree it describes (--root, default: the spec's root), with its mapping tables"],
                  outputs=["the manifest (--out, default <root>/manifest.parquet): one row per file or table item",
                           "manifest.files.parquet beside it: the record of every file a rule matched (reused by "
                           "the next run)",
                           "manifest.unreadable.csv beside it, when files were unreadable: path, reason, problem",
                           "the counts on the console (and --stats-json): found, linked, dropped by category"],
                  examples=["--spec cohorts/mimic_cxr.yaml --root /data/mimic-cxr",
                            "--spec cohorts/hospital_export_example.yaml --root /data/export --out /data/m.parquet"])


@dataclass
class IngestOutcome:
    text: str
    exit_code: int = 0

    def __str__(self) -> str:
        return self.text


def execute(_, args) -> IngestOutcome:
    from medmm.cohort.ingest import ingest, unreadable_path
    from medmm.cohort.spec import load_cohort_spec
    from medmm.io.errors import MedmmInputError

    spec = load_cohort_spec(args.spec)
    root = args.root or spec.root
    if not root.is_dir():
        raise MedmmInputError(root, "the data root is not a folder (give --root, or set the spec's root)")
    out = args.out or root / "manifest.parquet"
    limit = {"memory_limit": args.memory_limit} if args.memory_limit else {}
    try:
        stats = ingest(spec, root, out, workers=args.workers, chunk=args.chunk, **limit)
    except ValueError as exc:  # a bad --memory-limit
        raise MedmmInputError(None, str(exc)) from exc
    if args.stats_json:
        args.stats_json.write_text(json.dumps(stats.as_dict(), indent=2))
    text = (f"{spec.name}: {stats.n_patients} patients, {stats.n_studies} studies, {stats.n_rows} rows -> {out} "
            f"[{stats.seconds:.1f} s]\n{stats.summary(spec)}")
    if stats.n_problems:
        text += f"\n  the unreadable files and why: {unreadable_path(Path(out).resolve())}"
    return IngestOutcome(text)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
