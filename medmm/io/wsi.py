"""Whole-slide images through OpenSlide: levels, microns per pixel, tiles at a chosen
magnification, a tissue mask so background tiles are skipped, and bags of tile features
for multiple-instance models.

Magnification follows the usual convention mpp = 10 / magnification (40x = 0.25 um/px,
20x = 0.5 um/px). A tile at magnification M is read from the pyramid level nearest below
the wanted resolution and resized to ``tile_size`` pixels.

Tile features come from a frozen, hand-written encoder (``ColorTextureEncoder``): no
pretrained pathology weights install offline, so instead of a random network the bag
holds colour, stain (haematoxylin / eosin by colour deconvolution) and texture statistics
plus a nuclear count per mm^2. They are deterministic, interpretable and cheap; a user
with a real feature extractor passes its callable as ``encoder``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medmm.io.errors import CorruptFileError, InconsistentDataError
from medmm.io.guard import check_declared_size, reader_boundary

MAX_LEVEL0_PIXELS = 10**12  # refuse absurd declared sizes instead of trying to tile them
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def magnification_to_mpp(magnification: float) -> float:
    return 10.0 / float(magnification)


@dataclass(frozen=True)
class TileGrid:
    """Tiles kept after the tissue mask: level-0 top-left corners and how to read them."""

    coords: np.ndarray  # [n, 2] int64 (x, y) at level 0
    tissue_fraction: np.ndarray  # [n] float32, share of the tile covered by tissue
    level: int  # pyramid level read from
    read_size: int  # pixels read at that level (then resized to tile_size)
    tile_size: int  # pixels of the returned tile
    mpp: float  # microns per pixel of the returned tile
    n_background: int  # grid tiles skipped as background


@dataclass(frozen=True)
class FeatureBag:
    """A slide as a bag of tile feature vectors (multiple-instance learning input)."""

    features: np.ndarray  # [n_tiles, dim] float32
    coords: np.ndarray  # [n_tiles, 2] level-0 (x, y)
    feature_names: tuple[str, ...]
    mpp: float
    tile_size: int


class WholeSlide:
    """An open slide. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, mpp: float | None = None):
        import openslide

        self.path = Path(path)
        if not self.path.is_file():
            raise CorruptFileError(self.path, "file not found")
        self._tiled = _check_tiff_levels(self.path)  # before OpenSlide trusts the declared sizes
        self._verified: set[tuple[int, int]] = set()  # (IFD, tile) whose data was checked
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError) as exc:
            raise CorruptFileError(self.path, f"not a slide OpenSlide can read ({exc})") from None
        w, h = self._slide.dimensions
        if w <= 0 or h <= 0 or w * h > MAX_LEVEL0_PIXELS:
            self.close()
            raise InconsistentDataError(self.path, f"implausible slide size {w}x{h}")
        self.vendor = self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        declared = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = float(mpp) if mpp is not None else (float(declared) if declared else None)
        power = self._slide.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.objective_power = float(power) if power else (10.0 / self.mpp if self.mpp else None)

    # -- geometry -------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return self._slide.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    def level_mpp(self, level: int) -> float:
        self._require_mpp()
        return self.mpp * self.level_downsamples[level]

    def _require_mpp(self) -> None:
        if not self.mpp:
            raise InconsistentDataError(self.path, "the slide declares no microns per pixel; pass mpp= to read_wsi")

    # -- pixels ---------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 [h, w, 3] at ``level``; (x, y) in level-0 pixels; transparent -> white."""
        import openslide

        # OpenSlide aborts the process when its allocation fails: refuse absurd sizes first
        check_declared_size(self.path, (int(size[1]), int(size[0])), 4 + 3 * 4, "region (height, width)")
        self._verify_region(x, y, level, size)
        try:
            rgba = np.asarray(self._slide.read_region((int(x), int(y)), int(level), tuple(int(s) for s in size)))
        except openslide.OpenSlideError as exc:
            raise CorruptFileError(self.path, f"cannot decode region at ({x}, {y}) level {level}: {exc}") from None
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return rgb.round().astype(np.uint8)

    def _verify_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> None:
        """Check the tile data of the TIFF images behind ``level`` that the region touches, each
        tile once per open slide."""
        if not self._tiled or not 0 <= int(level) < self.level_count:
            return
        width, length = self.level_dimensions[level]
        downsample = self.level_downsamples[level]
        for image in self._tiled:
            if (image.width, image.length) != (width, length):
                continue
            tiles = [t for t in image.tiles_covering(int(x) / downsample, int(y) / downsample, int(size[0]),
                                                     int(size[1])) if (image.index, t) not in self._verified]
            _verify_tiles(self.path, image, tiles, sparse_allowed=self.vendor in _SPARSE_TILE_VENDORS)
            self._verified.update((image.index, t) for t in tiles)

    def read_level(self, level: int) -> np.ndarray:
        w, h = self.level_dimensions[level]
        return self.read_region(0, 0, level, (w, h))

    def tissue_mask(self, level: int | None = None) -> tuple[np.ndarray, int]:
        """Boolean tissue mask at ``level`` (default: the smallest level), and that level.

        Otsu's threshold on HSV saturation: H&E-stained tissue is coloured, glass and
        background are white or grey (low saturation)."""
        from skimage.color import rgb2hsv
        from skimage.filters import threshold_otsu

        level = self.level_count - 1 if level is None else level
        saturation = rgb2hsv(self.read_level(level))[..., 1]
        if float(saturation.max() - saturation.min()) < 1e-3:
            return np.zeros(saturation.shape, bool), level  # one flat colour: no tissue to separate
        # Never let a near-blank slide push the threshold into noise.
        threshold = max(float(threshold_otsu(saturation)), 0.05)
        return saturation > threshold, level

    def tiles(self, magnification: float | None = None, mpp: float | None = None, tile_size: int = 256,
              min_tissue: float = 0.5, mask_level: int | None = None) -> TileGrid:
        """Non-overlapping tile grid at the wanted resolution, background tiles skipped."""
        if (magnification is None) == (mpp is None):
            raise ValueError("give exactly one of magnification or mpp")
        self._require_mpp()
        target = magnification_to_mpp(magnification) if magnification is not None else float(mpp)
        factor = target / self.mpp  # level-0 pixels per output pixel
        if factor < 1 - 1e-6:
            raise InconsistentDataError(self.path, f"requested {target:.3f} um/px is finer than the scan "
                                                   f"({self.mpp:.3f} um/px)")
        downs = np.asarray(self.level_downsamples)
        level = int(np.flatnonzero(downs <= factor + 1e-6).max())
        read_size = int(round(tile_size * factor / downs[level]))
        step0 = tile_size * factor  # tile side in level-0 pixels
        mask, mlevel = self.tissue_mask(mask_level)
        mds = self.level_downsamples[mlevel]
        w0, h0 = self.level_dimensions[0]
        coords, fractions, n_bg = [], [], 0
        for y in np.arange(0, h0 - step0 + 1, step0):
            for x in np.arange(0, w0 - step0 + 1, step0):
                y0, x0 = int(y / mds), int(x / mds)
                y1, x1 = max(int(np.ceil((y + step0) / mds)), y0 + 1), max(int(np.ceil((x + step0) / mds)), x0 + 1)
                frac = float(mask[y0:y1, x0:x1].mean()) if mask[y0:y1, x0:x1].size else 0.0
                if frac >= min_tissue:
                    coords.append((int(round(x)), int(round(y))))
                    fractions.append(frac)
                else:
                    n_bg += 1
        return TileGrid(np.asarray(coords, np.int64).reshape(-1, 2), np.asarray(fractions, np.float32), level,
                        read_size, tile_size, target, n_bg)

    def read_tile(self, grid: TileGrid, index: int) -> np.ndarray:
        x, y = grid.coords[index]
        region = self.read_region(x, y, grid.level, (grid.read_size, grid.read_size))
        if grid.read_size != grid.tile_size:
            from PIL import Image

            region = np.asarray(Image.fromarray(region).resize((grid.tile_size, grid.tile_size), Image.BILINEAR))
        return region

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None

    def __enter__(self) -> "WholeSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFLATE = (8, 32946)  # TIFF's Adobe and old-style deflate: zlib streams, adler-32 checked
