"""Image-text pretraining from labels over several modalities: the labelled demo sets carry
the labels their images show, a labelled set's CSV is checked before any image is read, the
zero-shot scores agree with an independent computation, a cohort spec's caption style reaches
the ingested report text, and ``python -m medmm.pipelines.image_text`` runs end to end on
the tiny config into a temporary MLflow store."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.metrics import roc_auc_score

from medmm.cohort.captions import CAPTION_STYLES, caption_from_labels, class_prompts
from medmm.cohort.ingest import ingest
from medmm.cohort.spec import load_cohort_spec
from medmm.data.tokenizer import load_tokenizer
from medmm.demo.labelled_images import ORGAN_PIXELS, TISSUES, write_labelled_image_sets
from medmm.demo.volumes import make_phantom
from medmm.io.errors import MedmmInputError
from medmm.io.wsi import ColorTextureEncoder
from medmm.pipelines.image_text import main
from medmm.workflows.image_text.config import ImageTextConfig, LabelledSetConfig
from medmm.workflows.image_text.data import load_labelled_set, read_label_table
from medmm.workflows.image_text.run import Texts, build_model, image_embeddings, zero_shot
from medmm.workflows.pretrained import load_pretrained
from tests.conftest import REPO

TINY = REPO / "configs/image_text/tiny.yaml"
STYLE = {"xray": "chest_xray", "ct": "ct", "mr": "mr", "pathology": "pathology"}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled")
    write_labelled_image_sets(out, n_xray=40, n_volumes=3, n_tiles=36, seed=1)
    return out


def source(root, modality, **kw) -> LabelledSetConfig:
    return LabelledSetConfig(modality=modality, labels=root / modality / "labels.csv", caption_style=STYLE[modality],
                             **kw)


def test_ct_slices_carry_the_organs_they_show(labelled):
    table = pd.read_csv(labelled / "ct" / "labels.csv")
    # the generator's first CT volume, rebuilt from its seed: its slices' labels follow the label map
    case = make_phantom("ct", np.random.default_rng([1, 1]), size=48)
    first = table[table["patient"] == "CT-0000"]
    for _, row in first.iterrows():
        k = int(row["path"].split("_z")[1].removesuffix(".png"))
        stored = np.asarray(Image.open(labelled / "ct" / row["path"]))
        np.testing.assert_array_equal(stored.T.astype(np.float64) - 1024.0,
                                      np.clip(np.rint(case.image[:, :, k]) + 1024.0, 0, 65535) - 1024.0)
        for value, organ in ((1, "liver"), (2, "kidney"), (3, "spleen"), (4, "vertebra")):
            area = int((case.label[:, :, k] == value).sum())
            assert row[organ] == (1 if area >= ORGAN_PIXELS else -1 if area else 0), (k, organ)
    assert set(table["liver"]) >= {0, 1}  # slices above and through the liver


def test_pathology_tiles_differ_by_nuclear_density(labelled):
    from skimage.color import rgb2hed

    table = pd.read_csv(labelled / "pathology" / "labels.csv")
    assert (table[list(TISSUES)].sum(axis=1) == 1).all()  # one tissue class per tile
    density = {}
    for tissue in TISSUES:
        tiles = [np.asarray(Image.open(labelled / "pathology" / p)) for p in table.loc[table[tissue] == 1, "path"]]
        density[tissue] = np.mean([(rgb2hed(t)[..., 0] > ColorTextureEncoder.h_threshold).mean() for t in tiles])
    assert density["dense cellular tissue"] > density["loose stroma"] > density["background"]


def test_a_labelled_csv_is_checked_before_any_image(labelled, tmp_path):
    bad = tmp_path / "bad.csv"
    table = pd.read_csv(labelled / "ct" / "labels.csv")
    table.loc[3, "liver"] = 2
    table.to_csv(bad, index=False)
    with pytest.raises(MedmmInputError, match=r"bad\.csv: row 5, column 'liver': label '2': expected 1, 0, -1"):
        read_label_table(LabelledSetConfig(modality="ct", labels=bad, caption_style="ct"), 0)
    with pytest.raises(MedmmInputError, match=r"bad\.csv: column\(s\) \['organ'\] not in the header"):
        read_label_table(LabelledSetConfig(modality="ct", labels=bad, caption_style="ct", class_columns=["organ"]), 0)
    with pytest.raises(MedmmInputError, match=r"absent\.csv: labels file not found"):
        read_label_table(LabelledSetConfig(modality="ct", labels=tmp_path / "absent.csv", caption_style="ct"), 0)


def test_a_bad_image_is_skipped_and_counted(labelled, tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    table = pd.read_csv(labelled / "ct" / "labels.csv").head(12)
    for rel in table["path"]:
        (folder / rel).parent.mkdir(exist_ok=True)
        (folder / rel).write_bytes((labelled / "ct" / rel).read_bytes())
    (folder / table["path"][0]).write_bytes((folder / table["path"][0]).read_bytes()[:60])  # cut off
    (folder / table["path"][1]).unlink()
    table.to_csv(folder / "labels.csv", index=False)
    checked = read_label_table(LabelledSetConfig(modality="ct", labels=folder / "labels.csv", caption_style="ct"), 0)
    lset = load_labelled_set(checked, 32, (0.5, 0.0, 0.5), 0)
    assert len(lset.images) == 10 and dict(lset.skipped) == {"unreadable image": 1, "missing image": 1}
    assert lset.images.dtype == torch.float32 and lset.images.shape == (10, 1, 32, 32)
    # slices of one volume stay in one split
    assert all(len(set(lset.split[table["patient"][2:].to_numpy() == p])) == 1 for p in set(table["patient"]))


@pytest.mark.parametrize("modality", ["ct", "pathology"])
def test_zero_shot_scores_match_an_independent_computation(labelled, modality):
    cfg = ImageTextConfig.model_validate(
        {"sources": [{"modality": modality, "labels": str(labelled / modality / "labels.csv"),
                      "caption_style": STYLE[modality]}], "image_size": 32,
         "model": {"embed_dim": 16, "proj_hidden": 32, "image": {"widths": [4, 8, 8, 8]},
                   "text": {"lora_r": 2, "lora_alpha": 4, "max_tokens": 48}}})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    lset = load_labelled_set(read_label_table(cfg.sources[0], 0), 32, (0.0, 0.0, 1.0), 0)
    tokenizer = load_tokenizer()
    rows = np.arange(len(lset.images))
    got = zero_shot(model, lset, rows, Texts(tokenizer, 48))

    def embed(prompts):  # each prompt on its own, through the tokenizer and the encoder, then averaged
        with torch.no_grad():
            out = [model.encode("report", {"report_ids": torch.tensor([ids]), "report_mask": torch.ones(1, len(ids))})
                   for ids in tokenizer(prompts)["input_ids"]]
        return torch.cat(out).mean(0)

    image = image_embeddings(model, lset.images).numpy()
    for c, name in enumerate(lset.classes):
        pos, neg = class_prompts(name, STYLE[modality])
        if CAPTION_STYLES[STYLE[modality]].single_label:
            protos = F.normalize(torch.stack([embed(class_prompts(n, STYLE[modality])[0]) for n in lset.classes]),
                                 dim=-1).numpy()
            logits = math.exp(model.logit_scale().item()) * image @ protos.T
            score = np.exp(logits - logits.max(1, keepdims=True))
            score = (score / score.sum(1, keepdims=True))[:, c]
        else:
            score = image @ (embed(pos) - embed(neg)).numpy()
        known = np.isin(lset.labels[:, c], (0, 1))
        assert got[f"auroc.{name}"] == pytest.approx(roc_auc_score(lset.labels[known, c], score[known]), abs=1e-6)
    assert got["macro_auroc"] == pytest.approx(np.mean([got[f"auroc.{n}"] for n in lset.classes]))


def test_a_cohort_specs_caption_style_reaches_the_report_text(labelled, tmp_path):
    spec = tmp_path / "ct_slices.yaml"
    spec.write_text("""
