"""The ``perfnet`` command: parsing (:mod:`perfnet.cli.parser`), the commands, which call
:func:`perfnet.analyze` and the packages and print (:mod:`perfnet.cli.study_commands`,
:mod:`perfnet.cli.cohort_commands`), and here the one place that turns errors into exit statuses.

Input problems end with one line ``perfnet: error: <file>: <problem>`` and exit status 2.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perfnet import __version__
from perfnet.errors import PerfnetError, PerfnetInputError

EXIT_INPUT_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that output folders are cleaned up on the way out."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _crash_log(argv: Sequence[str]) -> Path | None:
    """The traceback of an internal error in a log file (the command's arguments, which may be
    paths named after a patient, are replaced by their position)."""
    text = traceback.format_exc()
    for i, arg in sorted(enumerate(argv), key=lambda a: -len(a[1])):
        if len(arg) > 2 and not arg.startswith("-"):
            text = text.replace(arg, f"<argument {i + 1}>")
    try:
        handle, name = tempfile.mkstemp(
            prefix=f"perfnet-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log"
        )
        with open(handle, "w") as f:
            f.write(f"perfnet {__version__}\n{text}")
    except OSError:
        return None
    return Path(name)


def _stopped_by(exc: BaseException) -> tuple[str, int] | None:
    """("interrupted", 130) or ("terminated", 143) when ``exc`` was raised while the command was
    being stopped by Ctrl-C or SIGTERM (its chain of causes holds the interruption), else None."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, KeyboardInterrupt):
            return "interrupted", EXIT_INTERRUPTED
        if isinstance(link, Terminated):
            return "terminated", EXIT_TERMINATED
        link = link.__cause__ or link.__context__
    return None


def _one_line_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    print(f"perfnet: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done; 2 bad input or usage (one line naming the file or
    option, no output written); 1 an internal error (one line and the path of a log file with
    the traceback); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    show_warning = warnings.showwarning
    warnings.showwarning = _one_line_warning  # perfnet's own warnings: one line each, no source
    try:
        from perfnet.cli.parser import build_parser

        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error already printed in one line
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_INPUT_ERROR
        return int(args.func(args))
    except PerfnetInputError as exc:
        print(f"perfnet: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except PerfnetError as exc:
        print(f"perfnet: error: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    except KeyboardInterrupt:
        print("perfnet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("perfnet: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except MemoryError:
        print(
            "perfnet: error: out of memory (a smaller series, or a machine with more memory)", file=sys.stderr
        )
        return EXIT_UNEXPECTED
    except Exception as exc:
        stopped = _stopped_by(exc)
        if stopped is not None:  # e.g. a worker process that died of the same signal, noticed first
            print(f"perfnet: {stopped[0]}", file=sys.stderr)
            return stopped[1]
        if debug:
            raise
        text = str(exc).strip().splitlines()
        log = _crash_log(argv)
        where = f"; traceback in {log}" if log else ""
        print(
            f"perfnet: internal error: {type(exc).__name__}: {text[0] if text else ''}{where}"
            " (please report it)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
