"""Shape and timing descriptors of concentration curves: the vocabulary of the arterial and venous
input search (:mod:`perfnet.conventional.aif`).

:class:`CurveFeatures` describes many curves at once (peak, sub-frame peak time, arrival, first
moment of the bolus core, FWHM, roughness, the fraction left at the end); :class:`TissueReference`
times the brain's tissue curve, the yardstick every arterial and venous candidate is judged
against. All vectorised over curves (V, T), on any frame times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perfnet.preprocess.bolus import fitted_onset, robust_mean_curve, smooth3, threshold_onset
from perfnet.preprocess.bolus import noise_sd as curve_noise_sd

#: Curves per chunk when features are computed over a whole brain.
FEATURE_CHUNK = 1 << 16


#: Least peak / noise SD of the tissue curve for it to time the candidates.
TISSUE_MIN_CNR = 5.0
#: The arrival of a curve: where its rise last crosses this fraction of its peak.
ARRIVAL_FRACTION = 0.2


def level_crossings(
    curves: np.ndarray, times: np.ndarray, peak_index: np.ndarray, level: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Times (s, linear interpolation) at which each curve (V, T) last rises through ``level``
    (V,) before its peak and first falls through it after: (rise, fall). rise is the first frame's
    time when the curve never lies below the level before its peak; fall is inf when it never
    falls below it after (a step, or a bolus cut off by the end of the acquisition)."""
    n_v, n_t = curves.shape
    rows = np.arange(n_v)
    frames = np.arange(n_t)[None, :]
    below = curves < level[:, None]
    before = np.where(below & (frames < peak_index[:, None]), frames, -1).max(axis=1)
    after = np.where(below & (frames > peak_index[:, None]), frames, n_t).min(axis=1)

    def cross(i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
        y0, y1 = curves[rows, i0], curves[rows, i1]
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.clip(np.nan_to_num((level - y0) / (y1 - y0), nan=0.0), 0.0, 1.0)
        return times[i0] + f * (times[i1] - times[i0])

    rise = np.where(before >= 0, cross(np.maximum(before, 0), np.minimum(before + 1, n_t - 1)), times[0])
    fall = np.where(after < n_t, cross(np.maximum(after - 1, 0), np.minimum(after, n_t - 1)), np.inf)
    return rise, fall


def parabolic_peak_times(curves: np.ndarray, times: np.ndarray, peak_index: np.ndarray) -> np.ndarray:
    """Vertex (s) of the parabola through each curve's peak frame and its two neighbours
    (non-uniform times allowed); the peak frame's time at the ends or when the parabola is not a
    maximum."""
    n_v, n_t = curves.shape
    i = np.clip(peak_index, 1, max(n_t - 2, 1))
    rows = np.arange(n_v)
    if n_t < 3:
        return times[peak_index].astype(np.float64)
    t0, t1, t2 = times[i - 1], times[i], times[i + 1]
    y0, y1, y2 = curves[rows, i - 1], curves[rows, i], curves[rows, i + 1]
    d0, d2 = t1 - t0, t2 - t1
    # the parabola through (t1 − d0, y0), (t1, y1), (t1 + d2, y2) has its vertex at t1 − num/(2·den),
    # a maximum when den > 0
    num = d0**2 * (y1 - y2) - d2**2 * (y1 - y0)
    den = d2 * (y1 - y0) + d0 * (y1 - y2)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = t1 - 0.5 * num / den
    ok = (den > 0) & (peak_index == i) & np.isfinite(vertex)
    return np.where(ok, np.clip(vertex, t0, t2), times[peak_index])


@dataclass
class CurveFeatures:
    """Shape descriptors of concentration curves (V, T) on frame times."""

    peak: np.ndarray
    peak_index: np.ndarray
    ttp: np.ndarray
    area: np.ndarray
    first_moment: np.ndarray  # s, of the part above a quarter of the peak
    width: np.ndarray  # s above half maximum
    roughness: np.ndarray  # Σ|second difference| / peak
    end_fraction: np.ndarray  # last frame / peak
    peak_time: np.ndarray  # s, sub-frame (parabola through the peak frame and its neighbours)
    arrival: np.ndarray  # s, where the rise last crosses ARRIVAL_FRACTION of the peak (interpolated)
    fwhm: np.ndarray  # s, between the half-maximum crossings around the peak; inf: no fall below half
    lowest: np.ndarray  # the curve's minimum

    @classmethod
    def of(cls, curves: np.ndarray, times: np.ndarray) -> CurveFeatures:
        curves = np.asarray(curves, dtype=np.float64)
        peak_index = np.argmax(curves, axis=1)
        peak = curves[np.arange(curves.shape[0]), peak_index]
        positive = np.clip(curves, 0.0, None)
        area = np.trapezoid(positive, times, axis=1)
        # first moment of the bolus core (above a quarter of the peak): the noisy baseline and tail
        # would otherwise pull every curve's moment towards the middle of the acquisition
        core = np.clip(curves - 0.25 * peak[:, None], 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            first_moment = np.trapezoid(core * times, times, axis=1) / np.trapezoid(core, times, axis=1)
            safe_peak = np.where(peak > 0, peak, np.inf)
            roughness = np.abs(np.diff(curves, n=2, axis=1)).sum(axis=1) / safe_peak
            end_fraction = curves[:, -1] / safe_peak
        step = np.gradient(times)
        width = ((curves > 0.5 * peak[:, None]) * step).sum(axis=1)
        rise_half, fall_half = level_crossings(curves, times, peak_index, 0.5 * peak)
        arrival, _ = level_crossings(curves, times, peak_index, ARRIVAL_FRACTION * peak)
        return cls(
            peak=peak,
            peak_index=peak_index,
            ttp=times[peak_index],
            area=area,
            first_moment=np.nan_to_num(first_moment, nan=np.inf),
            width=width,
            roughness=roughness,
            end_fraction=end_fraction,
            peak_time=parabolic_peak_times(curves, times, peak_index),
            arrival=arrival,
            fwhm=fall_half - rise_half,
            lowest=curves.min(axis=1) if curves.shape[1] else np.zeros(curves.shape[0]),
        )

    @classmethod
    def of_voxels(
        cls, flat: np.ndarray, indices: np.ndarray, times: np.ndarray, chunk: int = FEATURE_CHUNK
    ) -> CurveFeatures:
        """Features of the curves ``flat[indices]`` (flat: (V, T)), computed in chunks so that a
        whole-brain search never holds a float64 copy of every curve."""
        parts = [cls.of(flat[indices[i : i + chunk]], times) for i in range(0, indices.size, chunk)]
        if not parts:
            return cls.of(np.zeros((0, flat.shape[1])), times)
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in cls.__dataclass_fields__})