_SPARSE_TILE_VENDORS = ("philips",)  # formats whose spec makes a 0-byte tile background
_TIFF_TILE_MULTIPLE = 16  # TIFF 6.0: tile width and length are multiples of 16


@dataclass(frozen=True)
class _TiledImage:
    """One tiled image (pyramid level) of a TIFF-based slide, as its IFD declares it."""

    index: int  # IFD number
    width: int
    length: int
    tile_width: int
    tile_length: int
    grid_columns: int
    offsets: tuple[int, ...]  # per tile (per sample plane after the first when planar)
    counts: tuple[int, ...]
    compression: int
    tile_bytes: int  # decoded bytes of one tile (one sample plane when planar)

    def tiles_covering(self, x0: float, y0: float, width: int, height: int) -> list[int]:
        """Indices of the tiles (every sample plane) that a region of this image touches."""
        columns = range(max(int(x0 // self.tile_width), 0),
                        min(int(-(-(x0 + width) // self.tile_width)), self.grid_columns))
        grid_rows = -(-self.length // self.tile_length)
        rows = range(max(int(y0 // self.tile_length), 0), min(int(-(-(y0 + height) // self.tile_length)), grid_rows))
        per_plane = self.grid_columns * grid_rows
        return [plane + r * self.grid_columns + c for plane in range(0, len(self.offsets), per_plane)
                for r in rows for c in columns]


def _check_tiff_levels(path: Path) -> tuple[_TiledImage, ...]:
    """Refuse a TIFF-based slide whose images OpenSlide would mis-read or over-allocate for;
    -> its tiled images, for checking tile data where it is read (:func:`_verify_tiles`).

    Every image holds the tiles (or strips) its declared size needs, inside the file:
    OpenSlide reads a missing tile as transparent, i.e. white, so an IFD claiming 512 x 100000
    pixels over 4 tiles would read as a slide of blank tiles. A tiled image's tiles are
    multiples of 16 pixels (TIFF 6.0) and one decoded RGBA tile fits the allocation limit:
    OpenSlide allocates a whole tile before decoding it and its GLib aborts the process when
    that fails (a TileLength of 2**31 - 1 asks for 512 GB)."""
    import tifffile

    with open(path, "rb") as fh:
        if fh.read(4) not in _TIFF_MAGIC:
            return ()  # not TIFF-based (MIRAX, ...): OpenSlide's own checks only
    size = path.stat().st_size
    tiled = []
    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                declared = int(np.prod(page.chunked))  # tiles/strips, times the sample planes when planar
                offsets, counts = page.dataoffsets, page.databytecounts
                if len(offsets) != declared or len(counts) != declared:
                    raise InconsistentDataError(
                        path, f"TIFF image {index} declares {page.imagewidth}x{page.imagelength} pixels in "
                        f"{declared} tiles/strips, the file lists {len(offsets)}"
                    )
                end = max((o + c for o, c in zip(offsets, counts)), default=0)
                if end > size:  # truncated
                    raise CorruptFileError(
                        path, f"TIFF image {index}'s tile data ends at byte {end}, past the end of the file ({size} bytes)"
                    )
                if page.is_tiled:
                    tiled.append(_tiled_image(path, index, page))
    except (tifffile.TiffFileError, ValueError, struct.error, IndexError, KeyError, TypeError) as exc:
        raise CorruptFileError(path, f"TIFF structure cannot be parsed ({type(exc).__name__}: {exc})") from None
    return tuple(tiled)


def _tiled_image(path: Path, index: int, page) -> _TiledImage:
    tile_width, tile_length = int(page.tilewidth), int(page.tilelength)
    if tile_width % _TIFF_TILE_MULTIPLE or tile_length % _TIFF_TILE_MULTIPLE or page.tiledepth != 1:
        raise InconsistentDataError(
            path, f"TIFF image {index} declares tiles of {tile_width}x{tile_length}x{page.tiledepth} pixels "
            f"(TIFF tiles are 2-D, sides multiples of {_TIFF_TILE_MULTIPLE})"
        )
    check_declared_size(path, (tile_length, tile_width), 4, f"TIFF image {index}'s RGBA tile (length, width)")
    bits = page.bitspersample
    if not isinstance(bits, int):
        raise InconsistentDataError(path, f"TIFF image {index} declares different bits per sample {tuple(bits)}")
    planar = page.planarconfig == 2
    row_bytes = -(-tile_width * (1 if planar else page.samplesperpixel) * bits // 8)
    return _TiledImage(index, int(page.imagewidth), int(page.imagelength), tile_width, tile_length,
                       -(-int(page.imagewidth) // tile_width), tuple(page.dataoffsets), tuple(page.databytecounts),
                       int(page.compression), row_bytes * tile_length)


def _verify_tiles(path: Path, image: _TiledImage, tiles: list[int], sparse_allowed: bool) -> None:
    """Refuse a tile about to be read that is empty where the format has no sparse tiles
    (OpenSlide would read it as white glass), or whose deflate stream is damaged: OpenSlide's
    libtiff stops inflating once a tile's buffer is full, so a stream whose checksum or tail
    is damaged, or whose bytes decode to other pixels, reads without complaint."""
    with open(path, "rb") as fh:
        for tile in tiles:
            if image.counts[tile] == 0:
                if sparse_allowed:
                    continue  # the format's way of saying background: OpenSlide reads it as white
                raise CorruptFileError(path, f"TIFF image {image.index}'s tile {tile} holds no data (0 bytes)")
            if image.compression not in _DEFLATE:
                continue  # no checksum to hold the data to: the decoder's own checks only
            fh.seek(image.offsets[tile])
            inflate = zlib.decompressobj()
            try:
                decoded = len(inflate.decompress(fh.read(image.counts[tile]), image.tile_bytes + 1))
            except zlib.error as exc:
                raise CorruptFileError(path, f"TIFF image {image.index}'s tile {tile} is damaged ({exc})") from None
            if not inflate.eof or decoded != image.tile_bytes:
                raise CorruptFileError(
                    path, f"TIFF image {image.index}'s tile {tile} decodes to {decoded} bytes "
                    f"{'' if inflate.eof else 'of an unfinished stream '}where a tile holds {image.tile_bytes}"
                )


@reader_boundary("slide")
def read_wsi(path: str | Path, mpp: float | None = None) -> WholeSlide:
    """Open a whole-slide image (any format OpenSlide reads, incl. pyramidal tiled TIFF).
    ``mpp`` overrides / supplies the microns per pixel when the file lacks them."""
    return WholeSlide(path, mpp=mpp)


class ColorTextureEncoder:
    """Frozen tile encoder: stain, colour and texture statistics (no learned weights).

    Features: RGB mean / std; haematoxylin, eosin, DAB optical densities (colour
    deconvolution, Ruifrok & Johnston 2001) mean / std; mean HSV saturation; mean
    gradient magnitude (texture); haematoxylin-positive area fraction; nuclei per mm^2
    (connected haematoxylin-rich blobs of nuclear size)."""

    names = ("r_mean", "g_mean", "b_mean", "r_std", "g_std", "b_std", "h_mean", "e_mean", "d_mean", "h_std",
             "e_std", "d_std", "saturation", "gradient", "h_area", "nuclei_per_mm2")
    h_threshold = 0.06  # haematoxylin OD above which a pixel is nuclear (~80th percentile of a real H&E tile)

    def __call__(self, tile: np.ndarray, mpp: float) -> np.ndarray:
        from scipy import ndimage
        from skimage.color import rgb2hed, rgb2hsv

        rgb = tile.astype(np.float32) / 255.0
        hed = rgb2hed(tile)
        grey = rgb.mean(axis=2)
        gradient = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)).mean()
        nuclear = hed[..., 0] > self.h_threshold
        labels, n = ndimage.label(ndimage.binary_opening(nuclear, iterations=1))
        min_px = max(1, int(round(4.0 / (mpp * mpp))))  # nuclei are at least ~2x2 um
        sizes = np.bincount(labels.ravel())[1:] if n else np.zeros(0)
        n_nuclei = int((sizes >= min_px).sum())
        area_mm2 = tile.shape[0] * tile.shape[1] * (mpp * 1e-3) ** 2
        return np.concatenate([
            rgb.mean((0, 1)), rgb.std((0, 1)), hed.mean((0, 1)), hed.std((0, 1)),
            [rgb2hsv(tile)[..., 1].mean(), gradient, nuclear.mean(), n_nuclei / area_mm2 / 1e4],
        ]).astype(np.float32)


def tile_order(n: int, max_tiles: int | None, seed: int) -> np.ndarray:
    """The tiles of a grid of ``n`` that are embedded: all, or a seeded sorted sample of ``max_tiles``."""
    order = np.arange(n)
    if max_tiles is not None and n > max_tiles:
        order = np.sort(np.random.default_rng(seed).choice(order, max_tiles, replace=False))
    return order


def feature_bag(slide: WholeSlide, magnification: float | None = 20, mpp: float | None = None,
                tile_size: int = 256, min_tissue: float = 0.5, max_tiles: int | None = None,
                encoder: Callable[[np.ndarray, float], np.ndarray] | None = None, seed: int = 0) -> FeatureBag:
    """Tile the slide's tissue and embed every tile (or a seeded sample of ``max_tiles``)."""
    encoder = encoder or ColorTextureEncoder()
    grid = slide.tiles(magnification=magnification if mpp is None else None, mpp=mpp, tile_size=tile_size,
                       min_tissue=min_tissue)
    if len(grid.coords) == 0:
        raise InconsistentDataError(slide.path, f"no tissue tile (of {grid.n_background} grid tiles) at "
                                                f"{grid.mpp:.2f} um/px")
    order = tile_order(len(grid.coords), max_tiles, seed)
    feats = np.stack([encoder(slide.read_tile(grid, int(i)), grid.mpp) for i in order]).astype(np.float32)
    names = tuple(getattr(encoder, "names", [f"f{i}" for i in range(feats.shape[1])]))
    return FeatureBag(feats, grid.coords[order], names, grid.mpp, tile_size)
