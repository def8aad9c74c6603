"""JPEG and PNG radiographs (MIMIC-CXR-JPG, CheXpert): one file -> a grayscale float array.

Pixels follow :mod:`medmm.io.dicom`'s rule, higher = brighter: an exported radiograph is
already display-ready, so its stored values are kept as they are (0..255 for 8-bit,
0..65535 for 16-bit PNG). A colour or palette file is reduced to luminance (ITU-R 601-2,
Pillow's ``L`` conversion).

A file is recognised by its first bytes (the JPEG SOI marker, the PNG signature), never by
its name. :func:`check_raster` tells whether a file is complete without decoding it (its
header parses and it ends with the format's end marker: JPEG's EOI, PNG's IEND chunk), the
check cohort ingest runs on every image; :func:`read_raster` decodes it. Both raise
:class:`MedmmInputError` subclasses naming the file; a cut-off file is ``truncated``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.guard import BoundedReader, check_declared_size, reader_boundary

__all__ = ["RasterImage", "check_raster", "raster_format", "read_raster"]

_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
_TAIL = 64  # bytes read from a file's end to find its end marker


@dataclass(frozen=True, eq=False)
class RasterImage:
    """One decoded JPEG / PNG radiograph.

    Attributes:
        pixels: float32 ``[rows, cols]``, the stored grayscale values (luminance for colour).
        bit_depth: bits per stored sample: 8, or 16 for a 16-bit PNG.
        format: ``"JPEG"`` or ``"PNG"``.
    """

    pixels: np.ndarray
    bit_depth: int
    format: str


def raster_format(path: str | os.PathLike) -> str | None:
    """``"JPEG"`` or ``"PNG"`` by the file's first bytes; None for anything else (or no file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return next((fmt for sig, fmt in _SIGNATURES.items() if head.startswith(sig)), None)


def _check_end(where: str, fmt: str) -> None:
    """A cut-off file lacks its format's end marker (JPEG: EOI, after any zero padding;
    PNG: the IEND chunk as the last 12 bytes)."""
    size = os.path.getsize(where)
    with open(where, "rb") as fh:
        fh.seek(max(size - _TAIL, 0))
        tail = fh.read()
    if fmt == "PNG" and not tail.endswith(_PNG_IEND):
        raise CorruptFileError(where, "truncated: the PNG file does not end with its IEND chunk")
    if fmt == "JPEG" and not tail.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise CorruptFileError(where, "truncated: the JPEG file does not end with its end-of-image marker")


@contextmanager
def _opened(where: str) -> Iterator[tuple[Image.Image, str]]:
    """The file opened by Pillow over a BoundedReader (Pillow reads a chunk whole by its
    declared length: a damaged length is refused, not allocated), closed on exit."""
    fmt = raster_format(where)
    if fmt is None:
        if not os.path.isfile(where):
            raise MedmmInputError(where, "cannot open file (no such file)")
        raise CorruptFileError(where, "not a JPEG or PNG file (its first bytes are neither signature)")
    _check_end(where, fmt)
    with BoundedReader(where) as fh:
        try:
            with warnings.catch_warnings():  # the size check below replaces Pillow's bomb warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise InconsistentDataError(where, f"the header declares an image too large to decode ({exc})") from exc
        except OSError as exc:
            raise CorruptFileError(where, f"cannot parse the {fmt} header ({exc})") from exc
        with image:
            cols, rows = image.size
            check_declared_size(where, (rows, cols, len(image.getbands())), 4, f"{fmt} header (rows, columns, bands)")
            yield image, fmt


@reader_boundary("JPEG / PNG image")
def check_raster(path: str | os.PathLike) -> tuple[str, int, int]:
    """``(format, rows, columns)`` of a complete JPEG / PNG file, without decoding its pixels.

    Raises:
        CorruptFileError: not JPEG / PNG, an unparseable header, or ``truncated`` (no end marker).
        InconsistentDataError: the header declares an image too large to decode.
    """
    with _opened(str(path)) as (image, fmt):
        cols, rows = image.size
    return fmt, rows, cols


@reader_boundary("JPEG / PNG image")
def read_raster(path: str | os.PathLike) -> RasterImage:
    """Read one JPEG / PNG radiograph into a :class:`RasterImage` (grayscale float32).

    Raises:
        CorruptFileError: not JPEG / PNG, truncated, or the pixel data cannot be decoded.
        InconsistentDataError: the header declares an image too large to decode, or the
            decoded array is not 2-D.
        MedmmInputError: the file cannot be opened.
    Every message starts with the path.
    """
    where = str(Path(path))
    with _opened(where) as (image, fmt):
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptFileError(where, f"cannot decode the {fmt} pixel data ({exc})") from exc
        mode = image.mode
        if mode.startswith("I;16") or mode == "I":
            arr, depth = np.asarray(image), 16
        elif mode == "F":
            arr, depth = np.asarray(image), 32
        elif mode == "L":
            arr, depth = np.asarray(image), 8
        elif mode == "LA":
            arr, depth = np.asarray(image.getchannel("L")), 8
        else:  # RGB, RGBA, CMYK, YCbCr, palette, bilevel: luminance
            arr, depth = np.asarray(image.convert("L")), 8
    if arr.ndim != 2:
        raise InconsistentDataError(where, f"expected a grayscale image, decoded shape {arr.shape}")
    return RasterImage(pixels=np.ascontiguousarray(arr, dtype=np.float32), bit_depth=depth, format=fmt)