@dataclass
class TissueReference:
    """Bolus timing of the brain's tissue curve (the trimmed mean of every brain voxel's
    concentration), the yardstick of the arterial and venous candidates."""

    onset_s: float  # fitted onset b + c·max(t − t₀, 0)^p (perfnet.preprocess.bolus.fitted_onset)
    arrival_s: float  # where its rise last crosses ARRIVAL_FRACTION of its peak
    peak_s: float  # sub-frame time of its peak
    peak: float  # its peak concentration
    fwhm_s: float  # its full width at half maximum (inf when it does not fall below half)

    @classmethod
    def of(cls, conc: np.ndarray, times: np.ndarray, brain_mask: np.ndarray) -> TissueReference | None:
        """The reference of a concentration series, None when its tissue curve shows no bolus
        (peak below :data:`TISSUE_MIN_CNR` noise SDs, or at the first or last frame)."""
        index = np.flatnonzero(brain_mask)
        if index.size < 10 or times.size < 5:
            return None
        flat = conc.reshape(-1, conc.shape[-1])
        curve = robust_mean_curve(flat[index[:: max(1, index.size // 200_000)]].astype(np.float32))
        peak_index = int(np.argmax(smooth3(curve)))
        peak = float(curve[peak_index])
        if peak_index in (0, curve.size - 1) or peak <= TISSUE_MIN_CNR * curve_noise_sd(curve):
            return None
        quiet, level, _ = threshold_onset(curve)
        onset = (
            float(times[0]) if quiet < 0 else max(fitted_onset(times, curve, level, quiet), float(times[0]))
        )
        feats = CurveFeatures.of(curve[None], times)
        return cls(
            onset_s=onset,
            arrival_s=float(feats.arrival[0]),
            peak_s=float(parabolic_peak_times(curve[None], times, np.array([peak_index]))[0]),
            peak=peak,
            fwhm_s=float(feats.fwhm[0]),
        )

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) if np.isfinite(v) else None for k, v in self.__dict__.items()}
