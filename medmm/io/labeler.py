"""A rule-based chest X-ray report labeler with negation and uncertainty handling.

In the spirit of NegEx (Chapman et al., 2001) and the CheXpert labeler (Irvin et al.,
2019), but with medmm's own, smaller rule set, tuned and validated on the Indiana
University reports against the NLM indexers' MeSH terms (see
``tests/io/test_labeler.py``). Three stages:

1. **mentions**: each finding in :data:`~medmm.io.findings.FINDINGS` has regexes that
   find its mentions in a sentence (with exclusions such as *pericardial* effusion or
   *subcutaneous* emphysema);
2. **negation**: a mention is negated by a pre-trigger ("no", "not", "without",
   "negative for", "free of", "clear of", "resolution of", "evaluation for", ...)
   earlier in the same clause, or by a post-trigger right after it ("... is not seen",
   "... has resolved"). A clause ends at a sentence end, ";", ":", "(", or words such
   as "but", "however", "although", "which", ", stable ...". So "No pleural effusion or
   pneumothorax" negates both, while "No pneumothorax but a small left effusion" and
   "No pneumothorax, stable cardiomegaly" negate only the first. Pseudo-triggers ("no
   change in", "partially resolved", "cannot be excluded") are masked first;
3. **uncertainty**: hedges before a mention ("possible", "probable", "may represent",
   "suggesting", "concerning for", ...) or about it right after ("... is suspected",
   "... cannot be excluded") mark it uncertain. Whether uncertain mentions count is
   decided per finding (:data:`UNCERTAIN_POSITIVE`): only pneumothorax by default.

Negation is kept in-house rather than taken from negspacy (NegEx as a spaCy component):
on the same 13,546 mentions of the IU reports the two agree on 97.6%, and against 200
hand-labelled mentions (``tests/io/data/negation_gold.jsonl``, stratified on where they
disagree) negation accuracy over all mentions is estimated at 0.999 here and 0.977 for
negspacy 1.1.0 (``en_clinical`` termset; 95% interval of the difference +2.0 to +2.4
points). negspacy misses lists after "clear of" ("lungs are clear of focal airspace
disease, pneumothorax, or pleural effusion"), resolved or removed findings and devices,
and "within limits of normal" after the mention, and reads "A versus B" as a negation of
B. ``benchmarks/negation_vs_negspacy.py`` reproduces the figures.

Decisions (documented because they change the labels), each checked against the MeSH
terms of the 3,927 IU reports with text:

* Uncertain mentions are negative except for pneumothorax. Measured F1 with uncertain
  as positive / as negative: cardiomegaly .986/.986, effusion .957/.965, edema
  .861/.901, pneumothorax .906/.885, atelectasis .911/.976, consolidation .948/.956,
  nodule .953/.979, support devices .819/.821, emphysema .973/.987: the indexers record
  what was seen ("Opacity") rather than the hedged reading ("may represent
  atelectasis"). Pneumothorax keeps hedged mentions (a can't-miss finding; +1 report).
* "A versus B" is not a hedge: the indexers record both ("atelectasis versus scarring"
  -> Atelectasis + Cicatrix); counting it as uncertain cost atelectasis 0.04 F1.
* "vascular congestion" / "pulmonary congestion" / vascular prominence or engorgement,
  "interstitial edema" and CHF count as ``edema`` (as in CheXpert); MeSH "Pulmonary
  Congestion" and "Heart Failure" are likewise mapped to edema when validating.
* "heart size at the upper limits of normal" is normal; "borderline cardiomegaly" /
  "borderline heart size" / "borderline enlarged" count as cardiomegaly (MeSH indexes
  them as "Cardiomegaly/borderline").
* Blunting of a costophrenic angle / sulcus counts as a pleural effusion (MeSH
  "Costophrenic Angle/blunted" is mapped likewise).
* ``consolidation`` is any parenchymal lung opacity: consolidation, airspace disease /
  opacity, infiltrate, pneumonia and plain "opacity" in the lung (MeSH uses "Opacity"
  that way; restricting both sides to consolidation proper agreed far worse, F1 ~0.72).
  Nodular / round / calcified opacities and opacities over bone or soft tissue are not
  consolidation. ``nodule`` covers nodules (incl. nodular opacities), granulomas
  (calcified or not), granulomatous disease and masses.
* ``support_devices`` covers implanted and inserted devices (pacemaker / ICD / leads /
  generator, sternotomy wires, central venous catheters / PICC / ports, tubes,
  prosthetic valves, closure devices, stimulators), as CheXpert's "Support Devices"
  does; *external* monitor leads and surgical clips are not. A redacted device ("right
  chest XXXX tip in the SVC") is recognised by its tip position.
* "XXXX" marks a redacted word; it is kept as an ordinary word so that windows and
  clauses still line up ("There are no XXXX of a pleural effusion" is negated).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from medmm.io.findings import EFFUSION_SIDES, FINDINGS

__all__ = ["UNCERTAIN_POSITIVE", "Labels", "Mention", "find_mentions", "label_report", "split_sentences"]


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Labels:
    """Binary labels of one report over :data:`FINDINGS`.

    ``effusion_side`` is one of :data:`EFFUSION_SIDES` when ``pleural_effusion`` is
    positive and the report states a side (both sides -> ``"bilateral"``), else None.
    """

    findings: dict[str, bool] = field(hash=False)
    effusion_side: str | None = None

    def __post_init__(self) -> None:
        missing = set(FINDINGS) - set(self.findings)
        extra = set(self.findings) - set(FINDINGS)
        if missing or extra:
            raise ValueError(f"Labels.findings must have exactly FINDINGS keys; missing {sorted(missing)}, extra {sorted(extra)}")
        if self.effusion_side is not None:
            if self.effusion_side not in EFFUSION_SIDES:
                raise ValueError(f"effusion_side must be one of {EFFUSION_SIDES} or None, got {self.effusion_side!r}")
            if not self.findings["pleural_effusion"]:
                raise ValueError("effusion_side given but pleural_effusion is negative")
        # A fresh dict in FINDINGS order with plain bools (not a read-only proxy: Labels
        # must pickle, e.g. into DataLoader workers). Treat it as read-only.
        object.__setattr__(self, "findings", {k: bool(self.findings[k]) for k in FINDINGS})

    @classmethod
    def from_positive(cls, positive: Iterable[str], effusion_side: str | None = None) -> Labels:
        """Labels with the given findings positive and the rest negative."""
        pos = set(positive)
        unknown = pos - set(FINDINGS)
        if unknown:
            raise ValueError(f"unknown findings {sorted(unknown)}; known: {FINDINGS}")
        return cls({k: k in pos for k in FINDINGS}, effusion_side)

    @property
    def no_finding(self) -> bool:
        """True when no finding is positive."""
        return not any(self.findings.values())

    @property
    def positive(self) -> tuple[str, ...]:
        """The positive findings, in FINDINGS order."""
        return tuple(k for k in FINDINGS if self.findings[k])

    def as_vector(self) -> np.ndarray:
        """0/1 int8 vector in FINDINGS order."""
        return np.fromiter((self.findings[k] for k in FINDINGS), dtype=np.int8, count=len(FINDINGS))


@dataclass(frozen=True)
class Mention:
    """One mention of a finding in a report, with its negation / uncertainty status."""

    finding: str
    sentence: int  # index into split_sentences(text)
    start: int  # character span of the key phrase within that sentence
    end: int
    phrase: str
    negated: bool
    uncertain: bool
    side: str | None = None  # "left" / "right" / "bilateral" (effusions only)


# --------------------------------------------------------------------------- rules

_F = re.IGNORECASE

# Words that may sit between a subject ("heart") and its predicate ("enlarged").
_GAP = r"(?:[\w/-]+\s+){0,5}?"  # words only: the phrase may not cross a comma

# Each pattern's named group "k" (if any) is the key phrase whose position is used for
# negation scope; otherwise the whole match is.
_MENTIONS: dict[str, list[str]] = {
    "cardiomegaly": [
        r"cardiomegaly",
        r"\bcardiac\s+enlargement",
        r"\b(?:enlarge(?:d|ment\s+of\s+the)|large|borderline(?:\s+enlarged)?)\s+(?:size\s+of\s+the\s+)?"
        r"(?:heart|cardiac\s+(?:silhouette|shadow|contour)|cardiomediastinal\s+silhouette)",
        r"\bborderline\s+(?:heart|cardiac)\s+size",
        # "heart size is mildly enlarged", "the cardiac silhouette remains enlarged"
        r"\b(?:heart|cardiac|cardiomediastinal)\b\s+" + _GAP + r"(?P<k>enlarged|enlargement|borderline(?:\s+(?:in\s+)?size)?)\b",
        # "the heart is large", "heart size XXXX large", "heart size remains slightly large"
        r"\b(?:heart|cardiac\s+silhouette)(?:\s+size)?\s+(?:is\s+|remains\s+|appears\s+)?(?:again\s+)?(?:\w+ly\s+|xxxx\s+)?(?P<k>large|larger)\b",
        r"\bincrease(?:d|s)?\s+(?:in\s+)?(?:the\s+)?(?:heart|cardiac)\s+size\b",
    ],
    "pleural_effusion": [
        r"\beffusions?\b",
        r"\bpleural\s+fluid\b",
        r"\bhydropneumothora(?:x|ces)\b",
        r"\bblunt(?:ed|ing)?\b\W+" + _GAP + r"(?P<k>costophrenic|cp\s+angle|sulc[iu]s?)",
        r"\b(?P<k>costophrenic|cp)\b\W+" + _GAP + r"blunt(?:ed|ing)?\b",
    ],
    "edema": [
        r"(?<!soft\stissue\s)\bedema(?:tous)?\b",
        r"\b(?:vascular|venous|pulmonary)\s+congestion\b",
        r"\bcongestive\s+(?:heart\s+)?failure\b",
        r"\bchf\b",
        r"\bfluid\s+overload\b",
        # vascular congestion described by its appearance (MeSH: "Pulmonary Congestion")
        r"\bvascular\w*\s+(?:\w+\s+)?(?:prominence|engorgement|redistribution|cephalization)",
        r"\b(?:prominen\w+|engorge\w*|increased|cephalization|redistribution)\s+(?:of\s+(?:the\s+)?)?(?:central\s+)?"
        r"(?:pulmonary\s+|lung\s+)?(?:vascular\w*|vasculature|vessels)",
        r"\bprominent\s+(?:central\s+)?pulmonary\s+xxxx\b",
        r"\b(?:vascularity|vasculature|vessels|pulmonary\s+xxxx)\s+(?:is|are|appears?|remains?)\s+(?:\w+\s+)?"
        r"(?P<k>prominent|engorged|congested)",
        r"\bkerley\b",
    ],
    "pneumothorax": [
        r"pneumothora(?:x|ces)",  # also hydro- / hemopneumothorax
        r"\bpleural\s+(?:air|gas)\b",
        r"\bair\s+collection\b(?=\s+(?:[\w-]+\s+){0,8}?pleural\s+space)",
    ],
    "atelectasis": [
        r"\batelecta(?:sis|ses|tic)\b",
        r"\b(?:lobar|lobe|lung)\s+collapse\b",
        r"\bcollapse\s+of\s+(?:[\w-]+\s+){0,6}?(?:lobes?|lung)\b",
        r"\bcollapsed\s+(?:[\w-]+\s+){0,3}?(?:lobes?|lung)\b",
    ],
    "consolidation": [
        r"\bconsolidat(?:ion|ions|ive|ed)\b",
        r"\bair\s*-?\s*space\s+(?:\w+\s+)?(?:disease|opacit(?:y|ies)|process|filling|consolidation)\b",
        r"\binfiltrat(?:e|es|ion|ive|s)\b",
        r"\b(?:broncho)?pneumonias?\b",
        r"\bpneumonitis\b",
        r"\bopacit(?:y|ies)\b",
        r"\bopacification\b",
    ],
    "nodule": [
        r"\b(?:fibro|reticulo|micro)?-?nodul(?:e|es|ar|arity)\b",
        r"\bgranulomas?\b",
        r"\bgranulomata\b",
        r"\bgranulomatous\s+(?:disease|changes?|process|infection|sequela|calcifications?)",
        r"\bmass(?:es)?\b(?!\s+effect)",
        r"\bmass-?like\b",
    ],
    "support_devices": [
        r"\bpace\s*(?:maker|r)s?\b",
        r"\b(?:a?icd|defibrillators?)\b",
        r"\b(?:pacing|cardiac|transvenous|pacer|pacemaker|icd|defibrillator)\s+(?:\w+\s+)?(?:leads?|wires?)\b",
        # implanted leads are described by where they end; external ones are masked below
        r"\bleads?\b(?=\s+(?:\w+\s+){0,3}?(?:terminat|project|overl(?:y|ie)|in\s+the\s+right|tips?\b))",
        r"\b(?:\d|one|two|three|dual|distal)\s*-?\s*(?:\w+\s+)?leads?\b",
        r"\b(?:cardiac|electronic|implanted|closure)\s+(?:\w+\s+)?device\b",
        r"\b(?:occluder|stimulator|generator)\b",
        r"\bsternotomy\b",
        r"\bsternal\s+(?:wires?|sutures?)\b",
        r"\bcatheters?\b",
        r"\bpicc\b",
        r"\b(?:central|venous|subclavian|jugular|ij|picc|arterial)\s+(?:\w+\s+)?lines?\b",
        r"\blines\s+and\s+tubes\b",
        r"\bport\s*-?\s*a\s*-?\s*cath\b|\bportacath\b|\bxxxx-a-xxxx\b",
        r"\bport\b(?=\s+(?:\w+\s+)?(?:with|catheter|tip|reservoir|terminat))",
        # a redacted device name ("right chest XXXX tip in the SVC") is recognised by its tip
        r"\btips?\b(?=\W+(?:[\w-]+\W+){0,7}?(?:svc|superior\s+vena|cavoatrial|cava|caval|atri(?:um|al)|ventricle|carina)\b)",
        r"\b(?:endotracheal|tracheostomy|nasogastric|orogastric|feeding|chest|enteric|gastrostomy)\s+tubes?\b",
        r"\btracheostomy\b",
        r"\b(?:et|ng|og)\s+tube\b",
        r"\bshunt\s+(?:tubing|catheter)\b",
        r"\bivc\s+(?:filter|xxxx)\b",
        r"\bdual\s*-\s*(?:chamber|lead|xxxx)\b",
        r"\b(?:chest|subclavian|jugular)\s+xxxx\b(?=\s+(?:[\w-]+\s+){0,5}?(?:svc|tip|terminat|satisfactory|position|cavoatrial|caval|atri))",
        r"\b(?:prosthetic|mechanical|bioprosthetic)\s+(?:\w+\s+)?valves?\b",
        r"\bvalve\s+(?:replacement|prosthesis)\b",
        r"\bloop\s+recorder\b",
    ],
    "emphysema": [
        r"(?<!subcutaneous\s)(?<!mediastinal\s)(?<!surgical\s)\bemphysema(?:tous)?\b",
        r"\bcopd\b",
        r"\bchronic\s+obstructive\b",
        r"\bhyper\s*-?(?:inflat|expan|aerat)\w*",
        r"\bover\s*-?(?:inflat|expan)\w*",
        r"\bbullae\b|\bbullous\b",
    ],
}

# Phrases that look like mentions but are not (removed before matching).
_NOT_MENTIONS: dict[str, list[str]] = {
    "support_devices": [
        r"\b(?:external|monitor(?:ing)?|ecg|ekg|telemetry|overlying)\s+(?:[\w-]+\s+){0,2}?(?:leads?|wires?)\b",
        r"\bleads?\s+(?:\w+\s+){0,2}?(?:external|overlying|overlie)\b",
    ],
    "nodule": [r"\blymph\s+nodes?\b"],
    "pleural_effusion": [r"\b(?:pericardial|joint|knee|elbow|shoulder|hip|ankle)\s+effusions?\b"],
    # opacities that are not parenchymal: nodules, calcifications, soft tissue / bone
    "consolidation": [
        r"\b(?:nodular|round(?:ed)?|calcified|calcific|soft\s+tissue|mediastinal|paratracheal|breast|nipple)\s+(?:[\w-]+\s+)?opacit(?:y|ies)\b",
        r"\bopacit(?:y|ies)\s+(?:[\w-]+\s+){0,4}?(?:overl(?:y|ie)\w*|projecting\s+over|over)\s+(?:the\s+)?(?:[\w-]+\s+){0,3}?"
        r"(?:ribs?|spine|vertebra\w*|clavicles?|breasts?|soft\s+tissues?|humer\w+|scapula\w*)\b",
    ],
}

_PRE_NEG = [
    r"\bno\b",
    r"\bnot\b",
    r"\bnor\b",
    r"\bwithout\b",
    r"\bnegative\s+for\b",
    r"\bfree\s+of\b",
    r"\bclear\s+of\b",
    r"\bclear\b(?=\s+(?:\w+\s+)?(?:air\s*space|consolidation|infiltrate))",  # "lungs are clear airspace disease"
    r"\babsence\s+of\b",
    r"\b(?:resolution|resolving|clearing|removal|disappearance)\s+of\b",
    r"\bresolved\b",
    r"\brule\s+out\b",
    # "evaluation for pneumothorax is limited": a question, not a finding
    r"\b(?:evaluat\w+|assess\w*|search|look(?:ing)?|screen\w*)\s+for\b",
    r"\bto\s+(?:exclude|rule\s+out)\b",
    r"\bdetect(?:ing|ion\s+of)\b",  # "CT is more sensitive in detecting small nodules"
    r"\bnon\s*-?(?=enlarged)",
]
# Right after a mention (within _POST_WINDOW words, no comma between): "... is not seen".
# Past a comma the trigger speaks of the next phrase ("Heart size is enlarged, pulmonary
# vascularity within normal limits") or of a prior study ("nodule, not seen on prior").
_POST_NEG = [
    r"\b(?:is|are|was|were|has\s+been|have\s+been)\s+(?:\w+\s+)?not\b",
    r"\bnot\s+(?:\w+\s+)?(?:seen|identified|visualized|present|evident|demonstrated|appreciated|noted|detected|enlarged)\b",
    r"\bno\s+longer\b",
    r"\b(?:is|are)\s+(?:\w+\s+)?(?:absent|excluded)\b",
    r"\bwithin\s+(?:the\s+)?(?:normal\s+)?limits\b",
    r"\bwithin\s+limits\s+of\s+normal\b",
]
_POST_WINDOW = 5
# "... and costophrenic blunting in the left lower lobe have cleared": anywhere later in the clause.
_POST_NEG_CLAUSE = [
    r"\b(?:has|have|had)\s+(?:\w+\s+){0,2}?(?:resolved|cleared|been\s+removed)\b",
    r"\bresolved\b",
]
# Look like negations, are not: masked before triggers are searched.
_PSEUDO_NEG = [
    r"\bno\s+(?:\w+\s+){0,2}?(?:change|changes|increase|worsening|progression)\b",
    r"\bnot\s+(?:\w+\s+)?(?:changed|increased|worsened|progressed)\b",
    r"\bwithout\s+(?:\w+\s+){0,2}?(?:change|changes)\b",
    r"\b(?:can\s*not|can't|could\s+not|not)\s+(?:be\s+)?(?:excluded|exclude|ruled\s+out|rule\s+out)\b",
    r"\bnot\s+only\b",
    # still present: "partially resolved effusion", "incomplete resolution of the infiltrate"
    r"\b(?:partial(?:ly)?|partly|nearly|almost|incomplete(?:ly)?|not\s+(?:yet\s+|completely\s+|fully\s+)?)\s*"
    r"(?:resolved|resolution|resolving|cleared|clearing)\b(?:\s+of\b)?",
    r"\bgram\s+negative\b",
]
# Hedges before a mention, anywhere earlier in its clause ("possible left effusion",
# "opacity suggesting pneumonia"). "A versus B" is not a hedge here: the IU indexers
# record both A and B (e.g. "atelectasis versus scarring" -> Atelectasis + Cicatrix), and
# counting it as uncertain lowered agreement for atelectasis from 0.97 to 0.93 F1.
_UNCERTAIN_PRE = [
    r"\bmay\b",
    r"\bmight\b",
    r"\bcould\b",
    r"\bpossibl[ey]\b",
    r"\bprobabl[ey]\b",
    r"\blikely\b",
    r"\bsuspect(?:ed)?\b",
    r"\bsuspicious\b",
    r"\bsuggest(?:s|ed|ive|ing)?\b",
    r"\bquestion(?:able)?\b",
    r"\bconcern(?:ing)?\s+for\b",
    r"\bconsider(?:ed|ation)?\b",
    r"\bdifferential\b",
    r"\bequivocal\b",
    r"\bindeterminate\b",
    r"\bcannot\s+(?:be\s+)?(?:excluded|exclude|ruled\s+out|rule\s+out)\b",
]
# Hedges right after a mention (within _POST_WINDOW words) that are about the mention
# itself: "effusion is suspected", "a small effusion may be present", "pneumothorax
# cannot be excluded". In "X may represent Y" / "X suggesting Y" / "X, likely Y" only Y
# is uncertain: the opacity or blunting X was seen.
_UNCERTAIN_POST = [
    r"\b(?:is|are|was|were)\s+(?:\w+\s+)?(?:likely|possible|probable|questionable|suspected|uncertain)\b",
    r"\b(?:may|might|could)\s+(?:also\s+)?(?:be\s+)?(?:present|seen|noted|identified|developing)\b",
    r"\b(?:can\s*not|can't|could\s+not|not)\s+(?:be\s+)?(?:\w+\s+)?(?:excluded|exclude|ruled\s+out|rule\s+out)\b",
    r"\?",
]
# Clause boundaries: negation / uncertainty never crosses them.
_TERMINATORS = [
    r"[;:]",
    r"\bbut\b",
    r"\bhowever\b",
    r"\balthough\b",
    r"\bthough\b",
    r"\bwhereas\b",
    r"\bexcept\b",
    r"\bwhich\b",
    r"\bapart\s+from\b",
    r"\baside\s+from\b",
    r"\bother\s+than\b",
    r"\byet\b",
    r"[()]",
    r"\bwith\b(?=\s+(?:a\s+|an\s+)?(?:small|large|moderate|mild|minimal|bilateral|left|right|stable|persistent)\b)",
    r",?\s+(?:and\s+)?there\s+(?:is|are)\b(?!\s+no\b)",
    # "No pneumothorax, stable cardiomegaly": a comma then a word that starts a new, positive phrase
    r",\s*(?=(?:stable|unchanged|persistent|again|redemonstrat\w*|interval|otherwise|status)\b)",
]


def _compile(pats: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in pats), _F)


_MENTION_RES: dict[str, list[re.Pattern[str]]] = {k: [re.compile(p, _F) for p in v] for k, v in _MENTIONS.items()}
# One alternation per finding: a cheap test that skips findings a sentence cannot mention.
_MENTION_ANY: dict[str, re.Pattern[str]] = {
    k: _compile(p.replace("(?P<k>", "(?:") for p in v) for k, v in _MENTIONS.items()
}
_NOT_MENTION_RES: dict[str, re.Pattern[str]] = {k: _compile(v) for k, v in _NOT_MENTIONS.items()}
_PRE_NEG_RE = _compile(_PRE_NEG)
_POST_NEG_RE = _compile(_POST_NEG)
_POST_NEG_CLAUSE_RE = _compile(_POST_NEG_CLAUSE)
_PSEUDO_RE = _compile(_PSEUDO_NEG)
_UNCERTAIN_PRE_RE = _compile(_UNCERTAIN_PRE)
_UNCERTAIN_POST_RE = _compile(_UNCERTAIN_POST)
_TERM_RE = _compile(_TERMINATORS)
_WORD_RE = re.compile(r"[\w'-]+")
_SIDE_RE = re.compile(
    r"\b(?P<bi>bilateral(?:ly)?|both|bibasilar|bibasal|left\s+(?:greater|more|larger)\s+than\s+right|"
    r"right\s+(?:greater|more|larger)\s+than\s+left)\b|\b(?P<l>left)\b|\b(?P<r>right)\b",
    _F,
)
# Findings whose uncertain mentions count as positive by default, chosen per finding by
# agreement with the IU MeSH terms (numbers in the module docstring).
UNCERTAIN_POSITIVE: frozenset[str] = frozenset({"pneumothorax"})

_LIST_NUMBER = re.compile(r"^\(?\d{1,2}[.)]$")
_SENT_RE = re.compile(r"(?<=[.!?])\s+(?=\S)|\n\s*\n|\n(?=\s*[-*\u2022\d])")

if set(_MENTIONS) != set(FINDINGS):  # pragma: no cover - guards edits to FINDINGS
    raise RuntimeError("medmm.io.labeler: every finding in FINDINGS needs mention rules")


# --------------------------------------------------------------------------- engine


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (on ". " etc., blank lines and list bullets).

    A period inside a number ("1.5 cm") does not split, and a list number ("1. No
    effusion.") stays with its sentence.
    """
    out: list[str] = []
    carry = ""
    for part in _SENT_RE.split(text):
        part = " ".join(part.split())
        if _LIST_NUMBER.match(part):
            carry = f"{carry} {part}".strip()
            continue
        part = f"{carry} {part}".strip()
        carry = ""
        if part.strip(" ."):
            out.append(part)
    if carry.strip(" ."):
        out.append(carry)
    return out


