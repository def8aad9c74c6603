"""What one file is, for cohort ingest: its modality under the spec's file rules, its
patient / study / series, its acquisition time and its content hash.

Runs in worker processes, one batch of files per call; returns small tuples (no
per-file objects outlive the batch). DICOM is recognised by content (the 'DICM'
preamble, or a dataset that parses without one), never by extension, and so are JPEG /
PNG. A claimed file is checked for completeness without decoding it: a DICOM file's pixel
data (or compressed frames) must all be in the file, a JPEG / PNG must end with its end
marker, a WFDB signal file must hold the samples its header declares.
"""

from __future__ import annotations

import math
import re
import resource
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.uid import UID

from medmm.cohort.manifest import file_sha256
from medmm.io.dicom import METADATA_KEYS, starts_like_a_dataset
from medmm.io.errors import MedmmInputError
from medmm.io.guard import BoundedReader
from medmm.io.raster import check_raster, raster_format

# One scanned file. Identifiers come in three kinds, merged later by precedence (ingest):
# ``patient_id`` / ``study_id`` / ``series_id`` from the rule's ``ids`` groups, and
# ``header_patient`` / ``study_uid`` / ``series_uid`` / ``accession`` from the DICOM header
# (or ``ids`` groups of those names); ``instance`` is the file's key for a mapping table
# (the ``instance`` group, else its name without extension). ``problem`` ("<reason>:
# <detail>") is set when the file matched a rule but could not be read; ``excluded``
# ("not selected: <Tag>=<value>" or "not claimed: <why>") when no rule took it, and then
# ``rule`` is -1.
RECORD_FIELDS = ("path", "size", "mtime_ns", "rule", "modality", "patient_id", "study_id", "series_id",
                 "header_patient", "study_uid", "series_uid", "accession", "instance", "time", "sha256", "problem",
                 "excluded")

_DICOM_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "StudyDate", "StudyTime",
               "AcquisitionDateTime", "SeriesDate", "SeriesTime", "SOPClassUID", "Modality",
               # the image geometry, to check the pixel data is complete
               "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation"]
_PIXEL_TAGS = {(0x7FE0, 0x0010): "PixelData", (0x7FE0, 0x0008): "FloatPixelData",
               (0x7FE0, 0x0009): "DoubleFloatPixelData"}
# explicit-VR value representations with a 4-byte length (after 2 reserved bytes)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
# bytes per sample of the WFDB storage formats (signal file size check)
_WFDB_BYTES = {"8": 1, "16": 2, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3, "24": 3,
               "32": 4}


class Unreadable(Exception):
    """A file a rule claimed but that cannot be used; ``reason`` is its category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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
    select: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def from_spec(cls, index: int, rule) -> "CompiledRule":
        modality = rule.modality if isinstance(rule.modality, str) else tuple(
            (re.compile(k), v) for k, v in rule.modality.items())
        select = tuple((k, frozenset(v.strip().lower() for v in values)) for k, values in rule.accepted().items())
        return cls(index, rule.format, glob_to_regex(rule.pattern), modality,
                   re.compile(rule.ids) if rule.ids else None, select)

    def modality_of(self, rel: str) -> str | None:
        if isinstance(self.modality, str):
            return self.modality
        return next((m for rx, m in self.modality if rx.search(rel)), None)

    def rejection(self, ds) -> str | None:
        """``"<keyword>=<value>"`` of the first selected tag whose value the rule does not
        accept (None: selected)."""
        for keyword, accepted in self.select:
            values = header_values(ds, keyword)
            if not any(v.lower() in accepted for v in values):
                return f"{keyword}={shown_value(keyword, values[0] if values else '')}"
        return None


def strip_ext(rel: str) -> str:
    """A relative path without its extension ('.dcm', '.nii.gz'), the key by which a table
    lists a file; a name whose last dot starts no extension (a DICOM UID '1.2.840.5') is
    kept whole."""
    for ext in (".nii.gz", ".tar.gz"):
        if rel.endswith(ext):
            return rel[: -len(ext)]
    return _EXTENSION.sub("", rel)


_EXTENSION = re.compile(r"(?<=[^/])\.[A-Za-z][A-Za-z0-9]{0,5}\Z")


def candidate_rules(rules: list[CompiledRule], rel: str) -> list[int]:
    """Indexes of the rules whose glob matches (cheap: no file is opened)."""
    return [r.index for r in rules if r.pattern.match(rel)]


def header_values(ds, keyword: str) -> list[str]:
    """A header element's value(s) as text (a SOP class also by its name); [] when absent."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    if value is None or value == "":
        return []
    values = [str(v).strip() for v in (value if isinstance(value, (MultiValue, list, tuple)) else [value])]
    if keyword.endswith("UID"):
        values += [UID(v).name for v in values if UID(v).name != v]
    return values


