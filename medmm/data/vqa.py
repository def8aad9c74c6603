"""Closed visual questions generated from each study's findings (the report labeler's).

Per study: "Is there <finding>?" for every finding, "Is there a left / right pleural
effusion?" (yes when the effusion is on that side or bilateral; not asked when the report gives no
side), and "What is
abnormal?", answered by the set of positive findings ("nothing" when none). Answers are
one vocabulary, scored as multi-label (binary cross-entropy) as PTUnifier does for VQA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medmm.io.findings import FINDINGS
from medmm.io.labeler import label_report

PHRASES = {
    "cardiomegaly": "an enlarged heart",
    "pleural_effusion": "a pleural effusion",
    "edema": "pulmonary edema",
    "pneumothorax": "a pneumothorax",
    "atelectasis": "atelectasis",
    "consolidation": "a consolidation",
    "nodule": "a nodule or granuloma",
    "support_devices": "a support device",
    "emphysema": "emphysema",
}
ANSWERS: tuple[str, ...] = ("no", "yes", *FINDINGS, "nothing")
ABNORMAL_QUESTION = "What is abnormal?"


@dataclass(frozen=True)
class Question:
    study: int  # row of the decoded cohort
    text: str
    kind: str  # "closed" or "abnormal"
    target: tuple[int, ...]  # indices into ANSWERS that are right


def study_questions(study: int, labels: np.ndarray, effusion_side: str | None) -> list[Question]:
    qs = []
    for j, finding in enumerate(FINDINGS):
        qs.append(Question(study, f"Is there {PHRASES[finding]}?", "closed", (1 if labels[j] else 0,)))
    effusion = bool(labels[FINDINGS.index("pleural_effusion")])
    for side in ("left", "right"):
        if effusion and effusion_side is None:
            continue  # the report does not say which side: no answer to check against
        yes = effusion and effusion_side in (side, "bilateral")
        qs.append(Question(study, f"Is there a {side} pleural effusion?", "closed", (1 if yes else 0,)))
    positive = tuple(ANSWERS.index(f) for j, f in enumerate(FINDINGS) if labels[j])
    qs.append(Question(study, ABNORMAL_QUESTION, "abnormal", positive or (ANSWERS.index("nothing"),)))
    return qs


def effusion_sides(report_texts) -> list[str | None]:
    return [label_report(str(t)).effusion_side for t in report_texts]


def target_matrix(questions: list[Question]) -> np.ndarray:
    out = np.zeros((len(questions), len(ANSWERS)), dtype=np.float32)
    for i, q in enumerate(questions):
        out[i, list(q.target)] = 1.0
    return out
