"""Report-like text from finding labels, for classification datasets that ship labels and no
reports (CheXpert's 14 observations): each labelled finding becomes one sentence, positive,
negated or uncertain, so that image-text pretraining and the report labeler read it as they
read a radiologist's report (the label-to-caption idea of UniMed-CLIP, Khattak et al. 2024).

The sentence template is chosen per item from a hash of its key, so captions vary across the
cohort yet the same item always gets the same text (ingest stays reproducible).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from medmm.cohort.scan import cell_text

POSITIVE = ("{Finding}.", "There is {finding}.", "Findings consistent with {finding}.")
NEGATIVE = ("No {finding}.", "No evidence of {finding}.", "{Finding} is not seen.")
UNCERTAIN = ("Possible {finding}.", "{Finding} cannot be excluded.", "Findings may represent {finding}.")
NO_FINDING_COLUMN = "no finding"


def _label(value) -> int | None:
    """1, 0 or -1 from a label cell; None for blank / not mentioned."""
    text = cell_text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"label {text!r}: expected 1, 0, -1 or blank") from None
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"label {text!r}: expected 1, 0, -1 or blank")
    return int(number)


def _pick(templates: Sequence[str], key: str, column: str) -> str:
    digest = hashlib.sha256(f"{key}\x00{column}".encode()).digest()
    return templates[digest[0] % len(templates)]


def caption_from_labels(labels: Mapping[str, object], key: str) -> str:
    """The report text of one labelled item: a sentence per finding column with a label, in
    the columns' order. A positive 'No Finding' column reads 'No acute cardiopulmonary
    abnormality.'; its negative or uncertain value adds nothing. Raises ValueError for a
    label other than 1, 0, -1 or blank."""
    sentences = []
    for column, value in labels.items():
        label = _label(value)
        if label is None:
            continue
        if column.strip().lower() == NO_FINDING_COLUMN:
            if label == 1:
                sentences.append("No acute cardiopulmonary abnormality.")
            continue
        finding = column.strip().lower()
        templates = POSITIVE if label == 1 else NEGATIVE if label == 0 else UNCERTAIN
        template = _pick(templates, key, column)
        sentences.append(template.format(finding=finding, Finding=finding[:1].upper() + finding[1:]))
    return " ".join(sentences)
