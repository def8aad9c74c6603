"""What every medmm reader does before and around trusting a file.

1. A ceiling on what a file may ask a reader to allocate. A damaged or hostile header can declare an image of 65535 x 65535 x 100000 voxels; a
reader that believes it allocates terabytes or swaps the machine to a halt. Every medmm
reader checks the size its output would have *before* decoding, against
``MEDMM_MAX_DECODED_BYTES`` (bytes; default a quarter of physical memory), and raises
InconsistentDataError naming the file instead.

2. One boundary: the libraries underneath (pydicom, nibabel, wfdb) convert element
values lazily, so a damaged value can surface as a ValueError, struct.error,
IndexError ... far from the parser. :func:`reader_boundary` turns those into
CorruptFileError naming the file and the library's own words, so that a caller only
ever sees MedmmInputError for bad input (the fuzz tests hold readers to this).
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, TypeVar

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError

__all__ = ["LIMIT_ENV", "check_declared_size", "max_decoded_bytes", "reader_boundary"]

F = TypeVar("F", bound=Callable[..., Any])

# what a library raises on a damaged value (not MemoryError / KeyboardInterrupt / bugs in
# medmm's own arguments, which are ValueError raised before any file is touched)
_LIBRARY_ERRORS = (
    ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, EOFError,
    struct.error, zlib.error, UnicodeDecodeError, NotImplementedError, RuntimeError, OSError,
)

LIMIT_ENV = "MEDMM_MAX_DECODED_BYTES"


def max_decoded_bytes() -> int:
    value = os.environ.get(LIMIT_ENV)
    if value:
        return int(float(value))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # no sysconf: assume 16 GiB of RAM
        return 4 * 2**30


def check_declared_size(path: str | Path | None, shape: tuple[int, ...], itemsize: int, what: str) -> None:
    """Raise InconsistentDataError if ``shape`` of ``itemsize``-byte values is not a
    positive size within :func:`max_decoded_bytes`."""
    dims = [int(s) for s in shape]
    if any(d <= 0 for d in dims):
        raise InconsistentDataError(path, f"{what} declares a non-positive size {tuple(dims)}")
    total = int(itemsize)
    for d in dims:  # Python ints: no overflow for absurd headers
        total *= d
    limit = max_decoded_bytes()
    if total > limit:
        raise InconsistentDataError(
            path,
            f"{what} declares {tuple(dims)} values ({total / 2**30:.1f} GiB decoded), over the "
            f"{limit / 2**30:.1f} GiB limit ({LIMIT_ENV}): refusing to allocate",
        )


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    try:
        items = list(source)
    except TypeError:
        return repr(source)
    return str(items[0]) if len(items) == 1 else f"{len(items)} files starting {items[0] if items else '-'}"


def reader_boundary(what: str, source_arg: int = 0) -> Callable[[F], F]:
    """Decorate a reader whose positional argument ``source_arg`` names the file (or
    folder / list of files): library errors escaping it become CorruptFileError("cannot
    read <what> ...")."""

    def wrap(read: F) -> F:
        @functools.wraps(read)
        def guarded(*args, **kwargs):
            try:
                return read(*args, **kwargs)
            except MedmmInputError:
                raise
            except _LIBRARY_ERRORS as exc:
                source = args[source_arg] if len(args) > source_arg else "<unknown input>"
                raise CorruptFileError(
                    _describe(source), f"cannot read {what}: a damaged value ({type(exc).__name__}: {str(exc)[:300]})"
                ) from exc

        return guarded  # type: ignore[return-value]

    return wrap
