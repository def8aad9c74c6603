"""WFDB (ECG) de-identification: the signal files are copied unchanged; the header keeps
its signal specifications but loses the record's start date / time and every comment
line (PTB-XL / MIMIC-style headers put age, sex, dates or free text there), and the
record and its signal files are renamed (names often hold study or patient numbers).
Written against the WFDB header format (physionet.org/physiotools/wag/header-5.htm)."""

from __future__ import annotations

from collections import Counter

from medmm.io.errors import CorruptFileError, InconsistentDataError


def deidentify_header(text: str, new_record: str, new_file_names: dict[str, str],
                      where: str | None = None) -> tuple[str, Counter]:
    """Header text -> de-identified header text; ``new_file_names`` maps each signal file
    name the header references to its new name."""
    counts: Counter = Counter()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    body = []
    for line in lines:
        if line.lstrip().startswith("#"):
            counts["removed:comment"] += 1
        else:
            body.append(line)
    if not body:
        raise CorruptFileError(where, "WFDB header without a record line")
    record = body[0].split()
    if len(record) < 2 or "/" in record[0]:
        raise InconsistentDataError(where, "multi-segment or malformed WFDB record line: not supported by deid")
    if len(record) > 4:
        counts["removed:base_time_date"] += 1
    out = [" ".join([new_record, *record[1:4]])]
    for line in body[1:]:
        parts = line.split()
        if parts[0] not in new_file_names:
            raise InconsistentDataError(where, f"signal file {parts[0]!r} named by the header is missing")
        out.append(" ".join([new_file_names[parts[0]], *parts[1:]]))
    counts["renamed:record"] += 1
    return "\n".join(out) + "\n", counts


def signal_files(text: str) -> list[str]:
    """Signal file names a header references (the first field of each signal line)."""
    body = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return list(dict.fromkeys(parts[0] for parts in body[1:]))
