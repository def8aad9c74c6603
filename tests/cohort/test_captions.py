"""Report text from CheXpert-style label rows: a sentence per labelled finding, and the report
labeler reads back the labels the captions were written from."""

from __future__ import annotations

import pytest

from medmm.cohort.captions import NEGATIVE, POSITIVE, UNCERTAIN, caption_from_labels
from medmm.io.findings import FINDINGS
from medmm.io.reports import parse_report

ROW = {"No Finding": None, "Cardiomegaly": 1.0, "Edema": "0.0", "Pneumothorax": -1.0, "Fracture": "", "Lung Lesion": None}


def test_one_sentence_per_labelled_finding_in_column_order():
    text = caption_from_labels(ROW, "train/patient00001/study1/view1_frontal.jpg")
    sentences = [s.strip() + "." for s in text.split(".") if s.strip()]
    assert len(sentences) == 3  # blank and missing labels add nothing
    assert sentences[0] in {t.format(finding="cardiomegaly", Finding="Cardiomegaly") for t in POSITIVE}
    assert sentences[1] in {t.format(finding="edema", Finding="Edema") for t in NEGATIVE}
    assert sentences[2] in {t.format(finding="pneumothorax", Finding="Pneumothorax") for t in UNCERTAIN}


def test_the_same_key_gets_the_same_text_and_keys_vary_it():
    assert caption_from_labels(ROW, "a") == caption_from_labels(ROW, "a")
    assert len({caption_from_labels(ROW, f"study{k}") for k in range(30)}) > 3  # templates vary across the cohort


def test_no_finding_and_bad_labels():
    assert caption_from_labels({"No Finding": 1.0, "Edema": None}, "k") == "No acute cardiopulmonary abnormality."
    assert caption_from_labels({"No Finding": 0.0}, "k") == ""
    with pytest.raises(ValueError, match=r"label '2': expected 1, 0, -1 or blank"):
        caption_from_labels({"Edema": 2}, "k")
    with pytest.raises(ValueError, match=r"label 'yes': expected"):
        caption_from_labels({"Edema": "yes"}, "k")


@pytest.mark.parametrize("key", [f"study{k}" for k in range(6)])
def test_the_labeler_reads_the_captions_labels_back(key):
    labels = parse_report(caption_from_labels({"Cardiomegaly": 1.0, "Edema": 0.0, "Pleural Effusion": 1.0}, key)
                          ).labels.as_vector()
    found = dict(zip(FINDINGS, labels))
    assert found["cardiomegaly"] == 1 and found["pleural_effusion"] == 1 and found["edema"] == 0


def test_each_modality_style_opens_with_the_image_it_describes():
    from medmm.cohort.captions import CAPTION_STYLES

    ct = caption_from_labels({"liver": 1, "kidney": 0, "spleen": -1, "vertebra": None}, "ct0001_z10", "ct")
    opening, *sentences = [s.strip() + "." for s in ct.split(".") if s.strip()]
    assert opening in CAPTION_STYLES["ct"].openings and len(sentences) == 3
    assert sentences[0] in {t.format(finding="liver") for t in CAPTION_STYLES["ct"].positive}
    assert sentences[1] in {t.format(finding="kidney") for t in CAPTION_STYLES["ct"].negative}
    assert sentences[2] in {t.format(finding="spleen") for t in CAPTION_STYLES["ct"].uncertain}
    # a single-label style writes the class a tile is, not the ones it is not
    tile = caption_from_labels({"loose stroma": 1, "background": 0}, "tile7", "pathology")
    assert "background" not in tile and "stroma" in tile and tile.startswith(CAPTION_STYLES["pathology"].openings)
    # the chest X-ray style (CheXpert's) has no opening and reads as before
    assert caption_from_labels({"Edema": 1}, "k", "chest_xray") in {t.format(finding="edema", Finding="Edema")
                                                                      for t in POSITIVE}
    with pytest.raises(ValueError, match="unknown caption style 'us'"):
        caption_from_labels({"Edema": 1}, "k", "us")


def test_zero_shot_prompts_are_every_opening_with_every_template():
    from medmm.cohort.captions import CAPTION_STYLES, class_prompts

    pos, neg = class_prompts("support_devices")
    assert pos == [t.format(finding="support devices", Finding="Support devices") for t in POSITIVE]
    assert neg == [t.format(finding="support devices", Finding="Support devices") for t in NEGATIVE]
    pos, neg = class_prompts("liver", "mr")
    style = CAPTION_STYLES["mr"]
    assert len(pos) == len(style.openings) * len(style.positive)
    assert len(neg) == len(style.openings) * len(style.negative)
    assert pos[0] == f"{style.openings[0]} {style.positive[0].format(finding='liver')}"