def _spans(regex: re.Pattern[str], s: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in regex.finditer(s)]


def _mask(s: str, spans: Iterable[tuple[int, int]]) -> str:
    # Replace with spaces so positions (and so clause / window arithmetic) are kept.
    chars = list(s)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _n_words(s: str) -> int:
    return len(_WORD_RE.findall(s))


_AFTER_SIDE_RE = re.compile(
    r"^[\s,]*(?:(?:[\w-]+\s+){0,3}?(?:(?:on|at|in)\s+(?:the\s+)?(?P<s1>left|right)\b(?!\s+(?:lung|lobe|base|upper|lower|mid))"
    r"|(?P<bi>bilaterally|on\s+both\s+sides|(?:left|right)\s+(?:greater|more|larger)\s+than\s+(?:right|left))))",
    _F,
)
_PAIR_SIDE_RE = re.compile(r"\b(?:left|right)\s+(?:and|&)\s+(?:[\w-]+\s+)?(?:left|right)\b", _F)
_PLURAL_RE = re.compile(r"(?:effusions|(?:costophrenic|cp)\s+(?:[\w-]+\s+)?(?:angles|sulci|recesses)|sulci)\b", _F)


def _side_of(m: re.Match[str]) -> str:
    return "bilateral" if m.group("bi") else "left" if m.group("l") else "right"


