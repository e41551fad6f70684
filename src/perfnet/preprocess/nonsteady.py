"""Non-steady-state leading frames: detected, removed, and the clock kept.

MR (DSC, a fast gradient-echo or EPI train): the longitudinal magnetisation starts at M₀ and
approaches its steady state over the first excitations, M_n = M_ss + (M₀ − M_ss)·(cos α·e^(−TR/T1))ⁿ
(Haacke et al., *Magnetic Resonance Imaging: Physical Principles and Sequence Design*, 1999,
ch. 18), so the first 1–3 frames are *brighter* than the baseline that follows. CT: the first
frames of a run can be off for technical reasons (tube start-up, a table move), in either
direction. Left in, such a frame is read as the baseline (or as the start of the bolus): the
arrival is placed at frame 0 with a one-frame baseline, every concentration is offset, CBV
saturates, and motion correction registers every frame to an outlier.

Detection, on the raw series before anything else (motion correction uses frame 0 as reference):

1. frame curves: the quartiles (25, 50, 75 %) over tissue voxels of s(v, t)/r(v) − 1 (MR) or
   s(v, t) − r(v) (CT, HU), r(v) the voxel's temporal median over the frames after the candidates;
   tissue = a user brain mask or a window of the pre-bolus image (CT −15…100 HU, MR above 20 % of
   its robust maximum), eroded in-plane by :data:`EDGE_MARGIN_MM`. Quantiles over voxels ignore
   edges, vessels and the tissue mix;
2. the reference baseline: the frames after the first :data:`MAX_FRAMES` up to the last quiet
   frame before the bolus (:func:`perfnet.preprocess.bolus.threshold_onset` on the median curve),
   at least :data:`MIN_REFERENCE_FRAMES` of them (an early bolus: fewer candidates are judged;
   none left: nothing is removed);
3. per quartile curve, a leading frame's deviation d from the median of the reference must exceed
   max(:data:`NOISE_K`·σ, :data:`BOLUS_FRACTION`·A) — σ the frame-to-frame noise of the curve
   (robust, from second differences) or the spread of the reference when it drifts, A the
   bolus amplitude of the curve. A frame off by 5 % of the bolus amplitude, left in an N-frame
   baseline, shifts every concentration by 5 %/N of the peak and CBV (an integral over the whole
   acquisition) by about 5 % (N ≈ 8, a 60 s acquisition);
4. all three quartiles must move the same way, the way the physics predicts (MR: brighter; CT:
   either): a non-steady-state frame shifts the whole tissue distribution, head motion spreads it
   (some voxels brighter, some darker) and is left to motion correction — so is a table-move frame
   that only displaces the anatomy; ``--skip-frames`` removes it;
5. only the contiguous run from frame 0 counts, at most :data:`MAX_FRAMES` frames.

On randomised phantoms (20 CT + 20 MR studies, with and without head motion) nothing is removed
(largest score 0.9 of the threshold, with motion); T1 frames brighter by 30, 12 and 4.8 % and CT
frames offset by ±25 HU are found exactly.

The frames are dropped from the series (baseline *and* fit); the kept series starts at its own
t = 0 (as every :class:`~perfnet.io.types.PerfusionSeries` does) and ``offset_s`` — the original
time of the first kept frame — is added back to every absolute time (TTP, bolus arrival and peak,
``aif.json``'s times), so that TTP stays relative to the *original* first frame. Tmax, MTT, CBF
and CBV are relative or integral and need no shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from perfnet.errors import PerfnetInputError
from perfnet.io.types import PerfusionSeries
from perfnet.preprocess.bolus import noise_sd, smooth3, threshold_onset

#: At most this many leading frames are removed automatically (the approach to steady state of a
#: DSC train is over within 1–3 excitations; more needs ``--skip-frames``).
MAX_FRAMES = 3
#: Detection threshold in robust noise SDs of the frame curve ...
NOISE_K = 5.0
#: ... and at least this fraction of the bolus amplitude of the frame curve.
BOLUS_FRACTION = 0.05
#: Fewest quiet pre-bolus frames after the candidates needed to judge them.
MIN_REFERENCE_FRAMES = 2
#: Fewest frames that must remain (bolus detection needs 4; a fit needs more).
MIN_KEPT_FRAMES = 8
#: Quantiles over voxels of the frame curves (all three must move for a frame to be off).
QUARTILES = (0.25, 0.5, 0.75)
#: At most this many tissue voxels enter the frame curve (an evenly strided subset).
MAX_VOXELS = 100_000
#: In-plane erosion (mm) of the voxels of the frame curves.
EDGE_MARGIN_MM = 4.0
#: CT soft-tissue window (HU) of the voxels of the frame curve (brain, scalp, muscle; no air, bone).
CT_TISSUE_HU = (-15.0, 100.0)
#: MR: voxels brighter than this fraction of the robust (99th percentile) maximum of r(v).
MR_TISSUE_FRACTION = 0.2


@dataclass
class NonSteadyState:
    """Leading frames removed from a series, and why.

    Attributes:
        frames: number of leading frames removed (0: none).
        source: "detected" | "forced" (``--skip-frames N``) | "disabled" (``--skip-frames 0``).
        offset_s: original time of the first kept frame (s); add it to absolute times of the kept
            series (TTP) to put them back on the original clock.
        deviation: d_i of each candidate frame on the median curve (MR: signal relative to the baseline, −1;
            CT: HU).
        threshold: the detection threshold of the median curve (same units), None when not judged.
        score: per candidate frame, the smallest deviation of the three quartile curves in the
            direction judged, in units of each curve's threshold (> 1: off the baseline).
        reference_frames: [first, last] original indices of the reference baseline frames.
        units: of ``deviation`` and ``threshold`` ("HU" or "relative signal").
        note: why nothing was judged, when that happened.
    """

    frames: int
    source: str
    offset_s: float = 0.0
    deviation: list[float] = field(default_factory=list)
    threshold: float | None = None
    score: list[float] = field(default_factory=list)
    reference_frames: list[int] | None = None
    units: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for provenance.json (``non_steady_state_frames``)."""
        return {
            "frames": int(self.frames),
            "removed": list(range(self.frames)),
            "source": self.source,
            "offset_s": round(float(self.offset_s), 4),
            "deviation": [float(f"{d:.4g}") for d in self.deviation],
            "threshold": None if self.threshold is None else float(f"{self.threshold:.4g}"),
            "score": [round(v, 3) for v in self.score],
            "reference_frames": self.reference_frames,
            "units": self.units,
            "note": self.note,
            "rule": f"leading run of ≤ {MAX_FRAMES} frames whose tissue quartiles all move > max({NOISE_K:g} "
            f"noise SD, {BOLUS_FRACTION:g} × bolus amplitude) off the baseline; MR: brighter only",
        }


