"""Radiology report text: read a report, split it into sections, label it.

A report is plain UTF-8 text with optional section headings at the start of a line
(``FINDINGS:``, ``IMPRESSION:``, ``INDICATION:``, ``COMPARISON:``, ``HISTORY:``,
``TECHNIQUE:``; case-insensitive). The text medmm trains on is FINDINGS + IMPRESSION
(what the radiologist saw), not the indication or history (why the study was ordered,
which would leak the clinical question into the image-text pairing).

:func:`format_report` writes the same format, so that
``read_report(format_report(sections)).sections == sections``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.labeler import Labels, label_report

__all__ = [
    "REPORT_SECTIONS",
    "TEXT_SECTION",
    "Report",
    "format_report",
    "read_report",
    "split_sections",
]

# Canonical section names, in the order format_report writes unknown-order input.
REPORT_SECTIONS: tuple[str, ...] = ("INDICATION", "HISTORY", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION")
# Text before the first heading (or a report with no headings at all).
TEXT_SECTION = "TEXT"
# Clinical text used for training, in this order.
_CLINICAL = ("FINDINGS", "IMPRESSION")
# Common variants of the headings, mapped to the canonical name.
_ALIASES: dict[str, str] = {
    "FINDING": "FINDINGS",
    "IMPRESSIONS": "IMPRESSION",
    "CONCLUSION": "IMPRESSION",
    "CONCLUSIONS": "IMPRESSION",
    "CLINICAL HISTORY": "HISTORY",
    "CLINICAL INDICATION": "INDICATION",
    "INDICATIONS": "INDICATION",
    "REASON FOR EXAM": "INDICATION",
    "COMPARISONS": "COMPARISON",
}
_NAMES = sorted({*REPORT_SECTIONS, *_ALIASES}, key=len, reverse=True)  # longest first
_NAME_ALT = "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in _NAMES)
# A heading at the start of a line (any case) ...
_LINE_HEADING = re.compile(rf"^[ \t]*(?P<name>{_NAME_ALT})[ \t]*:", re.IGNORECASE | re.MULTILINE)
# ... or, in upper case only, after a sentence end on the same line ("... clear. IMPRESSION: ...").
_INLINE_HEADING = re.compile(rf"(?<=[.!?])[ \t]+(?P<name>{_NAME_ALT})[ \t]*:")
_MAX_BYTES = 10 * 1024 * 1024  # a text report is kilobytes; bigger is the wrong file
_PATHLIKE = re.compile(r"^[^\s]+\.(?:txt|text|rtf|md|xml|json)$", re.IGNORECASE)


@dataclass(frozen=True)
class Report:
    """One report: its sections, the clinical text used for training and its labels.

    ``sections`` maps a canonical section name (or ``"TEXT"``) to its stripped text;
    empty sections are absent. ``text`` is FINDINGS + IMPRESSION (blank line between),
    or all the section text when the report has neither. ``labels`` come from
    :func:`medmm.io.labeler.label_report` applied to ``text``. ``path`` is the file the
    report was read from, or None for in-memory text.
    """

    sections: dict[str, str] = field(hash=False)
    text: str
    labels: Labels
    path: Path | None = None


def _canonical(name: str) -> str:
    key = " ".join(name.upper().split())
    return _ALIASES.get(key, key)


def split_sections(text: str) -> dict[str, str]:
    """Split report text into ``{section name: stripped text}``.

    Text before the first heading goes to ``"TEXT"``; a section given twice is joined
    with a blank line; empty sections are dropped.
    """
    marks = [(m.start("name"), m.end(), _canonical(m.group("name"))) for m in _LINE_HEADING.finditer(text)]
    marks += [(m.start("name"), m.end(), _canonical(m.group("name"))) for m in _INLINE_HEADING.finditer(text)]
    marks.sort()
    sections: dict[str, str] = {}

    def add(name: str, body: str) -> None:
        body = body.strip()
        if body:
            sections[name] = f"{sections[name]}\n\n{body}" if name in sections else body

    add(TEXT_SECTION, text[: marks[0][0]] if marks else text)
    for i, (_, body_start, name) in enumerate(marks):
        body_end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        add(name, text[body_start:body_end])
    return sections


def _clinical_text(sections: Mapping[str, str]) -> str:
    parts = [sections[k] for k in _CLINICAL if k in sections]
    if not parts:  # no FINDINGS / IMPRESSION: use everything there is
        parts = list(sections.values())
    return "\n\n".join(parts)


def _read_text_file(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > _MAX_BYTES:
            raise CorruptFileError(path, f"{size} bytes is too large for a text report (limit {_MAX_BYTES})")
        data = path.read_bytes()
    except OSError as e:
        raise MedmmInputError(path, f"cannot read report: {e.strerror or e}") from e
    if b"\x00" in data:
        raise CorruptFileError(path, "binary data (NUL bytes) in a text report")
    try:
        return data.decode("utf-8-sig")  # tolerate a UTF-8 byte-order mark
    except UnicodeDecodeError as e:
        raise CorruptFileError(path, f"not valid UTF-8 text (byte {e.start}: {e.reason})") from e


def _as_existing_file(source: str) -> Path | None:
    """The path ``source`` names if it is an existing file, else None (it is text)."""
    if "\n" in source or len(source) > 4096:
        return None
    try:
        p = Path(source)
        return p if p.is_file() else None
    except (OSError, ValueError):  # name too long, NUL byte, ...: not a path
        return None


def read_report(source: str | Path) -> Report:
    """Read a report from a file or from text.

    ``source`` is a :class:`~pathlib.Path` (must be a readable UTF-8 file), or a str:
    the name of an existing file, else the report text itself. A single-word str ending
    in ``.txt`` (or ``.md``, ``.xml``, ...) that does not exist raises instead of being
    labelled as text, since it is almost surely a mistyped path.

    Raises :class:`MedmmInputError` (missing / unreadable file),
    :class:`CorruptFileError` (not UTF-8 text) or :class:`InconsistentDataError`
    (empty report).
    """
    path: Path | None
    if isinstance(source, Path):
        path = source
        if not path.is_file():
            raise MedmmInputError(path, "report file does not exist" if not path.exists() else "not a file")
        raw = _read_text_file(path)
    elif isinstance(source, str):
        path = _as_existing_file(source)
        if path is not None:
            raw = _read_text_file(path)
        elif _PATHLIKE.match(source.strip()):
            raise MedmmInputError(source.strip(), "report file does not exist")
        else:
            raw = source
    else:
        raise TypeError(f"read_report expects a str or Path, got {type(source).__name__}")

    return parse_report(raw, path)


def parse_report(raw: str, path: Path | None = None) -> Report:
    """A report from its text (``path``: where it was read, for the error): sections, the
    clinical text and its labels. Raises :class:`InconsistentDataError` for an empty report."""
    sections = split_sections(raw)
    text = _clinical_text(sections)
    if not text.strip():
        raise InconsistentDataError(path, "empty report")
    return Report(sections=sections, text=text, labels=label_report(text), path=path)


def _defuse_headings(value: str) -> str:
    """Rewrite headings inside a section's text ("... IMPRESSION: ...") as "IMPRESSION -"
    so that they read back as plain text of that section."""

    def repl(m: re.Match[str]) -> str:
        return m.group(0)[: m.start("name") - m.start(0)] + m.group("name") + " -"

    value = _LINE_HEADING.sub(repl, value)
    return _INLINE_HEADING.sub(repl, value)


def format_report(sections: Mapping[str, str], *, strict: bool = True) -> str:
    """Write sections as report text: ``"FINDINGS: ...\n\nIMPRESSION: ..."``.

    Keys are section names (any case; aliases such as ``"Impressions"`` are
    canonicalised) or ``"TEXT"`` (written first, without a heading). Values are
    stripped; empty ones are omitted, as :func:`read_report` omits them. Raises
    ValueError for an unknown or repeated section name. A value that contains a
    heading of its own (12 of the 3,955 IU reports have one, e.g. an INDICATION that
    starts with "INDICATION:") would not read back as one section: with ``strict``
    that raises ValueError; otherwise the inner heading's colon becomes " -"
    ("IMPRESSION: x" -> "IMPRESSION - x") and the round trip holds for the rewritten text.
    """
    body: dict[str, str] = {}
    for key, value in sections.items():
        name = TEXT_SECTION if key.strip().upper() == TEXT_SECTION else _canonical(key)
        if name != TEXT_SECTION and name not in REPORT_SECTIONS:
            raise ValueError(f"unknown report section {key!r}; known: {REPORT_SECTIONS + (TEXT_SECTION,)}")
        if name in body:
            raise ValueError(f"section {name} given twice (as {key!r})")
        value = str(value).strip()
        if _LINE_HEADING.search(value) or _INLINE_HEADING.search(value):
            if strict:
                raise ValueError(
                    f"section {name} text contains a section heading and would not round-trip "
                    f"(pass strict=False to rewrite it): {value[:80]!r}"
                )
            value = _defuse_headings(value)
        if value:
            body[name] = value
    parts = [body.pop(TEXT_SECTION)] if TEXT_SECTION in body else []
    parts += [f"{name}: {value}" for name, value in body.items()]
    return "\n\n".join(parts) + ("\n" if parts else "")