name: ct_slices
root: .
modalities: [ct, report]
required_modalities: [ct]
files:
  - {modality: ct, format: image, pattern: "images/*.png",
     ids: "images/(?P<study>(?P<patient>ct\\\\d+)_z\\\\d+)\\\\.png$"}
tables:
  - {path: labels.csv, modality: report, key_column: path, patient_column: path,
     patient_pattern: "images/(?P<patient>ct\\\\d+)_", study_column: path,
     study_pattern: "images/(?P<study>ct\\\\d+_z\\\\d+)\\\\.png", caption_style: ct,
     label_columns: [liver, kidney, spleen, vertebra]}
links:
  - {anchor: ct, attach: report, by: study}
split: {level: patient, fractions: {train: 0.7, val: 0.1, test: 0.2}, seed: 0}
""")
    root = labelled / "ct"
    ingest(load_cohort_spec(spec), root, tmp_path / "manifest.parquet", workers=1)
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    reports = manifest[manifest["modality"] == "report"]
    labels = pd.read_csv(root / "labels.csv").set_index("path")
    assert len(reports) == len(labels)
    for _, row in reports.head(5).iterrows():
        expected = caption_from_labels(labels.loc[row["row_key"], ["liver", "kidney", "spleen", "vertebra"]].to_dict(),
                                       row["row_key"], "ct")
        assert row["text"] == expected and row["text"].split(". ")[0] + "." in CAPTION_STYLES["ct"].openings


def test_the_pipeline_end_to_end_on_the_tiny_config(labelled, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sources = [{"modality": m, "labels": str(labelled / m / "labels.csv"), "caption_style": STYLE[m]}
               for m in ("xray", "ct", "pathology")]
    code = main(["--config", str(TINY), f"sources={json.dumps(sources)}", f"output_dir={tmp_path / 'runs'}",
                 f"tracking.uri={uri}", "train.threads=1"])
    assert code == 0
    assert "pathology zero-shot macro AUROC, mixed model" in capsys.readouterr().out
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("medmm-image-text-tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["medmm.pipeline"] == "image_text"
    metrics = run.data.metrics
    for model in ("mixed", "per_modality"):
        for modality in ("xray", "ct", "pathology"):
            assert 0.0 <= metrics[f"test.{model}.{modality}.macro_auroc"] <= 1.0
    assert metrics["test.mixed.pathology.accuracy"] >= 0.0
    # the per-modality models get the mixed model's compute: as many optimiser steps
    assert metrics["train.per_modality.ct.budget_steps"] == metrics["train.mixed.budget_steps"] > 0
    assert 0 < metrics["train.mixed.steps"] <= metrics["train.mixed.budget_steps"]
    table = open(client.download_artifacts(run.info.run_id, "results/image_text_table.md", str(tmp_path))).read()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["xray", "ct", "pathology"]
    # the saved mixed model loads as a medmm pretraining model and scores as the run logged
    loaded = load_pretrained(tmp_path / "runs" / "mixed_seed0")
    cfg = ImageTextConfig.model_validate({"sources": sources, "image_size": 32})
    lset = load_labelled_set(read_label_table(cfg.sources[1], 0), 32, cfg.split_fractions, 0)
    again = zero_shot(loaded.model, lset, lset.rows("test"), Texts(loaded.tokenizer, 48))
    assert again["macro_auroc"] == pytest.approx(metrics["test.mixed.ct.macro_auroc"], abs=1e-6)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model/mixed_seed0")} == {
        "model/mixed_seed0/model.safetensors", "model/mixed_seed0/config.yaml"}
    # nothing of the labelled sets' locations reaches the run
    logged = json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert str(labelled) not in logged and "labels.csv" not in logged


def test_config_errors_exit_2(tmp_path, capsys):
    assert main(["--config", str(TINY), "seeds=[]", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "config error" in capsys.readouterr().err
    assert main(["--config", str(TINY), f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                 f'sources=[{{"modality": "ct", "labels": "{tmp_path / "absent.csv"}", "caption_style": "ct"}}]']) == 2
    assert "absent.csv: labels file not found" in capsys.readouterr().err
