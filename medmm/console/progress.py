"""Progress bars for the long steps of a command (ingest, decode, train, evaluate, index
build), drawn by rich on stderr.

A bar is drawn when stderr is a terminal; ``MEDMM_PROGRESS=1`` forces it (e.g. in a
notebook or a log file) and ``MEDMM_PROGRESS=0`` hides it (tests, batch jobs). A bar never
shows a file name or an identifier: the description is the step's name, the count is items.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_enabled() -> bool:
    """Whether bars are drawn: ``MEDMM_PROGRESS`` when set, else whether stderr is a terminal."""
    forced = os.environ.get("MEDMM_PROGRESS")
    if forced is not None:
        return forced.strip() not in ("", "0", "false", "no")
    return sys.stderr.isatty()


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` while a bar counts them (``total`` defaults to ``len(items)`` where it
    has one; without it the bar counts up with a spinner)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not progress_enabled():
        yield from items
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
