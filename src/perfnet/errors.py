"""Errors that reach the user as one line: ``<file>: <problem>``.

Every input problem perfnet can diagnose raises :class:`PerfnetInputError`; the CLI prints
its message on one line and exits with status 2, with no traceback and no partial output.
"""

from __future__ import annotations

from os import PathLike


class PerfnetError(Exception):
    """Base class of perfnet's own errors."""


class PerfnetInputError(PerfnetError):
    """Bad input: names the file (or argument) and the problem."""

    def __init__(self, source: str | PathLike[str] | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if self.source is None else f"{self.source}: {problem}")
