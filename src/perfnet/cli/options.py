"""Value types and shared options of the ``perfnet`` command's arguments; usage errors in one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from perfnet import plausibility
from perfnet.errors import PerfnetInputError

EXIT_INPUT_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``perfnet: error: …``) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"perfnet: error: {self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)


def ranged(name: str, label: str) -> Callable[[str], float]:
    """argparse type: a number inside :data:`perfnet.plausibility.RANGES` [name]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            return plausibility.check(name, value, None, label)
        except PerfnetInputError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    return parse


def fraction(text: str) -> float:
    value = positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive_float(text: str) -> float:
    value = _float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _range(text: str, number: Callable[[str], float]) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be LO,HI, got {text!r}")
    lo, hi = (number(p.strip()) for p in parts)
    if lo > hi:
        raise argparse.ArgumentTypeError(f"LO must not exceed HI, got {text}")
    return lo, hi


def positive_range(text: str) -> tuple[float, float]:
    """argparse type: ``LO,HI``, two positive finite numbers with LO ≤ HI."""
    return _range(text, positive_float)


def _unit(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def unit_range(text: str) -> tuple[float, float]:
    """argparse type: ``LO,HI``, two numbers in [0, 1] with LO ≤ HI."""
    return _range(text, _unit)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_input_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", type=str.upper, choices=["CT", "MR"], help="override the modality")
    parser.add_argument(
        "--frame-interval",
        type=ranged("frame_interval_s", "frame interval (s)"),
        metavar="S",
        help="uniform frame interval in s",
    )
    parser.add_argument(
        "--echo-time", type=ranged("echo_time_s", "echo time (s)"), metavar="S", help="MR echo time in s"
    )


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} even if it holds files perfnet did not write (they are deleted)",
    )
