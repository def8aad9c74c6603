"""``python -m medmm.workflows.deid.run``: de-identify a folder of DICOM files and report text.

    MEDMM_DEID_KEY=<secret> python -m medmm.workflows.deid.run --in /data/raw --out /data/deid

DICOM (recognised by content) per DICOM PS3.15 Annex E (medmm.cohort.deid_dicom);
``*.txt`` reports scrubbed (medmm.cohort.deid_text), with the cohort's own patient
names and IDs from the DICOM headers scrubbed wherever they appear; WFDB ECG records
(``*.hea`` + signal files) with their start date / time and comments removed
(medmm.cohort.deid_wfdb). Every other file is left out (it could hold anything).
Output paths are keyed hashes of the input path components (file names often hold
names or MRNs), so a patient / study / series folder maps to one output folder. The
same key gives the same pseudonyms, UIDs and date shifts on a later run; keep it
secret, and out of the output. An audit log (``<out>/deid_audit.jsonl``) lists per
output file the attribute keywords and counts of what changed, never a value. Images
flagged BurnedInAnnotation=YES are refused unless ``--allow-burned-in``. Exit code 1
when any file was refused or unreadable.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
from collections import Counter
from pathlib import Path

KEY_ENV = "MEDMM_DEID_KEY"
AUDIT_NAME = "deid_audit.jsonl"
REPORT_SUFFIXES = {".txt"}


def pseudonymous_path(key: bytes, rel: Path) -> Path:
    """Each path component -> 16 hex of HMAC-SHA256(key, component); extensions kept."""
    parts = []
    for i, part in enumerate(rel.parts):
        last = i == len(rel.parts) - 1
        suffix = "".join(Path(part).suffixes) if last else ""
        stem = part[: len(part) - len(suffix)] if suffix else part
        parts.append(hmac.new(key, stem.encode(), hashlib.sha256).hexdigest()[:16] + suffix)
    return Path(*parts)


def _walk(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def collect_identifiers(dicom_files: list[Path]) -> tuple[set[str], set[str]]:
    """Person names and patient / accession IDs of the cohort (kept in memory only)."""
    import pydicom

    names, ids = set(), set()
    for path in dicom_files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - unreadable files are reported by the main pass
            continue

        def grab(dataset, elem):
            if elem.VR == "PN" and elem.value:
                names.update(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]))
            elif elem.keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "MedicalRecordLocator") and elem.value:
                ids.add(str(elem.value))
        ds.walk(grab)
    return names, ids


def deidentify_tree(src: Path, dst: Path, key: bytes, *, allow_burned_in: bool = False) -> dict:
    import pydicom

    from medmm.cohort.deid_dicom import DicomDeidentifier
    from medmm.cohort.deid_text import ReportScrubber
    from medmm.cohort.deid_wfdb import deidentify_header, signal_files
    from medmm.cohort.scan import looks_like_dicom
    from medmm.io.errors import CorruptFileError, MedmmInputError

    src, dst = src.resolve(), dst.resolve()
    if dst == src or src in dst.parents:
        raise ValueError("--out must lie outside --in")
    files = list(_walk(src))
    dicom = [p for p in files if looks_like_dicom(p)]
    dicom_set = set(dicom)
    reports = [p for p in files if p not in dicom_set and p.suffix.lower() in REPORT_SUFFIXES]
    headers = [p for p in files if p not in dicom_set and p.suffix == ".hea"]
    names, ids = collect_identifiers(dicom)
    deid = DicomDeidentifier(key, allow_burned_in=allow_burned_in)
    scrubber = ReportScrubber(names, ids)
    dst.mkdir(parents=True, exist_ok=True)
    summary = Counter()
    refused: list[Path] = []
    with open(dst / AUDIT_NAME, "w", encoding="utf-8") as audit:
        for path in dicom:
            out = pseudonymous_path(key, path.relative_to(src))
            try:
                ds = pydicom.dcmread(path, force=True)
                actions = deid.deidentify(ds, where=path)
            except MedmmInputError as exc:
                summary["dicom_refused"] += 1
                refused.append(path)
                audit.write(json.dumps({"file": None, "kind": "dicom", "status": "refused",
                                        "reason": type(exc).__name__}) + "\n")
                continue
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
                summary["dicom_unreadable"] += 1
                refused.append(path)
                audit.write(json.dumps({"file": None, "kind": "dicom", "status": "unreadable",
                                        "reason": type(exc).__name__}) + "\n")
                continue
            (dst / out).parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(dst / out, enforce_file_format=True)
            summary["dicom_written"] += 1
            audit.write(json.dumps({"file": out.as_posix(), "kind": "dicom", "status": "written",
                                    "actions": dict(sorted(actions.items()))}) + "\n")
        for path in reports:
            out = pseudonymous_path(key, path.relative_to(src))
            text = path.read_text(encoding="utf-8", errors="replace")
            clean, counts = scrubber.scrub(text)
            (dst / out).parent.mkdir(parents=True, exist_ok=True)
            (dst / out).write_text(clean, encoding="utf-8")
            summary["reports_written"] += 1
            audit.write(json.dumps({"file": out.as_posix(), "kind": "report", "status": "written",
                                    "actions": {f"scrubbed:{k}": v for k, v in sorted(counts.items())}}) + "\n")
        consumed = set()
        for path in headers:
            out = pseudonymous_path(key, path.relative_to(src))
            try:
                text = path.read_text(encoding="ascii", errors="strict")
                names = signal_files(text)
                new_names = {n: pseudonymous_path(key, (path.parent / n).relative_to(src)).name for n in names}
                clean, counts = deidentify_header(text, out.stem, new_names, where=str(path))
                for n in names:
                    if not (path.parent / n).is_file():
                        raise CorruptFileError(path, f"signal file {n!r} named by the header is missing")
            except (MedmmInputError, UnicodeDecodeError, IndexError) as exc:
                summary["wfdb_unreadable"] += 1
                refused.append(path)
                audit.write(json.dumps({"file": None, "kind": "wfdb", "status": "unreadable",
                                        "reason": type(exc).__name__}) + "\n")
                continue
            (dst / out).parent.mkdir(parents=True, exist_ok=True)
            for n in names:
                shutil.copyfile(path.parent / n, dst / out.parent / new_names[n])  # samples unchanged
                consumed.add(path.parent / n)
            (dst / out).write_text(clean, encoding="ascii")
            summary["wfdb_written"] += 1
            audit.write(json.dumps({"file": out.as_posix(), "kind": "wfdb", "status": "written",
                                    "actions": dict(sorted(counts.items()))}) + "\n")
    summary["other_files_left_out"] = len(files) - len(dicom) - len(reports) - len(headers) - len(consumed)
    return {"summary": dict(summary), "refused": refused}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmm.workflows.deid.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in", dest="src", type=Path, required=True, help="folder with DICOM files and reports")
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside --in)")
    parser.add_argument("--allow-burned-in", action="store_true",
                        help="also de-identify images flagged BurnedInAnnotation=YES (their pixels may still show PHI)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"file holding the secret key (default: ${KEY_ENV}; else a random one-off key)")
    args = parser.parse_args(argv)
    if args.key_file:
        key = args.key_file.read_bytes().strip()
    elif os.environ.get(KEY_ENV):
        key = os.environ[KEY_ENV].encode()
    else:
        key = secrets.token_bytes(32)
        print(f"WARNING: no key (${KEY_ENV} or --key-file): a one-off random key is used, so pseudonyms, UIDs and "
              "date shifts will differ from any other run", file=sys.stderr)
    if not args.src.is_dir():
        print(f"error: --in {args.src} is not a folder", file=sys.stderr)
        return 2
    try:
        result = deidentify_tree(args.src, args.out, key, allow_burned_in=args.allow_burned_in)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("de-identified: " + ", ".join(f"{k} {v}" for k, v in sorted(result["summary"].items())) +
          f"; audit log {args.out / AUDIT_NAME}")
    if result["refused"]:
        # The operator's own input paths, on the operator's console only (never in the audit log).
        print(f"{len(result['refused'])} file(s) not written (burned-in annotation or unreadable):", file=sys.stderr)
        for path in result["refused"]:
            print(f"  {path.relative_to(args.src.resolve()) if path.is_absolute() else path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
