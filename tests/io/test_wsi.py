"""medmm.io.read_wsi on real pyramidal TIFFs (tifffile) holding a real IHC image
(scikit-image): geometry vs the written file, tissue mask vs the known tissue area,
tiles at a magnification vs a direct resize, feature bags, bad files -> medmm errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.data import immunohistochemistry

from medmm.demo.writers import write_pyramidal_tiff
from medmm.io import feature_bag, read_wsi
from medmm.io.errors import CorruptFileError, InconsistentDataError
from medmm.io.wsi import ColorTextureEncoder

MPP = 0.25  # a 40x scan


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """1024 x 1024 glass (near-white) with the 512 x 512 real IHC image in the top-left corner."""
    canvas = np.full((1024, 1024, 3), 242, np.uint8)
    canvas[:512, :512] = immunohistochemistry()
    path = tmp_path_factory.mktemp("wsi") / "slide.tiff"
    write_pyramidal_tiff(path, canvas, mpp=MPP, n_levels=3, tile=256)
    return path


def test_levels_and_pixels_match_the_file(slide_path):
    with read_wsi(slide_path) as slide:
        assert slide.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == pytest.approx(MPP) and slide.objective_power == pytest.approx(40)
        with tifffile.TiffFile(slide_path) as tif:
            level1 = tif.pages[1].asarray()
        np.testing.assert_array_equal(slide.read_region(128, 256, 1, (100, 60)), level1[128:188, 64:164])


def test_tissue_mask_and_background_tiles_skipped(slide_path):
    with read_wsi(slide_path) as slide:
        mask, level = slide.tissue_mask()
        assert level == 2 and mask.shape == (256, 256)
        truth = np.zeros_like(mask)
        truth[:128, :128] = True
        assert mask[truth].mean() > 0.4, mask[truth].mean()  # IHC has pale, unstained areas; glass is never tissue
        assert not mask[128:, :].any() and not mask[:, 128:].any()
        grid = slide.tiles(magnification=20, tile_size=128)  # 20x from a 40x scan: 256 level-0 px per tile
        assert grid.level == 1 and grid.read_size == 128 and grid.mpp == pytest.approx(0.5)
        assert len(grid.coords) + grid.n_background == 16
        assert (grid.coords < 512).all() and len(grid.coords) >= 2  # only tiles over the IHC image


def test_tile_at_10x_equals_resized_region(slide_path):
    with read_wsi(slide_path) as slide:
        grid = slide.tiles(magnification=10, tile_size=64, min_tissue=0.0)
        assert grid.level == 2 and grid.read_size == 64 and len(grid.coords) == 16
        tile = slide.read_tile(grid, 0)
        grid5 = slide.tiles(magnification=5, tile_size=64, min_tissue=0.0)  # coarser than the pyramid: resized
        assert grid5.read_size == 128
        expected = np.asarray(Image.fromarray(slide.read_region(0, 0, 2, (128, 128))).resize((64, 64), Image.BILINEAR))
        np.testing.assert_array_equal(slide.read_tile(grid5, 0), expected)
        assert tile.shape == (64, 64, 3)


def test_feature_bag_and_encoder(slide_path):
    enc = ColorTextureEncoder()
    white = enc(np.full((64, 64, 3), 255, np.uint8), 0.5)
    names = dict(zip(enc.names, white))
    assert names["nuclei_per_mm2"] == 0 and names["h_area"] == 0 and names["saturation"] == 0
    with read_wsi(slide_path) as slide:
        bag = feature_bag(slide, magnification=20, tile_size=128)
        again = feature_bag(slide, magnification=20, tile_size=128, max_tiles=2, seed=3)
    assert bag.features.shape == (len(bag.coords), len(enc.names)) and np.isfinite(bag.features).all()
    assert again.features.shape[0] == 2
    assert any((again.features[0] == row).all() for row in bag.features)  # the sample is a subset, frozen encoder


def test_bad_slides(tmp_path, slide_path):
    text = tmp_path / "notes.tiff"
    text.write_text("this is not a slide")
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(slide_path.read_bytes()[:4000])
    for path in (text, truncated, tmp_path / "absent.svs"):
        with pytest.raises(CorruptFileError) as info:
            with read_wsi(path) as slide:
                slide.read_level(0)
        assert path.name in str(info.value)
    plain = tmp_path / "no_mpp.tiff"
    tifffile.imwrite(plain, np.full((256, 256, 3), 200, np.uint8), tile=(128, 128), photometric="rgb")
    with read_wsi(plain) as slide, pytest.raises(InconsistentDataError, match="microns per pixel"):
        slide.tiles(magnification=20)
    with read_wsi(slide_path) as slide, pytest.raises(InconsistentDataError, match="finer"):
        slide.tiles(magnification=80)
