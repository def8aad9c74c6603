"""Report reading: sections, clinical text, labels, errors, and the format round trip."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.labeler import label_report
from medmm.io.reports import REPORT_SECTIONS, Report, format_report, read_report, split_sections

DEFAULT_WHEEL = "data/cache/torchxrayvision-1.5.7-py3-none-any.whl"

REPORT = """\
INDICATION: Chest pain.

COMPARISON: None.

FINDINGS: The heart is mildly enlarged. There is a small left pleural effusion.
No pneumothorax.

IMPRESSION: Cardiomegaly and small left effusion.
"""


def test_read_text() -> None:
    rep = read_report(REPORT)
    assert rep.path is None
    assert rep.sections == {
        "INDICATION": "Chest pain.",
        "COMPARISON": "None.",
        "FINDINGS": "The heart is mildly enlarged. There is a small left pleural effusion.\nNo pneumothorax.",
        "IMPRESSION": "Cardiomegaly and small left effusion.",
    }
    # training text: findings + impression only (no indication: it would leak the question)
    assert rep.text == rep.sections["FINDINGS"] + "\n\n" + rep.sections["IMPRESSION"]
    assert "Chest pain" not in rep.text
    assert rep.labels == label_report(rep.text)
    assert set(rep.labels.positive) == {"cardiomegaly", "pleural_effusion"}
    assert rep.labels.effusion_side == "left"
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.text = "x"  # type: ignore[misc]


def test_read_file_path_and_str(tmp_path: Path) -> None:
    f = tmp_path / "r1.txt"
    f.write_text(REPORT, encoding="utf-8")
    by_path = read_report(f)
    by_str = read_report(str(f))
    assert by_path == by_str and by_path.path == f
    assert by_path.sections == read_report(REPORT).sections
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + "FINDINGS: Stable cardiomegaly. Caf\u00e9.".encode())
    rep = read_report(bom)
    assert rep.sections == {"FINDINGS": "Stable cardiomegaly. Caf\u00e9."}
    assert rep.labels.positive == ("cardiomegaly",)


def test_headings() -> None:
    # any case at line start, aliases, text before the first heading, inline upper case
    text = "Chest PA and lateral\nfindings : no effusion.\nImpressions: Normal. HISTORY: cough\nClinical history: fever"
    assert split_sections(text) == {
        "TEXT": "Chest PA and lateral",
        "FINDINGS": "no effusion.",
        "IMPRESSION": "Normal.",
        "HISTORY": "cough\n\nfever",  # given twice: joined
    }
    # no headings: everything is TEXT, and TEXT is the clinical text
    rep = read_report("Lungs are clear. No pneumothorax. Heart size normal.")
    assert rep.sections == {"TEXT": "Lungs are clear. No pneumothorax. Heart size normal."}
    assert rep.text == rep.sections["TEXT"] and rep.labels.no_finding
    # "history: " inside a sentence, lower case, is not a heading
    assert split_sections("FINDINGS: Patient history: smoker. Clear lungs.") == {
        "FINDINGS": "Patient history: smoker. Clear lungs."
    }
    # neither FINDINGS nor IMPRESSION: fall back to all the text
    rep = read_report("INDICATION: cough\nTECHNIQUE: PA view")
    assert rep.text == "cough\n\nPA view"


@pytest.mark.parametrize("text", ["", "   \n\t ", "FINDINGS:\n\nIMPRESSION:  \n"])
def test_empty_report(text: str, tmp_path: Path) -> None:
    with pytest.raises(InconsistentDataError, match="empty report"):
        read_report(text)
    f = tmp_path / "empty.txt"
    f.write_text(text)
    with pytest.raises(InconsistentDataError, match=r"empty\.txt: empty report"):
        read_report(f)


def test_bad_files(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("FINDINGS: Epanchement pleural \u00e0 gauche.".encode("latin-1"))
    with pytest.raises(CorruptFileError, match=r"latin1\.txt: not valid UTF-8"):
        read_report(latin1)
    with pytest.raises(CorruptFileError, match="latin1.txt"):
        read_report(str(latin1))
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(CorruptFileError, match="binary"):
        read_report(binary)
    with pytest.raises(MedmmInputError, match=r"missing\.txt: report file does not exist"):
        read_report(tmp_path / "missing.txt")
    with pytest.raises(MedmmInputError, match="does not exist"):
        read_report("reports/study_0001.txt")  # a mistyped path is not report text
    with pytest.raises(MedmmInputError, match="not a file"):
        read_report(tmp_path)
    with pytest.raises(TypeError):
        read_report(b"FINDINGS: x")  # type: ignore[arg-type]


def test_long_text_is_not_taken_for_a_path() -> None:
    text = "FINDINGS: " + "No pleural effusion. " * 500
    assert read_report(text).labels.no_finding
    assert read_report("no\x00pe").sections == {"TEXT": "no\x00pe"}


def test_format_round_trip() -> None:
    sections = {"FINDINGS": "Heart size normal.\nNo effusion.", "IMPRESSION": "No acute disease."}
    text = format_report(sections)
    assert text == "FINDINGS: Heart size normal.\nNo effusion.\n\nIMPRESSION: No acute disease.\n"
    assert read_report(text).sections == sections
    every = {name: f"{name.lower()} text." for name in REPORT_SECTIONS} | {"TEXT": "Preamble."}
    assert read_report(format_report(every)).sections == every
    # names are canonicalised; empty values are omitted both ways
    assert format_report({"findings": " a. ", "Impressions": "b.", "HISTORY": "  "}) == "FINDINGS: a.\n\nIMPRESSION: b.\n"
    assert format_report({}) == ""


def test_format_errors() -> None:
    with pytest.raises(ValueError, match="unknown report section"):
        format_report({"RECOMMENDATION": "CT"})
    with pytest.raises(ValueError, match="twice"):
        format_report({"FINDINGS": "a", "findings": "b"})
    with pytest.raises(ValueError, match="strict=False"):
        format_report({"IMPRESSION": "Cardiomegaly. FINDINGS: enlarged heart."})
    text = format_report({"INDICATION": "INDICATION: PAIN;", "IMPRESSION": "Normal. FINDINGS: clear."}, strict=False)
    assert read_report(text).sections == {"INDICATION": "INDICATION - PAIN;", "IMPRESSION": "Normal. FINDINGS - clear."}


def test_iu_reports_round_trip() -> None:
    """Every real IU report writes and reads back with the same sections and labels."""
    from medmm.demo.iu_reports import load_iu_reports

    path = Path(os.environ.get("MEDMM_IU_REPORTS", DEFAULT_WHEEL))
    if not path.exists():
        pytest.skip(f"IU reports not found at {path}: run `make data-cache` or set MEDMM_IU_REPORTS")
    n = 0
    for r in load_iu_reports(path)[::4]:  # a quarter keeps this fast; the rules are the same
        if not r.sections:
            continue
        text = format_report(r.sections, strict=False)
        rep = read_report(text)
        assert set(rep.sections) == set(r.sections), r.report_id
        if "FINDINGS" in r.sections:
            assert rep.sections["FINDINGS"] == r.sections["FINDINGS"].replace("IMPRESSION:", "IMPRESSION -")
        assert isinstance(rep, Report)
        n += 1
    assert n > 900
