"""``python -m medmm.pipelines.tile_features`` on the tiny pathology cohort: bags on tissue
inside the slide, the hand-made bags equal to what the survival loader computes from the
slides, the image tower's bags equal to the saved model's output, resumable runs, an
unreadable slide reported by its hash only, and CMTA trained from the bags."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from mlflow.tracking import MlflowClient
from safetensors import safe_open
from safetensors.numpy import load_file
from skimage.color import rgb2hsv

from medmm.cohort.manifest import Manifest
from medmm.config.core import ConfigError, build_config
from medmm.data.survival import load_pathology_cohort, read_bag_index, write_feature_bag
from medmm.io.errors import InconsistentDataError, MedmmInputError
from medmm.pipelines.tile_features import main
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.pretrained import build_model, save_pretrained_folder
from medmm.workflows.survival.config import SurvivalConfig
from medmm.workflows.survival.run import run as survival_run
from tests.conftest import REPO
from tests.workflows.survival.conftest import TINY_SURVIVAL, survival_overrides

TINY = REPO / "configs/tile_features/tiny.yaml"
TILE = 64  # the tiny config's tile side; the tiny cohort's slides are 20x scans, so 64 level-0 pixels


def extract(root, out, *extra: str) -> int:
    return main(["--config", str(TINY), f"data.root={root}", f"output_dir={out}", *extra])


def slides(root) -> pd.DataFrame:
    table = Manifest.load(root).table
    return table[table["modality"] == "wsi"].set_index("sha256")


@pytest.fixture(scope="module")
def handmade(tiny_pathology_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles") / "handmade"
    assert extract(tiny_pathology_cohort, out) == 0
    return out


def test_bags_lie_on_tissue_inside_the_slide_named_by_hash(tiny_pathology_cohort, handmade):
    index = read_bag_index(handmade)
    rows = slides(tiny_pathology_cohort)
    assert len(index) == 24 and (index["status"] == "ok").all() and set(index["slide_sha256"]) == set(rows.index)
    assert not any("DEMO" in p.name for p in (handmade / "bags").iterdir())  # no case id in a file name
    for entry in index.itertuples():
        assert entry.bag == f"bags/{entry.slide_sha256[:24]}.safetensors"
        bag = load_file(handmade / entry.bag)
        features, coords = bag["features"], bag["coords"]
        assert features.shape == (entry.tiles, 16) and coords.shape == (entry.tiles, 2) and np.isfinite(features).all()
        # read the level-0 pixels with tifffile, not OpenSlide: the tiles are inside the slide and on tissue
        pixels = tifffile.TiffFile(tiny_pathology_cohort / rows.loc[entry.slide_sha256, "path"]).pages[0].asarray()
        assert 0 < len(coords) < (pixels.shape[0] // TILE) ** 2  # some tiles are glass
        assert (coords >= 0).all() and (coords + TILE <= pixels.shape[1::-1]).all() and (coords % TILE == 0).all()
        for x, y in coords:
            stained = rgb2hsv(pixels[y:y + TILE, x:x + TILE])[..., 1] > 0.1  # glass is grey, H&E is coloured
            assert stained.mean() > 0.3
    with safe_open(str(handmade / entry.bag), framework="np") as f:  # the metadata names encoder and tiling
        header = f.metadata()
    assert {k: header[k] for k in ("encoder", "dim", "tile_size", "magnification")} == \
        {"encoder": "handmade", "dim": "16", "tile_size": "64", "magnification": "20.0"}
    assert header["slide_sha256"] == entry.slide_sha256


def test_handmade_bags_equal_the_survival_loaders_own_tile_features(tiny_pathology_cohort, handmade, tmp_path):
    from_slides = load_pathology_cohort(tiny_pathology_cohort, tmp_path / "cache", magnification=20, tile_size=TILE)
    from_bags = load_pathology_cohort(tiny_pathology_cohort, tmp_path / "unused", feature_bags=handmade)
    assert not (tmp_path / "unused").exists()  # nothing embedded: every bag read
    assert len(from_bags.bags) == len(from_slides.bags) == 24
    for a, b in zip(from_slides.bags, from_bags.bags):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(from_slides.x, from_bags.x)
    np.testing.assert_array_equal(from_slides.time, from_bags.time)


def test_a_second_run_skips_done_slides_and_redoes_only_a_missing_bag(tiny_pathology_cohort, handmade, capsys):
    bags = sorted((handmade / "bags").glob("*.safetensors"))
    mtimes = {p: p.stat().st_mtime_ns for p in bags}
    assert extract(tiny_pathology_cohort, handmade) == 0
    assert "0 slide(s) embedded, 24 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in bags} == mtimes
    gone, saved = bags[3], load_file(bags[3])
    gone.unlink()
    partial = gone.with_name(f".{gone.name}.partial")
    partial.write_bytes(b"\x00" * 100)  # a run killed while writing this bag
    assert extract(tiny_pathology_cohort, handmade) == 0
    assert "1 slide(s) embedded, 23 already done" in capsys.readouterr().out
    np.testing.assert_array_equal(load_file(gone)["features"], saved["features"])
    assert not partial.exists()
    assert {p: p.stat().st_mtime_ns for p in bags if p != gone} == {p: t for p, t in mtimes.items() if p != gone}
    # bags of another tiling in the same folder would be mixed: refused before any work
    assert extract(tiny_pathology_cohort, handmade, "data.tile_size=32") == 2
    assert "other settings (tile_size differ)" in capsys.readouterr().err


def test_cnn_bags_share_the_tiling_and_a_medmm_image_tower_gives_the_saved_models_features(
        tiny_pathology_cohort, handmade, tmp_path):
    assert extract(tiny_pathology_cohort, tmp_path / "cnn", "encoder.name=cnn") == 0
    cfg = build_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml")  # X-ray side 64 = the tile side
    torch.manual_seed(0)
    model = build_model("more", cfg).eval()
    folder = save_pretrained_folder(model, cfg, tmp_path / "more")
    assert extract(tiny_pathology_cohort, tmp_path / "tower", "encoder.name=cnn", f"encoder.pretrained={folder}") == 0
    rows = slides(tiny_pathology_cohort)
    random_cnn = json.loads((tmp_path / "cnn/extraction.json").read_text())
    assert random_cnn["dim"] == 16 and random_cnn["weights"].startswith("cnn-random:")  # 2 x the last width (8)
    for entry in read_bag_index(handmade).itertuples():
        reference = load_file(handmade / entry.bag)
        cnn, tower = load_file(tmp_path / "cnn" / entry.bag), load_file(tmp_path / "tower" / entry.bag)
        np.testing.assert_array_equal(cnn["coords"], reference["coords"])
        assert cnn["features"].shape == (entry.tiles, 16) and np.isfinite(cnn["features"]).all()
        assert cnn["features"].std(0).max() > 0  # tiles differ
        # the tower's features, recomputed: grey level in [0, 1], z-scored as the X-rays were
        pixels = tifffile.TiffFile(tiny_pathology_cohort / rows.loc[entry.slide_sha256, "path"]).pages[0].asarray()
        grey = np.stack([pixels[y:y + TILE, x:x + TILE].astype(np.float32).mean(-1) / 255 for x, y in tower["coords"]])
        with torch.no_grad():
            expected = model.encoders["xray"]((torch.from_numpy(grey)[:, None] - 0.5) / 0.25).numpy()
        np.testing.assert_allclose(tower["features"], expected, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "tower/extraction.json").read_text())["weights"].startswith("medmm-more:")


def test_unreadable_slide_is_one_line_by_hash_and_cmta_trains_from_the_other_bags(tiny_pathology_cohort, tmp_path,
                                                                                    capsys):
    root = tmp_path / "cohort"
    shutil.copytree(tiny_pathology_cohort, root)
    victim = sorted((root / "slides").glob("*.tiff"))[0]
    victim.write_bytes(victim.read_bytes()[:3000])  # truncated
    sha = slides(root).index[slides(root)["path"] == f"slides/{victim.name}"][0]
    out = tmp_path / "bags"
    assert extract(root, out, "encoder.name=cnn") == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"slide {sha[:24]}.safetensors unreadable" in warnings[0]
    assert victim.stem not in captured.err + captured.out and "DEMO-" not in captured.err
    index = read_bag_index(out)
    assert (index["status"] == "ok").sum() == 23
    bad = index[index["status"] == "unreadable"].iloc[0]
    assert bad["slide_sha256"] == sha and "TIFF" in bad["problem"] and victim.stem not in bad["problem"]

    cfg = build_config(SurvivalConfig, TINY_SURVIVAL, survival_overrides(
        tmp_path, "data.dataset=pathology", f"data.root={root}", "data.max_rows=null", f"data.feature_bags={out}",
        "data.bag_size=8", "models=[cmta]", "train.epochs=2", "train.dim=16", "train.n_bins=2",
        "eval.n_bootstrap=5", "tracking.register_model=false"))
    outcome = survival_run(cfg)
    run = MlflowClient(outcome.tracking_uri).get_run(outcome.run_id)
    assert run.data.metrics["data.n_skipped"] == 1 and run.data.tags["tile_encoder"] == "cnn"
    assert run.data.metrics["data.n_train"] + run.data.metrics["data.n_val"] + run.data.metrics["data.n_test"] == 23
    assert np.isfinite(outcome.results["cmta"]["harrell_c"]) and 0 <= outcome.results["cmta"]["harrell_c"] <= 1


def test_bags_of_two_widths_and_a_missing_index_are_refused(tiny_pathology_cohort, handmade, tmp_path):
    out = tmp_path / "mixed"
    shutil.copytree(handmade, out)
    first = read_bag_index(out).iloc[0]
    write_feature_bag(out / first["bag"], np.zeros((3, 8), np.float32), np.zeros((3, 2), np.int64), {})
    with pytest.raises(InconsistentDataError, match="features per tile"):
        load_pathology_cohort(tiny_pathology_cohort, tmp_path / "cache", feature_bags=out)
    os.remove(out / "bags.csv")
    with pytest.raises(MedmmInputError, match="no feature-bag index"):
        load_pathology_cohort(tiny_pathology_cohort, tmp_path / "cache", feature_bags=out)


def test_an_outside_hf_checkpoint_embeds_the_tiles_as_the_saved_model_does(tiny_pathology_cohort, handmade,
                                                                            tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).eval()
    folder = tmp_path / "vit"
    vit.save_pretrained(folder)
    mean, std = [0.7, 0.5, 0.6], [0.2, 0.25, 0.3]  # the checkpoint's own statistics, not ImageNet's
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "image_mean": mean, "image_std": std,
         "size": {"height": 32, "width": 32}}))
    assert extract(tiny_pathology_cohort, tmp_path / "out", "encoder.name=checkpoint",
                   f"encoder.checkpoint={folder}") == 0
    rows = slides(tiny_pathology_cohort)
    entry = read_bag_index(handmade).iloc[0]
    bag = load_file(tmp_path / "out" / entry["bag"])
    np.testing.assert_array_equal(bag["coords"], load_file(handmade / entry["bag"])["coords"])
    pixels = tifffile.TiffFile(tiny_pathology_cohort / rows.loc[entry["slide_sha256"], "path"]).pages[0].asarray()
    tiles = torch.from_numpy(np.stack([pixels[y:y + TILE, x:x + TILE] for x, y in bag["coords"]]))
    x = tiles.permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = vit(pixel_values=x).pooler_output.numpy()
    np.testing.assert_allclose(bag["features"], expected, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "out/extraction.json").read_text())["dim"] == 16


def test_checkpoint_encoder_needs_a_checkpoint(tiny_pathology_cohort, tmp_path, capsys):
    assert extract(tiny_pathology_cohort, tmp_path / "x", "encoder.name=checkpoint") == 2
    assert "encoder.name=checkpoint needs encoder.checkpoint" in capsys.readouterr().err
    assert extract(tiny_pathology_cohort, tmp_path / "x", "encoder.pretrained=models:/x@champion") == 2
    assert "needs encoder.name=cnn" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="data.feature_bags holds slide tile features"):  # a bundled table has none
        build_config(SurvivalConfig, TINY_SURVIVAL, [f"data.feature_bags={tmp_path}"])
