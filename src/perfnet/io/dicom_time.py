"""DICOM time values → seconds, and the choice of where a series' frame times come from.

DICOM stores times as text: TM ``HHMMSS.FFFFFF`` (older files also ``HH:MM:SS.frac``), DT
``YYYYMMDDHHMMSS.FFFFFF&ZZXX`` and TriggerTime as a number of ms. Frame times are read from the
first source, in :data:`TIME_SOURCES` order, that every image of a series carries without repeating
a value within a slice; index-only sources (:data:`INDEX_SOURCES`) give the frame order but no times.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from perfnet.errors import PerfnetInputError

#: Sources with real times, in order of preference (enhanced files first: their per-frame tags).
TIME_SOURCES = (
    "FrameAcquisitionDateTime",
    "AcquisitionDateTime",
    "AcquisitionTime",
    "ContentTime",
    "FrameReferenceDateTime",
    "TriggerTime",
)
#: Sources that only order frames; times then need a frame interval.
INDEX_SOURCES = ("TemporalPositionIndex", "TemporalPositionIdentifier", "InstanceNumber", "FrameNumber")
#: Sources holding a time of day (TM), which wraps at midnight.
_TIME_OF_DAY = ("AcquisitionTime", "ContentTime")
_DAY = 86400.0


def parse_tm(value: Any) -> float | None:
    """Seconds after midnight of a DICOM TM value, or None when empty or malformed.

    >>> parse_tm("075034.818247"), parse_tm("07:50:34.5"), parse_tm("0750")
    (28234.818247, 28234.5, 28200.0)
    """
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    try:
        if ":" in text:
            parts = text.split(":")
            hours, minutes = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
            seconds = float(parts[2]) if len(parts) > 2 and parts[2] else 0.0
        else:
            whole, _, fraction = text.partition(".")
            if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
                return None
            hours = int(whole[0:2])
            minutes = int(whole[2:4]) if len(whole) >= 4 else 0
            seconds = float(whole[4:6] + "." + (fraction or "0")) if len(whole) >= 6 else 0.0
    except ValueError:
        return None
    if not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 61):
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def parse_dt(value: Any) -> float | None:
    """Seconds since 1970-01-01 of a DICOM DT value (UTC offset ignored), or None when malformed.

    >>> parse_dt("20190124075034.5") - parse_dt("20190124")
    28234.5
    """
    text = str(value).strip() if value is not None else ""
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        day = dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None
    time_of_day = parse_tm(text[8:]) if text[8:] else 0.0
    if time_of_day is None:
        return None
    return (day - dt.date(1970, 1, 1)).days * _DAY + time_of_day


def parse_time(source: str, value: Any) -> float | None:
    """A time value of the named source in s (TM, DT, TriggerTime ms), or an index as float."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if source.endswith("DateTime"):
        return parse_dt(value)
    if source in _TIME_OF_DAY:
        return parse_tm(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number):
        return None
    return number / 1000.0 if source == "TriggerTime" else number


def unwrap_midnight(source: str, seconds: np.ndarray) -> np.ndarray:
    """Times of day that cross midnight made monotonic: a series never lasts 12 h, so when the
    values span more than 12 h the early-morning ones belong to the next day."""
    seconds = np.asarray(seconds, dtype=np.float64)
    if source in _TIME_OF_DAY and seconds.size and np.ptp(seconds) > _DAY / 2:
        seconds = np.where(seconds < _DAY / 2, seconds + _DAY, seconds)
    return seconds


def order_frames(
    source: Path,
    time_values: list[dict[str, float]],
    image_names: list[str],
    labels: np.ndarray,
    frame_interval: float | None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Sort each slice's images by time.

    Args:
        source: the series' file or folder (named in errors).
        time_values: per image, source name → value (:func:`parse_time`).
        image_names: per image, a name for messages (file, and frame of a multi-frame file).
        labels: per image, its slice 0..Z-1; every slice holds the same number of images.
        frame_interval: uniform interval in s that replaces the header times.

    Returns:
        Image indices (Z, T), frame times (T,) in s from 0 (per frame the mean over slices) and
        their source. The first source every image carries without repeating a value within a
        slice is used; one that repeats (some scanners write one time for a whole series) is
        skipped, and is named in the error when no source is left.
    """
    problem = ""
    n_slices = int(labels.max()) + 1
    for name in TIME_SOURCES + INDEX_SOURCES:
        found = [values.get(name) for values in time_values]
        if any(v is None for v in found):
            continue
        values = unwrap_midnight(name, np.asarray(found, dtype=np.float64))
        rows, duplicate = [], ""
        for k in range(n_slices):
            members = np.flatnonzero(labels == k)
            members = members[np.argsort(values[members], kind="stable")]
            repeated = np.flatnonzero(np.diff(values[members]) <= 1e-6)
            if repeated.size:
                first, second = (image_names[members[repeated[0] + i]] for i in (0, 1))
                duplicate = f"duplicate frames: {first} and {second} have the same {name} at one position"
                break
            rows.append(members)
        if duplicate:
            problem = problem or duplicate
            continue
        order = np.stack(rows)
        if frame_interval is not None:
            return order, np.arange(order.shape[1]) * float(frame_interval), "--frame-interval"
        if name in INDEX_SOURCES:
            detail = f"; {problem}" if problem else ""
            raise PerfnetInputError(
                source,
                f"no frame times in the DICOM headers (frames ordered by {name} only{detail}): "
                "pass --frame-interval",
            )
        times = values[order].mean(axis=0)
        return order, times - times[0], name
    raise PerfnetInputError(source, problem or "no frame times and no frame order in the DICOM headers")
