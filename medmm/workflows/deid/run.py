"""De-identification of a folder of DICOM files, reports and ECGs (``python -m medmm.pipelines.deid``).

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

import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pydicom

from medmm.cohort.deid_dicom import DicomDeidentifier
from medmm.cohort.deid_text import ReportScrubber
from medmm.cohort.deid_wfdb import deidentify_header, signal_files
from medmm.cohort.scan import looks_like_dicom
from medmm.io.errors import CorruptFileError, MedmmInputError

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
    src, dst = src.resolve(), dst.resolve()
    if dst == src or src in dst.parents:
        raise MedmmInputError(dst, "the output folder must lie outside the input folder")
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


def secret_key(key_file: Path | None) -> bytes:
    """The key of the pseudonyms: ``key_file``'s content, else ``$MEDMM_DEID_KEY``, else a
    random one-off key (with a warning: its pseudonyms match no other run)."""
    if key_file:
        return key_file.read_bytes().strip()
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    print(f"WARNING: no key (${KEY_ENV} or --key-file): a one-off random key is used, so pseudonyms, UIDs and "
          "date shifts will differ from any other run", file=sys.stderr)
    return secrets.token_bytes(32)


@dataclass
class DeidOutcome:
    out: Path
    summary_counts: dict[str, int]
    refused: list[Path]  # input paths not written (burned-in annotation or unreadable)

    @property
    def exit_code(self) -> int:
        return 1 if self.refused else 0

    def __str__(self) -> str:  # what the command prints
        return ("de-identified: " + ", ".join(f"{k} {v}" for k, v in sorted(self.summary_counts.items())) +
                f"; audit log {self.out / AUDIT_NAME}")


def run(src: Path, out: Path, key: bytes, *, allow_burned_in: bool = False) -> DeidOutcome:
    """De-identify ``src`` into ``out``; the refused files are named on stderr."""
    if not src.is_dir():
        raise MedmmInputError(src, "the input (--in) is not a folder")
    result = deidentify_tree(src, out, key, allow_burned_in=allow_burned_in)
    if result["refused"]:
        # The operator's own input paths, on the operator's console only (never in the audit log).
        print(f"{len(result['refused'])} file(s) not written (burned-in annotation or unreadable):", file=sys.stderr)
        for path in result["refused"]:
            print(f"  {path.relative_to(src.resolve()) if path.is_absolute() else path}", file=sys.stderr)
    return DeidOutcome(out, result["summary"], result["refused"])