def tissue_voxels(
    data4d: np.ndarray,
    modality: str,
    mask: np.ndarray | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    skip: int = MAX_FRAMES,
) -> np.ndarray:
    """Flat indices of the voxels of the frame curves: ``mask`` (or a tissue window of the mean of
    four frames after ``skip``: CT −15…100 HU; MR above 20 % of its robust maximum) eroded in-plane
    by :data:`EDGE_MARGIN_MM` (head motion changes voxels at edges most), at most about
    :data:`MAX_VOXELS` of them, evenly strided."""
    if mask is None:
        reference = np.asarray(data4d[..., skip : skip + 4], dtype=np.float32).mean(axis=3)
        if modality == "CT":
            mask = (reference > CT_TISSUE_HU[0]) & (reference < CT_TISSUE_HU[1])
        else:
            mask = reference > MR_TISSUE_FRACTION * float(np.percentile(reference, 99.0))
    mask = np.asarray(mask, dtype=bool)
    pixel = 1.0 if voxel_size is None else max(min(voxel_size[0], voxel_size[1]), 1e-3)
    steps = int(np.clip(np.ceil(EDGE_MARGIN_MM / pixel), 1, 10))
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    inner = ndimage.binary_erosion(mask, structure=structure, iterations=steps)
    if inner.sum() >= max(0.1 * mask.sum(), 50):
        mask = inner
    index = np.flatnonzero(mask)
    return index[:: max(1, index.size // MAX_VOXELS)]


def frame_curves(values: np.ndarray, modality: str, skip: int = MAX_FRAMES) -> np.ndarray:
    """(3, T): the quartiles (25, 50, 75 %) over voxel curves ``values`` (V, T) of s/r − 1 (MR) or
    s − r (CT) in every frame, r the temporal median of each voxel over the frames from ``skip`` on."""
    r = np.median(values[:, skip:], axis=1)
    if modality == "MR":
        keep = r > 0
        values, r = values[keep], r[keep]
    if r.size == 0:
        return np.zeros((3, values.shape[1]))
    relative = values / r[:, None] - 1.0 if modality == "MR" else values - r[:, None]
    return np.quantile(relative, QUARTILES, axis=0)


def detect_non_steady_state(
    data4d: np.ndarray,
    times: np.ndarray,
    modality: str,
    mask: np.ndarray | None = None,
    voxel_size: tuple[float, float, float] | None = None,
) -> NonSteadyState:
    """Leading non-steady-state frames of a raw series (X, Y, Z, T) (see the module docstring).

    ``mask`` (bool X, Y, Z; e.g. a user brain mask) selects the voxels of the frame curves; by
    default a tissue window of the pre-bolus image (:func:`tissue_voxels`): a rough head mask is
    enough, the curves are quantiles. ``voxel_size`` (mm) sizes the in-plane edge erosion."""
    data4d = np.asarray(data4d)
    times = np.asarray(times, dtype=np.float64)
    modality = str(modality).upper()
    n_t = data4d.shape[3]
    if n_t < MAX_FRAMES + MIN_KEPT_FRAMES:
        return NonSteadyState(0, "detected", note="too few frames to judge")
    sign = 1.0 if modality == "CT" else -1.0  # the bolus raises sign·c
    index = tissue_voxels(data4d, modality, mask, voxel_size, MAX_FRAMES)
    values = data4d.reshape(-1, n_t)[index].astype(np.float64)
    for start in range(MAX_FRAMES, 0, -1):  # an early bolus leaves fewer candidates to judge
        curves = frame_curves(values, modality, start)
        quiet, _, _ = threshold_onset(sign * curves[1, start:])
        if quiet + 1 >= MIN_REFERENCE_FRAMES:
            break
    else:
        return NonSteadyState(0, "detected", note="no pre-bolus baseline after the candidate frames")
    deviations, thresholds = [], []
    for c in curves:
        reference = c[start : start + quiet + 1]
        base = float(np.median(reference))
        later = sign * c[start:]
        # frame-to-frame noise, or the spread of the reference itself when it drifts
        sd = max(noise_sd(later), 1.4826 * float(np.median(np.abs(reference - base))))
        amplitude = max(float(smooth3(later).max()) - sign * base, 0.0)
        # MR: relative to the baseline signal, not to the voxels' temporal median
        unit = 1.0 / (1.0 + base) if modality == "MR" and base > -1.0 else 1.0
        thresholds.append(max(NOISE_K * sd, BOLUS_FRACTION * amplitude, 1e-9) * unit)
        deviations.append((c[:start] - base) * unit)
    score = np.array(deviations) / np.array(thresholds)[:, None]  # (3 quartiles, candidates)
    # a global shift moves every quartile; head motion spreads them (one up, one down)
    brighter = score.min(axis=0)
    darker = -score.max(axis=0)
    shift = brighter if modality == "MR" else np.maximum(brighter, darker)
    off = shift > 1.0
    count = int(np.argmin(off)) if not off.all() else start
    return NonSteadyState(
        frames=count,
        source="detected",
        offset_s=float(times[count] - times[0]),
        deviation=[float(d) for d in deviations[1]],
        threshold=float(thresholds[1]),
        score=[float(v) for v in shift],
        reference_frames=[start, start + quiet],
        units="HU" if modality == "CT" else "relative signal",
    )


def drop_leading_frames(series: PerfusionSeries, count: int) -> PerfusionSeries:
    """The series without its first ``count`` frames (times restart at 0 at the first kept one)."""
    if count <= 0:
        return series
    data = np.ascontiguousarray(series.data[..., count:])
    return series.with_data(data, series.times[count:])


def remove_non_steady_state(
    series: PerfusionSeries, skip_frames: int | None = None, mask: np.ndarray | None = None
) -> tuple[PerfusionSeries, NonSteadyState]:
    """The series without its non-steady-state leading frames, and the record of what was removed.

    ``skip_frames``: None detects them (:func:`detect_non_steady_state`); N ≥ 1 removes exactly
    N frames (``--skip-frames N``); 0 removes none and disables the detection. The one step the
    conventional pipeline and the CNN path share, before motion correction.
    """
    if skip_frames is not None:
        n = int(skip_frames)
        if n < 0 or series.n_frames - n < MIN_KEPT_FRAMES:
            raise PerfnetInputError(
                "--skip-frames",
                f"{n} frames cannot be skipped from a series of {series.n_frames} "
                f"(0 … {max(series.n_frames - MIN_KEPT_FRAMES, 0)}; at least {MIN_KEPT_FRAMES} must remain)",
            )
        record = NonSteadyState(n, "forced" if n else "disabled", offset_s=float(series.times[n]))
    else:
        record = detect_non_steady_state(series.data, series.times, series.modality, mask, series.voxel_size)
    return drop_leading_frames(series, record.frames), record
