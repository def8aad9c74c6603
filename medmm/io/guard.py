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
MemoryError is never bad input: it is re-raised as it is, even where a reader's own
``except`` wrapped it, so that a skip-and-count pipeline never drops a good sample
because the machine ran short of memory.

3. Reads bounded by the file: :class:`BoundedReader` hands a parser a file object that
refuses to read past the end, so a length field of 0xFFFFFFF0 in a 200-byte file is an
error naming the file instead of a 4 GiB allocation.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydicom.errors import BytesLengthException

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError

__all__ = ["LIMIT_ENV", "BoundedReader", "check_declared_size", "max_decoded_bytes", "reader_boundary"]

F = TypeVar("F", bound=Callable[..., Any])

# what a library raises on a damaged value (not MemoryError / KeyboardInterrupt / bugs in
# medmm's own arguments, which are ValueError raised before any file is touched)
_LIBRARY_ERRORS = (
    ValueError, TypeError, KeyError, AttributeError, IndexError, ArithmeticError, EOFError,
    struct.error, zlib.error, UnicodeDecodeError, NotImplementedError, RuntimeError, OSError,
    BytesLengthException,
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


class BoundedReader(io.BufferedReader):
    """A buffered binary file whose ``read(n)`` refuses (InconsistentDataError) a large
    ``n`` beyond the bytes left: Python allocates ``n`` bytes before reading, so a damaged
    length field would otherwise cost its full declared size in memory. Short reads past
    the end (how parsers find EOF or a truncated preamble) behave as on any file."""

    harmless = 2**20  # bytes a read may ask for past the end: its allocation costs nothing

    def __init__(self, path: str | Path):
        raw = io.FileIO(str(path), "rb")
        super().__init__(raw)
        self.size = os.fstat(raw.fileno()).st_size
        self.where = str(path)

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > self.harmless:
            left = self.size - self.tell()
            if size > left:
                raise InconsistentDataError(
                    self.where, f"a length field at byte {self.tell()} declares {size} bytes, "
                    f"only {max(left, 0)} are left in the file ({self.size} bytes)"
                )
        return super().read(size)


def _memory_error_in(exc: BaseException) -> MemoryError | None:
    """The MemoryError a reader's own ``except`` wrapped into a medmm error, if any."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, MemoryError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


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
            except MedmmInputError as exc:
                memory = _memory_error_in(exc)
                if memory is not None:
                    raise memory from None
                raise
            except _LIBRARY_ERRORS as exc:
                source = args[source_arg] if len(args) > source_arg else "<unknown input>"
                raise CorruptFileError(
                    _describe(source), f"cannot read {what}: a damaged value ({type(exc).__name__}: {str(exc)[:300]})"
                ) from exc

        return guarded  # type: ignore[return-value]

    return wrap
