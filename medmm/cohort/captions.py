"""Report-like text from labels, for classification datasets that ship labels and no reports
(CheXpert's 14 observations, organ labels of CT / MR slices, tissue classes of pathology
tiles): each labelled class becomes one sentence, positive, negated or uncertain, so that
image-text pretraining and the report labeler read it as they read a report (the
label-to-caption idea of UniMed-CLIP, Khattak et al. 2024).

Each imaging modality has its own :class:`CaptionStyle`: the sentence templates a radiologist
or pathologist would use for it, and a short opening that names the image ("Axial CT slice.")
so that one image-text model trained on several modalities reads which one it sees. Zero-shot
prompts (:func:`class_prompts`) come from the same templates.

The templates are chosen per item from a hash of its key, so captions vary across the cohort
yet the same item always gets the same text (ingest stays reproducible).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medmm.cohort.scan import cell_text

NO_FINDING_COLUMN = "no finding"


@dataclass(frozen=True)
class CaptionStyle:
    """Sentence templates of one imaging modality ({finding} / {Finding}: the class name).

    ``single_label`` styles describe one class per item (a tissue tile is of one tissue
    class): negative labels add no sentence, and zero-shot compares the classes' prompts
    with one another instead of each class's positive and negative prompt."""

    openings: tuple[str, ...]
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    uncertain: tuple[str, ...]
    single_label: bool = False
    no_finding: str | None = None  # the sentence of a positive "No Finding" column


# An organ in an axial slice reads the same in CT and MR: positive, negative, uncertain.
_ORGAN_IN_SLICE = (
    ("The {finding} is visible.", "This slice shows the {finding}.", "The {finding} is in view."),
    ("The {finding} is not in this slice.", "No {finding} in view.", "The {finding} is not visible."),
    ("The {finding} may be partly in view.", "Possibly the edge of the {finding}.",
     "The {finding} cannot be excluded at this level."),
)

CAPTION_STYLES: dict[str, CaptionStyle] = {
    # No opening: CheXpert captions read as the findings section of a chest radiograph report.
    "chest_xray": CaptionStyle(
        openings=("",),
        positive=("{Finding}.", "There is {finding}.", "Findings consistent with {finding}."),
        negative=("No {finding}.", "No evidence of {finding}.", "{Finding} is not seen."),
        uncertain=("Possible {finding}.", "{Finding} cannot be excluded.", "Findings may represent {finding}."),
        no_finding="No acute cardiopulmonary abnormality."),
    "ct": CaptionStyle(("Axial CT slice.", "Computed tomography, axial image.", "CT of the abdomen, one axial slice."),
                       *_ORGAN_IN_SLICE),
    "mr": CaptionStyle(("Axial MR slice.", "Magnetic resonance image, axial plane.",
                        "MRI of the abdomen, one axial slice."), *_ORGAN_IN_SLICE),
    "pathology": CaptionStyle(
        openings=("H&E stained histology tile.", "Haematoxylin and eosin tissue patch.",
                  "A histopathology image, H&E."),
        positive=("The tile shows {finding}.", "Predominantly {finding}.", "{Finding} fills the field."),
        negative=("No {finding}.",),
        uncertain=("Possibly {finding}.",),
        single_label=True),
}


def caption_style(name: str) -> CaptionStyle:
    try:
        return CAPTION_STYLES[name]
    except KeyError:
        raise ValueError(f"unknown caption style {name!r}; known: {', '.join(CAPTION_STYLES)}") from None


def parse_label(value) -> int | None:
    """1, 0 or -1 from a label cell; None for blank / not mentioned; ValueError otherwise."""
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


def _sentence(template: str, column: str) -> str:
    finding = column.strip().lower().replace("_", " ")
    return template.format(finding=finding, Finding=finding[:1].upper() + finding[1:])


def caption_from_labels(labels: Mapping[str, object], key: str, style: str = "chest_xray") -> str:
    """The report text of one labelled item: the style's opening, then a sentence per class
    column with a label, in the columns' order. A positive 'No Finding' column reads the
    style's no-finding sentence; its negative or uncertain value adds nothing. Raises
    ValueError for a label other than 1, 0, -1 or blank, or an unknown style."""
    chosen = caption_style(style)
    opening = _pick(chosen.openings, key, "\x00opening")
    sentences = [opening] if opening else []
    for column, value in labels.items():
        label = parse_label(value)
        if label is None:
            continue
        if column.strip().lower() == NO_FINDING_COLUMN:
            if label == 1 and chosen.no_finding:
                sentences.append(chosen.no_finding)
            continue
        if label == 0 and chosen.single_label:
            continue
        templates = chosen.positive if label == 1 else chosen.negative if label == 0 else chosen.uncertain
        sentences.append(_sentence(_pick(templates, key, column), column))
    return " ".join(sentences)


def class_prompts(column: str, style: str = "chest_xray") -> tuple[list[str], list[str]]:
    """Zero-shot prompts of one class: every opening with every positive template, and the
    same with every negative template (the negatives of a single-label style are unused)."""
    chosen = caption_style(style)

    def prompts(templates: Sequence[str]) -> list[str]:
        return [" ".join(p for p in (opening, _sentence(t, column)) if p)
                for opening in chosen.openings for t in templates]

    return prompts(chosen.positive), prompts(chosen.negative)


# The chest X-ray templates under short names (the caption tests read them).
POSITIVE = CAPTION_STYLES["chest_xray"].positive
NEGATIVE = CAPTION_STYLES["chest_xray"].negative
UNCERTAIN = CAPTION_STYLES["chest_xray"].uncertain