def _effusion_side(s: str, start: int, end: int, lo: int, hi: int) -> str | None:
    """Side of an effusion mention.

    In order: side words in the mention's own noun phrase ("small left pleural
    effusion", "right and XXXX left pleural effusions"); a side phrase right after it
    ("effusion on the left", "effusions, left greater than right", "bilaterally"); the
    only side named in the clause ("left basilar opacity with some effusion"); a plural
    with no side ("pleural effusions", "costophrenic angles") -> bilateral.
    """
    before = s[max(lo, start - 50) : start]
    if _PAIR_SIDE_RE.search(before):
        return "bilateral"
    # Only the last few words before the mention belong to its noun phrase.
    cut = max(before.rfind(","), before.rfind(" and "), before.rfind(" with "), before.rfind(" or "))
    if cut >= 0:
        before = before[cut + 1 :]
    found = {_side_of(m) for m in _SIDE_RE.finditer(before)}
    m_after = _AFTER_SIDE_RE.match(s[end:hi])
    if m_after:
        found.add("bilateral" if m_after.group("bi") else m_after.group("s1").lower())
    if not found:
        # Fall back to the clause, when it names one side only.
        clause = {_side_of(m) for m in _SIDE_RE.finditer(s[lo:hi])}
        if len(clause) == 1:
            found = clause
    if "bilateral" in found or {"left", "right"} <= found:
        return "bilateral"
    if found:
        return found.pop()
    if _PLURAL_RE.match(s[start:hi]):
        return "bilateral"  # plural with no side: both sides
    return None


