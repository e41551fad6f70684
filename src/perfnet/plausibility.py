"""Plausible ranges of what perfnet reads and is told, stated once.

A value outside its range is refused with a one-line error naming the file (or the option) and
the problem: a series in milliseconds or kilometres, an affine that collapses a dimension, a
corrupt voxel at 3·10³⁸ or a CT series labelled MR would otherwise be analysed without complaint
into maps that look like maps. The README's "Failure behaviour" section lists this table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from perfnet.errors import PerfnetInputError


@dataclass(frozen=True)
class Range:
    """A closed interval [lo, hi] in ``unit``, with the reason for its bounds."""

    lo: float
    hi: float
    unit: str
    why: str

    def text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.lo:g}–{self.hi:g}{unit}"


RANGES: dict[str, Range] = {
    "frame_interval_s": Range(
        0.05, 30.0, "s", "CTP frames every 0.5–4 s (late phases up to ~15 s), DSC TR 0.3–3 s"
    ),
    "duration_s": Range(0.0, 600.0, "s", "a first pass lasts under a minute; no protocol scans 10 min"),
    "voxel_size_mm": Range(0.05, 20.0, "mm", "CT/MR pixels 0.2–4 mm, slices up to ~10 mm"),
    "echo_time_s": Range(0.001, 0.25, "s", "DSC gradient echo TE 20–50 ms, spin echo up to ~110 ms"),
    "hematocrit_factor": Range(
        0.3, 1.5, "", "kH = (1 − Hct_large)/(1 − Hct_small), 0.69–0.73 (Rempp 1994); 1 in OSIPI's vectors"
    ),
    "tissue_density": Range(0.9, 1.2, "g/mL", "brain 1.04 g/mL; 1 in OSIPI's vectors"),
    "temporal_smoothing_s": Range(0.0, 10.0, "s", "σ beyond a few seconds erases the bolus"),
    "ct_hu": Range(-4096.0, 32767.0, "HU", "int16 CT numbers; padding down to −3024"),
}

#: A perfusion analysis needs a baseline and the bolus passage: fewer frames cannot hold both.
MIN_FRAMES = 8
#: Nor can an image smaller than this (pixels per in-plane axis) hold tissue, an artery and a vein
#: (OSIPI's 25×25 arterial test image is the smallest perfnet is tested on).
MIN_MATRIX = 8
#: MR magnitude is never negative; a DSC series with this fraction of voxels below −5 % of its
#: 99th percentile is CT (air at −1000 HU) or phase data.
MR_NEGATIVE_FRACTION = 0.01
#: A value this many times the series' 99.9th percentile (absolute) is a corrupt voxel, not signal.
OUTLIER_FACTOR = 1000.0


def check(name: str, value: float, source: str | PathLike[str] | None, label: str | None = None) -> float:
    """``value`` if it lies in ``RANGES[name]``, else a one-line input error."""
    r = RANGES[name]
    value = float(value)
    if not math.isfinite(value) or not r.lo <= value <= r.hi:
        what = label or name.replace("_", " ")
        raise PerfnetInputError(source, f"{what} {value:g} is implausible (expected {r.text()}: {r.why})")
    return value


def check_frame_times(times: np.ndarray, source: Any) -> None:
    """Frame intervals and duration in range; a hint when the times look like milliseconds."""
    intervals = np.diff(np.asarray(times, dtype=np.float64))
    if intervals.size == 0:
        return
    median = float(np.median(intervals))
    hint = "; are the frame times in milliseconds?" if median > RANGES["frame_interval_s"].hi else ""
    try:
        check("frame_interval_s", median, source, "median frame interval (s)")
        check("frame_interval_s", float(intervals.max()), source, "longest frame interval (s)")
        check("frame_interval_s", float(intervals.min()), source, "shortest frame interval (s)")
        check("duration_s", float(times[-1] - times[0]), source, "acquisition duration (s)")
    except PerfnetInputError as exc:
        raise PerfnetInputError(source, exc.problem + hint) from None


def check_affine(affine: np.ndarray, source: Any) -> None:
    """Voxel sizes in range and the three voxel axes independent (no collapsed dimension)."""
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(columns, axis=0)
    for axis, size in zip("xyz", sizes, strict=True):
        check("voxel_size_mm", float(size), source, f"voxel size along {axis} (mm)")
    # |det| / Π‖column‖ is 1 for orthogonal axes and 0 for a singular (rank-deficient) matrix
    orthogonality = abs(float(np.linalg.det(columns))) / float(np.prod(sizes))
    if not orthogonality > 0.1:
        raise PerfnetInputError(source, "the affine is singular or nearly so: voxel axes are not independent")


def check_series_values(data: np.ndarray, modality: str, source: Any) -> None:
    """Signal values a scanner can produce in this modality (one pass plus a subsample)."""
    sample = np.asarray(data).reshape(-1)
    step = max(1, sample.size // 2_000_000)
    sub = sample[::step]
    if modality == "CT":
        r = RANGES["ct_hu"]
        low, high = float(data.min()), float(data.max())
        if low < r.lo or high > r.hi:
            bad = int(np.count_nonzero((data < r.lo) | (data > r.hi)))
            raise PerfnetInputError(
                source,
                f"{bad} values lie outside {r.text()} (min {low:.4g}, max {high:.4g}): "
                "corrupt data or not CT numbers",
            )
        return
    p99 = float(np.percentile(sub, 99.0))
    negative = float(np.mean(sub < -0.05 * max(p99, 1e-12))) if p99 > 0 else 1.0
    if negative > MR_NEGATIVE_FRACTION:
        raise PerfnetInputError(
            source,
            f"{100 * negative:.1f} % of the values are negative, which DSC magnitude images never are "
            "(CT with air at −1000 HU? pass --modality CT)",
        )
    reference = float(np.percentile(np.abs(sub), 99.9))
    peak = float(np.abs(data).max())
    if reference > 0 and peak > OUTLIER_FACTOR * reference:
        bad = int(np.count_nonzero(np.abs(data) > OUTLIER_FACTOR * reference))
        raise PerfnetInputError(
            source,
            f"{bad} values exceed {OUTLIER_FACTOR:g}× the 99.9th percentile ({peak:.3g} vs {reference:.3g}): "
            "corrupt data",
        )


def check_for_analysis(series: Any) -> None:
    """What :func:`perfnet.conventional.pipeline.analyze` and the CNN need beyond a loadable series."""
    source = series.meta.get("source")
    if series.n_frames < MIN_FRAMES:
        raise PerfnetInputError(
            source, f"{series.n_frames} frames: a perfusion analysis needs at least {MIN_FRAMES}"
        )
    nx, ny = series.spatial_shape[:2]
    if min(nx, ny) < MIN_MATRIX:
        raise PerfnetInputError(
            source,
            f"{nx}×{ny} pixels: too small an image for a perfusion analysis "
            f"(at least {MIN_MATRIX}×{MIN_MATRIX})",
        )
    check_series_values(series.data, series.modality, source)
