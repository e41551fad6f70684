"""Bolus timing: arrival in the brain, the baseline frames before it, and the peak.

Two curves over the brain mask, both as an enhancement e(t) that the bolus raises (CT: HU;
DSC-MRI: the signal drops, so e = −s, or −s/median(s) per voxel):

* the brain curve, a trimmed mean over the mask (robust to a few voxels of bone or air);
* the arterial curve, the mean of the :data:`EARLY_FRACTION` voxels most enhanced while the brain
  curve makes the first half of its rise — the arteries, which enhance first and strongly.

The arterial curve is used when it shows a clear, earlier bolus that is physiologically one: its
fitted onset at most :data:`MAX_ARTERIAL_LEAD_S` before the brain curve's, its steep rise no
slower than the brain's (:func:`_rises_no_slower`); else voxels at a moving edge, drifting from the
first frame, pass for an arterial bolus at 0 s.

Detection (on the arterial curve when it shows a clear bolus, else on the brain curve): with the
baseline level b and the noise SD σ = 1.4826·median|Δ²e|/√6 (Var Δ²ε = 6σ² for white noise; a
smooth bolus barely changes the median), the bolus is present from the first *sustained*
departure e(tᵢ), e(tᵢ₊₁) > b + 3σ, walked back to the last frame with e ≤ b + σ. A threshold
is late by the slow start of the bolus (a gamma variate with α = 5 reaches 5 % of its peak a
quarter of its rise time after it starts), so the arrival t₀ is then refined by the least-squares
fit e(t) ≈ b + c·max(t − t₀, 0)^p (p ∈ {1.5, 2, 3}) to the baseline and the first half of the rise.
The baseline is the frames before t₀ − :data:`BASELINE_MARGIN_S` and before the frame preceding t₀.

On the phantom (64² × 6, noisy, 240 studies) t₀ − (arterial arrival + tissue delay) has a median
of −0.6 s, 90 % within −2.2…+0.6 s, extremes −3.9 / +1.4 s.

Source: threshold bolus-arrival detection and onset fitting compared in Shpilfoygel et al.,
"Comparison of methods for instantaneous angiographic blood flow measurement", Med Phys 1999.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: Detection threshold (noise SDs) of the sustained departure, and the level walked back to.
DETECT_K = 3.0
QUIET_K = 1.0
#: ... and at least these fractions of the bolus amplitude (slow drifts, e.g. residual motion).
DETECT_FRACTION = 0.2
QUIET_FRACTION = 0.05
#: At most this many mask voxels enter the curves (an evenly strided subset).
MAX_VOXELS = 200_000
#: Fraction trimmed at each end of the per-frame voxel distribution of the brain curve.
TRIM = 0.1
#: The arterial curve's fitted onset may precede the brain curve's by at most this much: the
#: arteries feed the tissue within a few seconds (most of the brain is healthy); an "arterial" curve
#: rising earlier still is a drift, not an earlier bolus.
MAX_ARTERIAL_LEAD_S = 4.5
#: The arterial curve may take this many frames longer than the brain curve to rise from its last
#: quiet frame to its peak (sampling and noise); slower, it is a drift, not the bolus.
RISE_TOLERANCE_FRAMES = 1.0
#: Fraction (and minimum number) of the mask voxels averaged into the arterial curve.
EARLY_FRACTION = 0.02
EARLY_MIN_VOXELS = 20
#: Voxels are ranked over the frames in which the brain curve rises to this fraction of its peak.
WINDOW_RISE = 0.5
#: Powers of the onset model b + c·max(t − t₀, 0)^p.
ONSET_POWERS = (1.5, 2.0, 3.0)
#: Baseline frames end this long before the estimated arrival (its error is mostly < 1.4 s late).
BASELINE_MARGIN_S = 1.5
#: In-plane erosion (mm) of the mask before the curves are taken (skull edge, residual motion).
EDGE_MARGIN_MM = 3.0


@dataclass
class BolusTiming:
    """Bolus timing of a series.

    Attributes:
        arrival_s: estimated arrival of the bolus in the brain's arteries (s from the first frame).
        arrival_index: the first frame at or after ``arrival_s``.
        baseline_end: number of baseline frames, frames ``0 … baseline_end − 1`` (≥ 1), all before
            ``arrival_s − BASELINE_MARGIN_S`` and before the last frame preceding the arrival.
        peak_s: time of the peak of the brain curve (s; parabolic sub-frame estimate).
        peak_index: frame of that peak.
        no_baseline: the bolus arrives at frame 0 or 1, or fewer than two frames precede it by the
            margin: no clean baseline (``baseline_end`` is 1, the concentration less reliable).
        curve: the brain curve (trimmed mean signal over the mask), (T,), in scanner units.
        detection_curve: the enhancement curve the arrival was timed on (CT HU; MR −s/median(s)).
        noise_sd: σ of ``detection_curve``.
    """

    arrival_s: float
    arrival_index: int
    baseline_end: int
    peak_s: float
    peak_index: int
    no_baseline: bool
    curve: np.ndarray
    detection_curve: np.ndarray
    noise_sd: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for provenance.json."""
        return {
            "arrival_s": round(self.arrival_s, 3),
            "arrival_index": self.arrival_index,
            "baseline_end": self.baseline_end,
            "peak_s": round(self.peak_s, 3),
            "peak_index": self.peak_index,
            "no_baseline": self.no_baseline,
            "noise_sd": float(f"{self.noise_sd:.4g}"),
            "curve": [round(float(v), 4) for v in self.curve],
            "detection_curve": [float(f"{v:.6g}") for v in self.detection_curve],
        }