def _sentence_mentions(s: str, index: int) -> list[Mention]:
    pseudo = _spans(_PSEUDO_RE, s)
    trig_s = _mask(s, pseudo)
    pre = _spans(_PRE_NEG_RE, trig_s)
    post = _spans(_POST_NEG_RE, trig_s)
    post_clause = _spans(_POST_NEG_CLAUSE_RE, trig_s)
    unc_pre = _spans(_UNCERTAIN_PRE_RE, s)
    unc_post = _spans(_UNCERTAIN_POST_RE, s)
    terms = _spans(_TERM_RE, s)

    out: list[Mention] = []
    for finding in FINDINGS:
        if not _MENTION_ANY[finding].search(s):
            continue
        text = s
        if finding in _NOT_MENTION_RES:
            text = _mask(s, _spans(_NOT_MENTION_RES[finding], s))
        taken: list[tuple[int, int]] = []
        for rx in _MENTION_RES[finding]:
            for m in rx.finditer(text):
                a, b = m.span("k") if "k" in rx.groupindex and m.group("k") else m.span()
                if any(a < tb and ta < b for ta, tb in taken):
                    continue  # the same words already matched a stronger pattern
                taken.append((a, b))
                lo = max([e for _, e in terms if e <= a] + [0])
                hi = min([t for t, _ in terms if t >= b] + [len(s)])
                negated = any(lo <= ts and te <= a for ts, te in pre) or any(
                    b <= ts < hi and _n_words(s[b:ts]) <= _POST_WINDOW and "," not in s[b:ts] for ts, _ in post
                ) or any(b <= ts < hi for ts, _ in post_clause)
                uncertain = any(lo <= ts and te <= a for ts, te in unc_pre) or any(
                    b <= ts < hi and _n_words(s[b:ts]) <= _POST_WINDOW for ts, _ in unc_post
                )
                side = _effusion_side(s, a, b, lo, hi) if finding == "pleural_effusion" else None
                out.append(Mention(finding, index, a, b, s[a:b], negated, uncertain, side))
    return out


