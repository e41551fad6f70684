"""Errors that reach the user as one line: ``<file>: <problem>``.

Every input problem perfnet can diagnose raises :class:`PerfnetInputError`; the CLI prints
its message on one line and exits with status 2, with no traceback and no partial output.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike


class PerfnetError(Exception):
    """Base class of perfnet's own errors."""


class PerfnetInputError(PerfnetError):
    """Bad input: names the file (or argument) and the problem."""

    def __init__(self, source: str | PathLike[str] | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if self.source is None else f"{self.source}: {problem}")


@contextmanager
def about(source: str | PathLike[str] | None) -> Iterator[None]:
    """Name ``source`` in input errors raised inside the block that name no file of their own
    (e.g. "no voxel shows a contrast bolus" from deep inside the analysis)."""
    try:
        yield
    except PerfnetInputError as exc:
        if exc.source is None and source is not None:
            raise PerfnetInputError(source, exc.problem) from None
        raise
