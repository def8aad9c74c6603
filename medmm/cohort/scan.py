"""What one file is, for cohort ingest: its modality under the spec's file rules, its
patient / study / series, its acquisition time and its content hash.

Runs in worker processes, one batch of files per call; returns small tuples (no
per-file objects outlive the batch). DICOM is recognised by content (the 'DICM'
preamble, or a dataset that parses without one), never by extension.
"""

from __future__ import annotations

import re
import resource
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from medmm.cohort.manifest import file_sha256

# One scanned file. ``problem`` is set (and the ids may be None) when the file matched a
# rule but could not be read; ``rule`` is -1 when no rule accepted it (e.g. a *.txt that a
# DICOM-by-content rule looked at and refused).
RECORD_FIELDS = ("path", "size", "mtime_ns", "rule", "modality", "patient_id", "study_id", "series_id", "time",
                 "sha256", "problem")

_DICOM_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate", "StudyTime",
               "AcquisitionDateTime", "SeriesDate", "SeriesTime", "SOPClassUID", "Modality"]


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated relative paths: ``*`` and ``?`` stay within one folder,
    ``**/`` spans any number of folders (including none) and a bare ``**`` matches all."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class CompiledRule:
    index: int
    format: str
    pattern: re.Pattern[str]
    modality: str | tuple[tuple[re.Pattern[str], str], ...]
    ids: re.Pattern[str] | None

    @classmethod
    def from_spec(cls, index: int, rule) -> "CompiledRule":
        modality = rule.modality if isinstance(rule.modality, str) else tuple(
            (re.compile(k), v) for k, v in rule.modality.items())
        return cls(index, rule.format, glob_to_regex(rule.pattern), modality,
                   re.compile(rule.ids) if rule.ids else None)

    def modality_of(self, rel: str) -> str | None:
        if isinstance(self.modality, str):
            return self.modality
        return next((m for rx, m in self.modality if rx.search(rel)), None)


def candidate_rules(rules: list[CompiledRule], rel: str) -> list[int]:
    """Indexes of the rules whose glob matches (cheap: no file is opened)."""
    return [r.index for r in rules if r.pattern.match(rel)]


# ----------------------------------------------------------------------------- content


def looks_like_dicom(path: Path) -> bool:
    """'DICM' at byte 128, or (no preamble) a dataset starting at group 0002 / 0008 that
    pydicom parses with a SOP class or study UID in it."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    # A first element with an explicit VR (two capitals) or a short implicit length, or it is
    # some other binary (a WFDB .dat of small samples also starts with 02 00 / 08 00).
    if not (head[4:6].isalpha() and head[4:6].isupper()) and int.from_bytes(head[4:8], "little") > 256:
        return False
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
            uid = str(ds.get("SOPClassUID", "") or ds.get("StudyInstanceUID", "") or "")
        return bool(re.fullmatch(r"[0-9]+(\.[0-9]+)+", uid))
    except Exception:  # noqa: BLE001 - anything unparseable is simply not DICOM
        return False


def _dicom_time(date: str | None, time: str | None) -> str | None:
    if not date:
        return None
    clock = (str(time or "000000").split(".")[0] + "000000")[:6]
    try:
        return datetime.strptime(str(date)[:8] + clock, "%Y%m%d%H%M%S").isoformat()
    except ValueError:
        return None


def dicom_header(path: Path) -> dict:
    import pydicom

    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
    acq = str(ds.get("AcquisitionDateTime", "") or "")
    time = _dicom_time(acq[:8], acq[8:14]) if acq else None
    time = time or _dicom_time(ds.get("StudyDate"), ds.get("StudyTime")) or _dicom_time(
        ds.get("SeriesDate"), ds.get("SeriesTime"))
    return {"patient": str(ds.get("PatientID", "") or "") or None,
            "study": str(ds.get("StudyInstanceUID", "") or "") or None,
            "series": str(ds.get("SeriesInstanceUID", "") or "") or None, "time": time}


def wfdb_header(path: Path) -> dict:
    import wfdb

    header = wfdb.rdheader(str(path.with_suffix("")))
    time = None
    if header.base_date is not None:
        clock = header.base_time or datetime.min.time()
        time = datetime.combine(header.base_date, clock).replace(microsecond=0).isoformat()
    return {"time": time}


# ----------------------------------------------------------------------------- one file

_RULES: list[CompiledRule] = []


def init_worker(rules: list[CompiledRule]) -> None:
    global _RULES
    _RULES = rules


def inspect_file(root: Path, rel: str, size: int, mtime_ns: int, candidates: list[int]) -> tuple:
    """One record (RECORD_FIELDS) for a file that one or more rules' globs matched."""
    path = root / rel
    for index in candidates:
        rule = _RULES[index]
        try:
            if rule.format == "dicom" and not looks_like_dicom(path):
                continue
            modality = rule.modality_of(rel)
            if modality is None:
                continue
            found = {"patient": None, "study": None, "series": None, "time": None}
            extra: tuple[Path, ...] = ()
            if rule.format == "dicom":
                found.update(dicom_header(path))
            elif rule.format == "wfdb":
                dat = path.with_suffix(".dat")
                extra = (dat,) if dat.exists() else ()
                found.update(wfdb_header(path))
            if rule.ids is not None:
                m = rule.ids.search(rel)
                if m is None:
                    return (rel, size, mtime_ns, index, modality, None, None, None, None, None,
                            f"path does not match the rule's ids pattern {rule.ids.pattern!r}")
                for key in ("patient", "study", "series"):
                    if key in m.groupdict() and m.group(key):
                        found[key] = m.group(key)
            sha = file_sha256(path, extra)
            return (rel, size, mtime_ns, index, modality, found["patient"], found["study"], found["series"],
                    found["time"], sha, None)
        except Exception as exc:  # noqa: BLE001 - a bad file is recorded and counted, never fatal
            return (rel, size, mtime_ns, index, None, None, None, None, None, None,
                    f"{type(exc).__name__}: {str(exc)[:200]}")
    return (rel, size, mtime_ns, -1, None, None, None, None, None, None, None)


def inspect_batch(root: str, batch: list[tuple[str, int, int, list[int]]]) -> tuple[list[tuple], int]:
    """Records for a batch of files, and this worker's peak resident memory (kB)."""
    base = Path(root)
    records = [inspect_file(base, rel, size, mtime, cands) for rel, size, mtime, cands in batch]
    return records, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