def find_mentions(text: str) -> list[Mention]:
    """All finding mentions in ``text``, with negation / uncertainty / side decided."""
    out: list[Mention] = []
    for i, sentence in enumerate(split_sentences(text)):
        out.extend(_sentence_mentions(sentence, i))
    return out


def label_report(text: str, *, uncertain_positive: bool | Iterable[str] | None = None) -> Labels:
    """Label report text over :data:`FINDINGS`.

    A finding is positive when at least one mention of it is not negated and, if
    uncertain ("possible", "may represent", ...), the finding counts uncertain mentions
    as positive. ``uncertain_positive``: None (default) uses
    :data:`UNCERTAIN_POSITIVE` (per finding, chosen by agreement with the IU MeSH
    terms); True / False for all findings; or the names of the findings for which
    uncertain mentions count. The effusion side combines the sides of the positive
    effusion mentions (left + right -> ``"bilateral"``).
    """
    if uncertain_positive is None:
        u_pos: frozenset[str] = UNCERTAIN_POSITIVE
    elif isinstance(uncertain_positive, bool):
        u_pos = frozenset(FINDINGS) if uncertain_positive else frozenset()
    else:
        u_pos = frozenset(uncertain_positive)
        if not u_pos <= set(FINDINGS):
            raise ValueError(f"unknown findings {sorted(u_pos - set(FINDINGS))}; known: {FINDINGS}")
    positive: set[str] = set()
    sides: set[str] = set()
    for m in find_mentions(text):
        if m.negated or (m.uncertain and m.finding not in u_pos):
            continue
        positive.add(m.finding)
        if m.finding == "pleural_effusion" and m.side:
            sides.add(m.side)
    side: str | None = None
    if "pleural_effusion" in positive and sides:
        side = "bilateral" if ("bilateral" in sides or {"left", "right"} <= sides) else sides.pop()
    return Labels.from_positive(positive, side)
