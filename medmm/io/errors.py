"""medmm's own exception types for bad input.

Every reader raises one of these (never a bare library error) so that a pipeline can
skip-and-count a bad sample, and so that the message always names the file and the
problem.
"""

from __future__ import annotations

from pathlib import Path


class MedmmInputError(Exception):
    """Bad input: the message names the file and what is wrong with it."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        where = self.path if self.path is not None else "<in-memory input>"
        super().__init__(f"{where}: {problem}")


class CorruptFileError(MedmmInputError):
    """The file cannot be parsed (truncated, wrong format, missing data)."""


class InconsistentDataError(MedmmInputError):
    """The file parses but its content disagrees with itself or with expectations
    (header vs data size, NaNs in a signal, empty report, ...)."""