def cell_text(value) -> str | None:
    """A table cell as stripped text; None for an empty or missing one (pandas reads a
    blank cell of a number column as NaN)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if not text or text.lower() == "nan" else text


def shown_value(keyword: str, value: str) -> str:
    """A tag or column value as the ingest summary may print it: technical DICOM fields
    (medmm.io.dicom.METADATA_KEYS, a SOP class by its name) and short words without
    digits; anything else, which may identify someone, is withheld."""
    if not value:
        return "(none)"
    if keyword.endswith("UID"):
        name = UID(value).name
        return name if name != value else "(unnamed UID)"
    if keyword in METADATA_KEYS or (len(value) <= 24 and not any(c.isdigit() for c in value)):
        return value[:40]
    return "(value withheld)"


# ----------------------------------------------------------------------------- content


def looks_like_dicom(path: Path) -> bool:
    """'DICM' at byte 128, or (no preamble) a dataset starting at group 0002 / 0008 that
    pydicom parses with a SOP class or study UID in it."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if not starts_like_a_dataset(head):
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


def dicom_header(path: Path, select: tuple[str, ...] = ()) -> tuple[dict, object, str | None]:
    """The ids and time of a DICOM file, its header dataset (for ``select``) and, when the
    file is incomplete, why (``truncated: ...`` or ``pixel data shorter than the image:
    ...``). Reads the header up to the pixel data and checks that data's length against
    the file (for compressed frames, each fragment's), never decoding it."""
    import pydicom

    size = path.stat().st_size
    with BoundedReader(path) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(fh, force=True, stop_before_pixels=True,
                                 specific_tags=list(dict.fromkeys([*_DICOM_TAGS, *select])))
        except (OSError, EOFError, struct.error) as exc:
            if fh.tell() < size:
                raise
            raise Unreadable("truncated", f"the file ends inside an element ({type(exc).__name__})") from exc
        problem = _pixel_data_problem(fh, ds, size)
    acq = str(ds.get("AcquisitionDateTime", "") or "")
    time = _dicom_time(acq[:8], acq[8:14]) if acq else None
    time = time or _dicom_time(ds.get("StudyDate"), ds.get("StudyTime")) or _dicom_time(
        ds.get("SeriesDate"), ds.get("SeriesTime"))
    found = {"header_patient": _text(ds.get("PatientID")), "study_uid": _text(ds.get("StudyInstanceUID")),
             "series_uid": _text(ds.get("SeriesInstanceUID")), "accession": _text(ds.get("AccessionNumber")),
             "time": time}
    return found, ds, problem


def _text(value) -> str | None:
    return (str(value).strip() or None) if value is not None else None


def _encoding(ds) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the dataset's body."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_transfer_syntax:
        return syntax.is_implicit_VR, syntax.is_little_endian
    implicit, little = getattr(ds, "original_encoding", (None, None))
    return bool(implicit) if implicit is not None else False, True if little is None else bool(little)


