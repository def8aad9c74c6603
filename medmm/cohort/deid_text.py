"""Report text scrubbing: names, dates, record numbers, phone numbers, e-mail addresses.

Why rules and not a model: the maintained scrubbers were tried offline on this stack.
``scrubadub`` 2.0.1 finds phone numbers and e-mails out of the box, but its name and
date-of-birth detectors need NLTK / TextBlob corpora downloaded at run time and it has
no record-number detector; ``presidio-analyzer`` needs a spaCy model that no package
registry here ships; ``philter-lite`` 0.6.0 (the UCSF Philter rules) calls NLTK's POS
tagger, whose data also downloads. Nothing may download at run time, so names, dates and
record numbers are found by the documented rules below, and phone numbers by Google's
``phonenumbers`` (libphonenumber) plus a pattern for local formats. Rules over-scrub
rather than under-scrub: any capitalised words after a name label go, any run of six or
more digits goes. The names and IDs of the cohort's own patients, taken from the DICOM
headers by the caller, are scrubbed wherever they appear, without any label.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_NAME_WORD = r"[A-Z][A-Za-z'\-]+"

# Order matters: e-mails and phones before dates before bare digit runs.
RULES: list[tuple[str, re.Pattern[str], int]] = [
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), 0),
    ("PHONE", re.compile(r"(?:\+?1[\s.-]?)?\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}\b(?:\s*(?:x|ext\.?)\s*\d{1,5})?",
                         re.IGNORECASE), 0),
    ("DATE", re.compile(rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.IGNORECASE), 0),
    ("DATE", re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}\b", re.IGNORECASE), 0),
    ("DATE", re.compile(rf"\b{_MONTH}\.?\s+\d{{4}}\b", re.IGNORECASE), 0),
    ("DATE", re.compile(r"\b\d{4}[/.-]\d{1,2}[/.-]\d{1,2}\b"), 0),
    ("DATE", re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b"), 0),
    ("DATE", re.compile(r"\b(?:19|20|21)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"), 0),
    ("MRN", re.compile(r"\b(?:MRN|MR\s*#|MR\s*No\.?|Medical\s+Record(?:\s+(?:Number|No\.?|#))?|Record\s*(?:Number|No\.?|#)|"
                       r"Patient\s*ID|Accession(?:\s*(?:Number|No\.?|#))?|Acc\.?\s*#|ID)\s*[:#]?\s*([A-Z0-9][A-Z0-9\-]{3,})",
                       re.IGNORECASE), 1),
    ("MRN", re.compile(r"\b\d{6,}\b"), 0),
    ("NAME", re.compile(rf"\b(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Prof)\.?\s+({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})"), 1),
    ("NAME", re.compile(r"\b(?i:Patient(?:\s+name)?|Name|Pt|Attending|Referring(?:\s+physician)?|Physician|Radiologist|"
                        r"(?:Electronically\s+)?signed\s+by|Dictated\s+by|Read\s+by|Reported\s+by|Transcribed\s+by)"
                        rf"\s*[:\-]?\s*({_NAME_WORD}(?:[\s,^]+{_NAME_WORD}){{0,3}})"), 1),
    ("NAME", re.compile(r"\b[A-Za-z'\-]+\^[A-Za-z'\-^]+"), 0),  # DICOM person-name form LAST^FIRST
]


def _known_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    words = sorted({w for v in values for w in re.split(r"[\s^,]+", str(v)) if len(w) >= 2}, key=len, reverse=True)
    if not words:
        return None
    return re.compile(r"(?<![\w])(?:" + "|".join(re.escape(w) for w in words) + r")(?![\w])", re.IGNORECASE)


def _phone_spans(text: str) -> list[tuple[int, int]]:
    import phonenumbers

    return [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, "US")]


class ReportScrubber:
    """``scrub(text) -> (clean text, Counter of categories)``; tokens like ``[NAME]``."""

    def __init__(self, known_names: Iterable[str] = (), known_ids: Iterable[str] = ()):
        self.known_names = _known_pattern(known_names)
        ids = sorted({str(v) for v in known_ids if len(str(v)) >= 3}, key=len, reverse=True)
        self.known_ids = re.compile("|".join(re.escape(v) for v in ids), re.IGNORECASE) if ids else None

    def scrub(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()

        def sub(label: str, pattern: re.Pattern[str], group: int, s: str) -> str:
            def repl(m: re.Match[str]) -> str:
                counts[label] += 1
                if group == 0:
                    return f"[{label}]"
                return m.group(0)[: m.start(group) - m.start(0)] + f"[{label}]" + m.group(0)[m.end(group) - m.start(0):]
            return pattern.sub(repl, s)

        if self.known_ids is not None:
            text = sub("MRN", self.known_ids, 0, text)
        spans = _phone_spans(text)
        for start, end in reversed(spans):
            text = text[:start] + "[PHONE]" + text[end:]
        if spans:
            counts["PHONE"] += len(spans)
        for label, pattern, group in RULES:
            text = sub(label, pattern, group, text)
        if self.known_names is not None:
            text = sub("NAME", self.known_names, 0, text)
        return text, counts
