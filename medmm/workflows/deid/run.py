"""De-identification of a folder of DICOM files, reports and ECGs (``python -m medmm.pipelines.deid``).

DICOM (recognised by content) per DICOM PS3.15 Annex E (medmm.cohort.deid_dicom);
``*.txt`` reports scrubbed (medmm.cohort.deid_text), with the cohort's own patient
names and IDs from the DICOM headers scrubbed wherever they appear; WFDB ECG records
(``*.hea`` + signal files) with their start date / time and comments removed
(medmm.cohort.deid_wfdb). Every other file is left out (it could hold anything), and
so are DICOMDIRs (their file references name the input files).

Output paths keep the tree's shape: each path component becomes the keyed pseudonym of
its name (file names often hold names or MRNs; known file extensions are kept), so a
patient / study / series folder maps to one output folder. It is the pseudonym the DICOM
headers get for the same value (medmm.cohort.pseudonym): a report named by its accession
number, patient ID or StudyInstanceUID (a name shaped like a UID gets a UID) keeps naming
its study, and the cohort spec's ``ids`` regexes still capture the key. Given the cohort
spec the output is for, the literal folder and file names of its patterns (``dicom/``,
``reports/``) are kept as they are, so the same spec ingests the output; a literal that
holds an identifier of the cohort is refused. The same key gives the same pseudonyms,
UIDs and date shifts on a later run; keep it secret, and out of the output. An audit log
(``<out>/deid_audit.jsonl``) lists per output file the attribute keywords and counts of
what changed, never a value. Images flagged BurnedInAnnotation=YES are refused unless
``--allow-burned-in``, and so are DICOM files cut short. Exit code 1 when any file was
refused or unreadable.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import MediaStorageDirectoryStorage

from medmm.cohort.deid_dicom import DicomDeidentifier
from medmm.cohort.deid_text import ReportScrubber
from medmm.cohort.deid_wfdb import deidentify_header, signal_files
from medmm.cohort.pseudonym import pseudonym, pseudonym_uid
from medmm.cohort.scan import Unreadable, dicom_header, looks_like_dicom
from medmm.cohort.spec import load_cohort_spec
from medmm.io.errors import CorruptFileError, MedmmInputError

KEY_ENV = "MEDMM_DEID_KEY"
AUDIT_NAME = "deid_audit.jsonl"
REPORT_SUFFIXES = {".txt"}
# Extensions kept on a file name: those of the files written (any other dot-part, e.g. of
# "John.Doe.dcm" or a UID, is part of the name and pseudonymised with it).
KEPT_EXTENSIONS = {".dcm", ".dicom", ".dic", ".ima", ".img", ".txt", ".hea", ".dat", ".mat"}
# A name that is a UID (three or more numeric components) gets a UID pseudonym.
UID_NAME = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*)){2,}")
_GLOB_CHARS = set("*?[]{}")


def _extension(name: str) -> str:
    """The known extensions ending ``name`` (all of a chain such as ``.dat.dcm``)."""
    suffix = ""
    while True:
        stem, dot, ext = name[: len(name) - len(suffix)].rpartition(".")
        if not dot or not stem or f".{ext.lower()}" not in KEPT_EXTENSIONS:
            return suffix
        suffix = f".{ext}{suffix}"


def pseudonymous_name(key: bytes, name: str, *, is_file: bool) -> str:
    """A name -> the keyed pseudonym of its stem (a UID's for a UID), extensions kept: the
    value a DICOM header holding the stem as an ID or UID gets (medmm.cohort.deid_dicom)."""
    suffix = _extension(name) if is_file else ""
    stem = name[: len(name) - len(suffix)]
    return (pseudonym_uid(stem, key) if UID_NAME.fullmatch(stem) else pseudonym(stem, key)) + suffix


def pseudonymous_path(key: bytes, rel: Path, keep: frozenset[str] = frozenset()) -> Path:
    """Each path component -> its pseudonymous name, except the layout names in ``keep``."""
    last = len(rel.parts) - 1
    return Path(*(part if part in keep else pseudonymous_name(key, part, is_file=i == last)
                  for i, part in enumerate(rel.parts)))


def layout_names(spec_path: Path) -> frozenset[str]:
    """The literal (wildcard-free) folder and file names of a cohort spec's file patterns."""
    spec = load_cohort_spec(spec_path)
    return frozenset(part for rule in spec.files for part in rule.pattern.split("/")
                     if part and part not in (".", "..") and not _GLOB_CHARS & set(part))


def check_layout_names(keep: Iterable[str], names: set[str], ids: set[str], where: Path | None) -> None:
    """Refuse a kept name that holds an identifier or a name word of the cohort's headers
    (the message does not repeat it: it is an identifier)."""
    words = {w.lower() for n in names for w in re.split(r"[\W_^]+", n) if len(w) >= 3}
    id_values = {i.lower() for i in ids if len(i) >= 3}
    for name in keep:
        low = name.lower()
        if any(i in low for i in id_values) or words & set(re.split(r"[\W_]+", low)):
            raise MedmmInputError(where, "a literal folder or file name of the spec's patterns holds a patient's "
                                         "name or ID found in the DICOM headers; write a wildcard there")


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


def deidentify_tree(src: Path, dst: Path, key: bytes, *, allow_burned_in: bool = False,
                    spec: Path | None = None) -> dict:
    """``spec``: the cohort spec the output is for; its patterns' literal names are kept."""
    src, dst = src.resolve(), dst.resolve()
    if dst == src or src in dst.parents:
        raise MedmmInputError(dst, "the output folder must lie outside the input folder")
    keep = layout_names(spec) if spec is not None else frozenset()
    files = list(_walk(src))
    dicom = [p for p in files if looks_like_dicom(p)]
    dicom_set = set(dicom)
    reports = [p for p in files if p not in dicom_set and p.suffix.lower() in REPORT_SUFFIXES]
    headers = [p for p in files if p not in dicom_set and p.suffix == ".hea"]
    names, ids = collect_identifiers(dicom)
    check_layout_names(keep, names, ids, spec)
    deid = DicomDeidentifier(key, allow_burned_in=allow_burned_in)
    scrubber = ReportScrubber(names, ids)
    dst.mkdir(parents=True, exist_ok=True)
    summary = Counter()
    refused: list[Path] = []
    with open(dst / AUDIT_NAME, "w", encoding="utf-8") as audit:
        for path in dicom:
            out = pseudonymous_path(key, path.relative_to(src), keep)
            try:
                _, _, problem = dicom_header(path)
                if problem:  # a cut file is not passed on as if whole
                    raise Unreadable("incomplete", problem)
                ds = pydicom.dcmread(path, force=True)
                if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
                    summary["dicomdir_left_out"] += 1
                    continue
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
            out = pseudonymous_path(key, path.relative_to(src), keep)
            text = path.read_text(encoding="utf-8", errors="replace")
            clean, counts = scrubber.scrub(text)
            (dst / out).parent.mkdir(parents=True, exist_ok=True)
            (dst / out).write_text(clean, encoding="utf-8")
            summary["reports_written"] += 1
            audit.write(json.dumps({"file": out.as_posix(), "kind": "report", "status": "written",
                                    "actions": {f"scrubbed:{k}": v for k, v in sorted(counts.items())}}) + "\n")
        consumed = set()
        for path in headers:
            out = pseudonymous_path(key, path.relative_to(src), keep)
            try:
                text = path.read_text(encoding="ascii", errors="strict")
                names = signal_files(text)
                new_names = {n: pseudonymous_path(key, (path.parent / n).relative_to(src), keep).name for n in names}
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


def run(src: Path, out: Path, key: bytes, *, allow_burned_in: bool = False, spec: Path | None = None) -> DeidOutcome:
    """De-identify ``src`` into ``out`` (for the cohort spec ``spec``, when given); the
    refused files are named on stderr."""
    if not src.is_dir():
        raise MedmmInputError(src, "the input (--in) is not a folder")
    result = deidentify_tree(src, out, key, allow_burned_in=allow_burned_in, spec=spec)
    if result["refused"]:
        # The operator's own input paths, on the operator's console only (never in the audit log).
        print(f"{len(result['refused'])} file(s) not written (burned-in annotation or unreadable):", file=sys.stderr)
        for path in result["refused"]:
            print(f"  {path.relative_to(src.resolve()) if path.is_absolute() else path}", file=sys.stderr)
    return DeidOutcome(out, result["summary"], result["refused"])