def _pixel_data_problem(fh, ds, size: int) -> str | None:
    """Why the bytes from ``fh``'s position (where the header read stopped, at the pixel
    data element if any) do not complete the file; None when they do."""
    pos = fh.tell()
    if pos > size:  # an element before the pixel data already runs past the end
        return f"truncated: an element declares more bytes than the file holds ({size} bytes)"
    fh.seek(pos)
    head = fh.read(12)
    implicit, little = _encoding(ds)
    order = "<" if little else ">"
    tag = struct.unpack(order + "HH", head[:4]) if len(head) >= 8 else None
    if tag not in _PIXEL_TAGS:
        if ds.get("Rows") is not None or "Image Storage" in UID(str(ds.get("SOPClassUID", "") or "")).name:
            return "truncated: the file ends before its pixel data"
        return None  # not an image (a waveform, a report): nothing after the header to check
    if implicit:
        length, start = struct.unpack(order + "I", head[4:8])[0], pos + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return "truncated: the file ends inside the pixel data header"
        length, start = struct.unpack(order + "I", head[8:12])[0], pos + 12
    else:
        length, start = struct.unpack(order + "H", head[6:8])[0], pos + 8
    if length == 0xFFFFFFFF:  # encapsulated (compressed) frames: walk the items to the delimiter
        return _encapsulated_problem(fh, start, size)
    if start + length > size:
        return f"truncated: the pixel data declares {length} bytes, {max(size - start, 0)} are in the file"
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = max(int(ds.get("NumberOfFrames") or 1), 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = {"PixelData": int(ds.get("BitsAllocated") or 0), "FloatPixelData": 32,
                "DoubleFloatPixelData": 64}[_PIXEL_TAGS[tag]]
    except (AttributeError, TypeError, ValueError):
        return None  # the reader reports an incomplete image header when it decodes
    if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
        samples = 2
    expected = (rows * cols * frames * samples * bits + 7) // 8
    if length < expected:
        return f"pixel data shorter than the image: {length} bytes, {rows}x{cols}x{frames}x{samples}x{bits} bits " \
               f"need {expected}"
    return None


def _encapsulated_problem(fh, pos: int, size: int) -> str | None:
    """Encapsulated pixel data: items (FFFE,E000) each with its length, then the sequence
    delimiter (FFFE,E0DD); reads 8 bytes per fragment."""
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return "truncated: the compressed pixel data ends before its sequence delimiter"
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return None
        if (group, element) != (0xFFFE, 0xE000):
            return f"truncated: the compressed pixel data holds an unexpected tag ({group:04X},{element:04X})"
        pos += 8 + length
        if pos > size:
            return f"truncated: a compressed frame declares {length} bytes, {max(size - pos + length, 0)} are in " \
                   "the file"


def wfdb_header(path: Path) -> dict:
    """The record's start time; raises Unreadable when its signal file is missing or shorter
    than the header's samples need (a single ``<record>.dat`` holding every signal)."""
    import wfdb

    header = wfdb.rdheader(str(path.with_suffix("")))
    dat = path.with_suffix(".dat")
    names = set(header.file_name or [])
    if names == {dat.name}:
        if not dat.exists():
            raise Unreadable("missing signal file", f"the header names {dat.name}, which is not beside it")
        formats = set(header.fmt or [])
        if len(formats) == 1 and header.sig_len and not any(header.byte_offset or []):
            per_sample = _WFDB_BYTES.get(str(next(iter(formats))))
            if per_sample is not None:
                need = math.ceil(header.sig_len * header.n_sig * per_sample)
                have = dat.stat().st_size
                if have < need:
                    raise Unreadable("truncated", f"the signal file holds {have} bytes, {header.n_sig} signals x "
                                                  f"{header.sig_len} samples need {need}")
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


def _record(rel: str, size: int, mtime_ns: int, rule: int = -1, modality: str | None = None,
            found: dict | None = None, sha: str | None = None, problem: str | None = None,
            excluded: str | None = None) -> tuple:
    found = found or {}
    return (rel, size, mtime_ns, rule, modality, found.get("patient"), found.get("study"), found.get("series"),
            found.get("header_patient"), found.get("study_uid"), found.get("series_uid"), found.get("accession"),
            found.get("instance"), found.get("time"), sha, problem, excluded)


def inspect_file(root: Path, rel: str, size: int, mtime_ns: int, candidates: list[int]) -> tuple:
    """One record (RECORD_FIELDS) for a file that one or more rules' globs matched: the
    first rule that takes it (its content, ``select`` and modality routing), or why none
    did."""
    path = root / rel
    not_selected = not_claimed = None  # the first reason a rule passed the file on
    for index in candidates:
        rule = _RULES[index]
        modality = rule.modality_of(rel)
        if modality is None:
            not_claimed = not_claimed or "no modality for its path"
            continue
        try:
            found: dict = {"instance": strip_ext(rel).rsplit("/", 1)[-1]}
            extra: tuple[Path, ...] = ()
            problem = None
            if rule.format == "dicom":
                if not looks_like_dicom(path):
                    not_claimed = not_claimed or "not DICOM by content"
                    continue
                header, ds, problem = dicom_header(path, tuple(k for k, _ in rule.select))
                rejected = rule.rejection(ds)
                if rejected is not None:
                    not_selected = not_selected or rejected
                    continue
                found.update(header)
            elif rule.format == "image":
                if raster_format(path) is None:
                    not_claimed = not_claimed or "not JPEG / PNG by content"
                    continue
                check_raster(path)
            elif rule.format == "wfdb":
                dat = path.with_suffix(".dat")
                extra = (dat,) if dat.exists() else ()
                found.update(wfdb_header(path))
            if problem is not None:
                return _record(rel, size, mtime_ns, index, modality, found, problem=problem)
            if rule.ids is not None:
                m = rule.ids.search(rel)
                if m is None:
                    return _record(rel, size, mtime_ns, index, modality, problem="ids pattern does not match: "
                                   f"the path does not match the rule's ids pattern {rule.ids.pattern!r}")
                found.update({key: value for key, value in m.groupdict().items() if value})
            return _record(rel, size, mtime_ns, index, modality, found, sha=file_sha256(path, extra))
        except Unreadable as exc:
            return _record(rel, size, mtime_ns, index, modality, problem=str(exc))
        except MedmmInputError as exc:  # a reader's verdict: "truncated: ..." or what it found
            problem = exc.problem if exc.problem.startswith("truncated:") else f"cannot parse: {exc.problem}"
            return _record(rel, size, mtime_ns, index, modality, problem=problem[:300])
        except Exception as exc:  # noqa: BLE001 - a bad file is recorded and counted, never fatal
            return _record(rel, size, mtime_ns, index, modality,
                           problem=f"cannot parse: {type(exc).__name__}: {str(exc)[:200]}")
    if not_selected is not None:
        return _record(rel, size, mtime_ns, excluded=f"not selected: {not_selected}")
    return _record(rel, size, mtime_ns, excluded=f"not claimed: {not_claimed or 'no rule took it'}")


def inspect_batch(root: str, batch: list[tuple[str, int, int, list[int]]]) -> tuple[list[tuple], int]:
    """Records for a batch of files, and this worker's peak resident memory (kB)."""
    base = Path(root)
    records = [inspect_file(base, rel, size, mtime, cands) for rel, size, mtime, cands in batch]
    return records, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