def _inner(mask: np.ndarray, voxel_size: tuple[float, float, float] | None) -> np.ndarray:
    """The mask eroded in-plane by :data:`EDGE_MARGIN_MM` (or 2 voxels); the mask if that empties it."""
    steps = 2 if voxel_size is None else max(1, round(EDGE_MARGIN_MM / min(voxel_size[0], voxel_size[1])))
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    inner = ndimage.binary_erosion(mask, structure=structure, iterations=steps)
    return inner if inner.sum() >= 0.1 * mask.sum() and inner.any() else mask


def _mask_values(data4d: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(V, T) curves of at most :data:`MAX_VOXELS` evenly strided mask voxels."""
    index = np.flatnonzero(mask)
    if index.size == 0:
        raise ValueError("the mask is empty: no voxels to time the bolus on")
    index = index[:: max(1, index.size // MAX_VOXELS)]
    return data4d.reshape(-1, data4d.shape[3])[index].astype(np.float32)


def robust_mean_curve(values: np.ndarray, trim: float = TRIM) -> np.ndarray:
    """Per-frame mean of (V, T) curves after trimming ``trim`` of the voxels at each end."""
    ordered = np.sort(values, axis=0)
    cut = int(trim * ordered.shape[0])
    return ordered[cut : ordered.shape[0] - cut].mean(axis=0, dtype=np.float64)


def arterial_curve(values: np.ndarray, modality: str, window: slice) -> np.ndarray:
    """Mean enhancement curve of the voxels that rise most during ``window`` and fall back after.

    Per voxel (CT in HU; MR as the relative signal −s/median(s), free of the coil bias), the score
    is min(m_w − m_before, m_w − m_after): m_w the mean over ``window``, m_before the median of the
    frames before it, m_after the median of the last third of the series. Arteries score high;
    veins (late), tissue (weak) and voxels whose intensity drifts with residual motion (no
    return) do not. Ranking on several frames of the rise, never on the baseline alone, keeps
    voxels picked for a noise spike from adding a false early bump.
    """
    n = values.shape[1]
    if modality == "MR":
        median = np.median(values, axis=1)
        floor = max(1e-6 * float(np.abs(median).max()), 1e-12)
        values = -values / np.maximum(median, floor)[:, None]
    during = values[:, window].mean(axis=1)
    late = values[:, max(window.stop, (2 * n) // 3) :]
    score = during - (np.median(late, axis=1) if late.shape[1] else np.median(values, axis=1))
    if window.start >= 1:
        score = np.minimum(score, during - np.median(values[:, : window.start], axis=1))
    count = min(max(EARLY_MIN_VOXELS, int(EARLY_FRACTION * values.shape[0])), score.size)
    top = np.argpartition(score, -count)[-count:]
    return values[top].mean(axis=0, dtype=np.float64)


def noise_sd_per_curve(curves: np.ndarray) -> np.ndarray:
    """Per-curve white-noise SD of curves (..., T) from second differences, 1.4826·median|Δ²c|/√6
    (Var Δ²ε = 6σ²; 1.4826·median|x| estimates a Gaussian's σ; the smooth bolus barely moves the
    median): the noise measured on every frame, so a curve without a baseline gets one too. Zeros
    with fewer than three frames. The one implementation of this rule (:func:`noise_sd`,
    :func:`perfnet.qc.temporal_noise_sd`, :mod:`perfnet.preprocess.levels`)."""
    curves = np.asarray(curves)
    if curves.shape[-1] < 3:
        return np.zeros(curves.shape[:-1])
    return 1.4826 * np.median(np.abs(np.diff(curves, n=2, axis=-1)), axis=-1) / np.sqrt(6.0)


def noise_sd(curve: np.ndarray) -> float:
    """:func:`noise_sd_per_curve` of one curve."""
    return float(noise_sd_per_curve(np.ravel(curve)))


def smooth3(curve: np.ndarray) -> np.ndarray:
    """Three-frame moving average (edges repeated)."""
    return np.convolve(np.r_[curve[0], curve, curve[-1]], np.ones(3) / 3.0, mode="valid")


def threshold_onset(e: np.ndarray) -> tuple[int, float, float]:
    """(last quiet frame j, baseline level b, noise SD σ) of an enhancement curve; j = −1 when
    the curve rises from the first frame."""
    peak = int(np.argmax(smooth3(e)))
    sd = noise_sd(e)
    rise = e - e[0]  # first guess of the baseline: the frames before 20 % of the rise
    n_base = max(1, int(np.argmax(rise > 0.2 * rise[peak]))) if rise[peak] > 0 else 1
    level = float(np.median(e[:n_base]))
    quiet = -1
    for _ in range(2):  # detect, re-estimate the baseline on the quiet frames, detect again
        amplitude = abs(e[peak] - level)
        sd = max(sd, 1e-3 * amplitude, 1e-12)
        above = e > level + max(DETECT_K * sd, DETECT_FRACTION * amplitude)
        hits = np.flatnonzero((above[:-1] & above[1:])[: max(peak, 1)])
        quiet = (int(hits[0]) if hits.size else max(peak, 1)) - 1
        while quiet >= 0 and e[quiet] > level + max(QUIET_K * sd, QUIET_FRACTION * amplitude):
            quiet -= 1
        if quiet < 2:
            break
        level = float(np.median(e[: quiet + 1]))
    return quiet, level, sd


def fitted_onset(times: np.ndarray, e: np.ndarray, level: float, quiet: int) -> float:
    """t₀ of the least-squares fit e ≈ b + c·max(t − t₀, 0)^p over the baseline and the first half
    of the rise (b, c solved linearly for every t₀ of a 1/20-frame grid and every p)."""
    n = e.size
    peak = int(np.argmax(e))
    above = np.flatnonzero(e[quiet + 1 : peak + 1] - level >= 0.5 * (e[peak] - level))
    stop = min(max(quiet + 2 + (int(above[0]) if above.size else peak - quiet - 1), quiet + 3), n)
    t, y = times[:stop], e[:stop]
    step = float(np.median(np.diff(times)))
    grid = np.arange(float(times[0]) - 2 * step, float(t[-2]), step / 20.0)
    best, best_rss = float(times[quiet]), np.inf
    yc = y - y.mean()
    for p in ONSET_POWERS:
        x = np.clip(t[None, :] - grid[:, None], 0.0, None) ** p  # (grid, frames)
        xc = x - x.mean(axis=1, keepdims=True)
        sxx, sxy = (xc**2).sum(axis=1), (xc * yc).sum(axis=1)
        rss = (yc**2).sum() - np.where(sxx > 0, sxy**2 / np.maximum(sxx, 1e-300), 0.0)
        rss[sxy <= 0] = np.inf  # the fit must rise
        i = int(np.argmin(rss))
        if rss[i] < best_rss:
            best, best_rss = float(grid[i]), float(rss[i])
    return best


def _onset(times: np.ndarray, e: np.ndarray, level: float, quiet: int) -> float:
    """The fitted onset of a curve whose last quiet frame is ``quiet`` (the first frame when none)."""
    return float(times[0]) if quiet < 0 else max(fitted_onset(times, e, level, quiet), float(times[0]))


def _rise_time(times: np.ndarray, e: np.ndarray, level: float) -> float:
    """Seconds from the last frame below 20 % of the bolus' amplitude above ``level`` before its
    peak to the first frame at 80 % (the steep part of the rise; the slow foot does not count)."""
    peak = int(np.argmax(smooth3(e)))
    amplitude = float(e[peak]) - level
    if peak == 0 or amplitude <= 0:
        return 0.0
    rise = e[: peak + 1] - level
    low = np.flatnonzero(rise < 0.2 * amplitude)
    start = int(low[-1]) if low.size else 0
    high = np.flatnonzero(rise[start:] >= 0.8 * amplitude)
    stop = start + (int(high[0]) if high.size else peak - start)
    return float(times[stop] - times[start])


def _rises_no_slower(
    times: np.ndarray, artery: np.ndarray, level_a: float, brain: np.ndarray, level: float
) -> bool:
    """Whether the arterial curve's rise (20 → 80 % of its amplitude) takes no more than
    :data:`RISE_TOLERANCE_FRAMES` longer than the brain curve's. The tissue curve is the arterial one
    convolved with a non-negative residue, so an arterial rise slower than the tissue's is not a
    bolus: a slow ramp (voxels at a moving edge drifting from the first frame, issue 11's motion_mr)
    would otherwise pass for an early bolus and leave a one-frame baseline."""
    step = float(np.median(np.diff(times)))
    return (
        _rise_time(times, artery, level_a) <= _rise_time(times, brain, level) + RISE_TOLERANCE_FRAMES * step
    )


def _parabolic_peak(times: np.ndarray, e: np.ndarray, i: int) -> float:
    """Vertex of the parabola through the peak frame and its neighbours (non-uniform times)."""
    if i == 0 or i == e.size - 1:
        return float(times[i])
    t, y = times[i - 1 : i + 2], e[i - 1 : i + 2]
    a, b, _ = np.polyfit(t - t[1], y, 2)
    return float(times[i]) if a >= 0 else float(np.clip(t[1] - b / (2 * a), t[0], t[2]))


def detect_bolus(
    data4d: np.ndarray,
    times: np.ndarray,
    mask: np.ndarray,
    modality: str,
    voxel_size: tuple[float, float, float] | None = None,
) -> BolusTiming:
    """Bolus arrival, baseline frames and peak (see the module docstring).

    Args:
        data4d: (X, Y, Z, T) signal in scanner units (CT HU, MR magnitude).
        times: (T,) frame times in s, strictly increasing.
        mask: (X, Y, Z) bool brain mask.
        modality: "CT" (the bolus raises the signal) or "MR" (it lowers it).
        voxel_size: (3,) mm; the mask is eroded in-plane by :data:`EDGE_MARGIN_MM` (by 2 voxels
            when None) before the curves are taken, so that residual motion of the skull at the
            mask's edge does not look like enhancement.
    """
    data4d = np.asarray(data4d)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    mask = np.asarray(mask, dtype=bool)
    if data4d.ndim != 4:
        raise ValueError(f"expected a 4D array (X, Y, Z, T), got shape {data4d.shape}")
    if times.shape[0] != data4d.shape[3]:
        raise ValueError(f"{times.shape[0]} frame times for {data4d.shape[3]} frames")
    if data4d.shape[3] < 4:
        raise ValueError(f"bolus detection needs at least 4 frames, got {data4d.shape[3]}")
    if np.any(np.diff(times) <= 0):
        raise ValueError("frame times must be strictly increasing")
    if mask.shape != data4d.shape[:3]:
        raise ValueError(f"mask shape {mask.shape} does not match the data's {data4d.shape[:3]}")
    modality = str(modality).upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")

    values = _mask_values(data4d, _inner(mask, voxel_size))
    curve = robust_mean_curve(values)
    brain = curve if modality == "CT" else -curve
    peak = int(np.argmax(smooth3(brain)))
    quiet, level, sd = threshold_onset(brain)
    e = brain
    # arteries are near their peak while the brain curve makes the first half of its rise
    first = max(quiet + 1, 0)
    half = first + int(np.argmax(brain[first:] >= level + WINDOW_RISE * (brain[peak] - level)))
    artery = arterial_curve(values, modality, slice(first, max(half + 1, first + 3)))
    quiet_a, level_a, sd_a = threshold_onset(artery)
    arrival_s = _onset(times, brain, level, quiet)  # the brain's own, unless the arteries lead it
    if artery.max() - level_a >= 10.0 * sd_a and quiet_a <= quiet:
        arterial_s = _onset(times, artery, level_a, quiet_a)
        if arrival_s - arterial_s <= MAX_ARTERIAL_LEAD_S and _rises_no_slower(
            times, artery, level_a, brain, level
        ):  # a clear, earlier bolus
            e, sd, arrival_s = artery, sd_a, arterial_s
    arrival_index = int(np.searchsorted(times, arrival_s, side="left"))
    before = int(np.searchsorted(times, arrival_s - BASELINE_MARGIN_S, side="left"))
    return BolusTiming(
        arrival_s=arrival_s,
        arrival_index=arrival_index,
        baseline_end=max(1, min(before, arrival_index - 1)),
        peak_s=_parabolic_peak(times, smooth3(brain), peak),
        peak_index=peak,
        no_baseline=arrival_index <= 1 or before <= 1,
        curve=curve.astype(np.float32),
        detection_curve=e.astype(np.float32),
        noise_sd=float(sd),
    )
