"""Map formulas shared by every conventional method (indicator-dilution theory).

With C_t the tissue and C_a the arterial concentration, deconvolution of
C_t = C_a ⊗ k gives the flow-scaled residue k(t) = (ρ/kH) · CBF/6000 · R(t) (1/s), so

    CBF  = 6000 · (kH/ρ) · max k                       mL/100 g/min   (Østergaard 1996)
    CBV  = 100 · (kH/ρ) · ∫C_t / ∫C_a                  mL/100 g       (Rempp 1994; both integrals
                                                                       over the bolus passage)
    MTT  = 60 · CBV / CBF                               s              (central volume theorem)
    Tmax = argmax k                                     s
    TTP  = argmax C_t                                   s from the first frame

kH = 0.73 and ρ = 1.04 g/mL by default (:mod:`perfnet.constants`); OSIPI's test vectors use 1, 1.
"""

from __future__ import annotations

import numpy as np

from perfnet.constants import HEMATOCRIT_FACTOR, TISSUE_DENSITY


def cbf_from_flow(
    flow: np.ndarray, hematocrit_factor: float = HEMATOCRIT_FACTOR, tissue_density: float = TISSUE_DENSITY
) -> np.ndarray:
    """CBF (mL/100 g/min) from the peak of the flow-scaled residue function (1/s)."""
    return 6000.0 * (hematocrit_factor / tissue_density) * np.asarray(flow)


def cbv_from_areas(
    tissue_area: np.ndarray,
    aif_area: float,
    hematocrit_factor: float = HEMATOCRIT_FACTOR,
    tissue_density: float = TISSUE_DENSITY,
) -> np.ndarray:
    """CBV (mL/100 g) from ∫C_t and ∫C_a over the same window."""
    return 100.0 * (hematocrit_factor / tissue_density) * np.asarray(tissue_area) / aif_area


def mtt_from(cbv: np.ndarray, cbf: np.ndarray, max_mtt: float = 60.0) -> np.ndarray:
    """MTT = 60·CBV/CBF (s), 0 where CBF is 0, capped at ``max_mtt``."""
    cbv, cbf = np.asarray(cbv, dtype=np.float64), np.asarray(cbf, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mtt = np.where(cbf > 0, 60.0 * cbv / cbf, 0.0)
    return np.clip(mtt, 0.0, max_mtt)


def subsample_argmax(values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Time of the maximum along the last axis with parabolic refinement between neighbours.

    ``times`` must be uniform for the refinement (the offset is scaled by the local spacing);
    the first maximum wins ties, and maxima at either end are not refined.
    """
    values = np.asarray(values)
    times = np.asarray(times, dtype=np.float64)
    n = values.shape[-1]
    flat = values.reshape(-1, n)
    i = np.argmax(flat, axis=1)
    if n < 3:
        return times[i].reshape(values.shape[:-1])
    inner = np.clip(i, 1, n - 2)
    rows = np.arange(flat.shape[0])
    ym, y0, yp = flat[rows, inner - 1], flat[rows, inner], flat[rows, inner + 1]
    denom = ym - 2.0 * y0 + yp
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(denom < 0, 0.5 * (ym - yp) / denom, 0.0)
    offset = np.where(i == inner, np.clip(offset, -0.5, 0.5), 0.0)
    step = np.where(
        offset >= 0, times[np.minimum(i + 1, n - 1)] - times[i], times[i] - times[np.maximum(i - 1, 0)]
    )
    return (times[i] + offset * step).reshape(values.shape[:-1])


#: The first passage ends where the brain's median tissue concentration, after its peak, first
#: falls below this fraction of that peak (or at its first trough under RECIRCULATION_TROUGH of
#: the peak, where recirculation follows before that). On the tile phantom (10 HU, 5-frame
#: baseline) 0.1 keeps the noise-free CBV within 5 % up to MTT 12 s and lifts the tile-median CBV
#: correlation most among 0.1–0.3 (benchmarks/tiles.py).
PASSAGE_END_FRACTION = 0.1
RECIRCULATION_TROUGH = 0.4
#: A trough counts only when the curve rises again by this fraction of the peak within
#: RECIRCULATION_WITHIN_S (a recirculation bump, not a wiggle of a slow wash-out: on a moving
#: thick-slice CT phantom a 0.1-HU dip at 25 % of the peak cut the window and CBV read 0.6×).
RECIRCULATION_REBOUND = 0.05
RECIRCULATION_WITHIN_S = 10.0


def bolus_passage_window(times: np.ndarray, tissue: np.ndarray, baseline_end: int) -> tuple[int, int]:
    """Frames [start, stop] (inclusive) over which CBV integrates ∫C_t / ∫C_a.

    Whole-scan integrals add the baseline's error (the mean of a few noisy frames, subtracted
    from every frame) once per second of the scan, and with a short baseline that dominates
    (tile phantom, 10 HU, 5 frames, 80 s: tile-median CBV r 0.62). The window runs from the
    last baseline frame to the end of the first passage of ``tissue`` (the brain's median
    concentration curve, (T,)): the first frame after its peak below PASSAGE_END_FRACTION of the
    peak, or its first local minimum under RECIRCULATION_TROUGH of the peak followed by a rise of
    RECIRCULATION_REBOUND of the peak within RECIRCULATION_WITHIN_S (recirculation), else the
    last frame. AIF and tissue are integrated over the same window, so an
    AIF whose first pass ends inside it cancels; tissue with a long transit (MTT ≳ 15 s) loses
    its tail (tile phantom, MTT 24 s: −12 %).
    """
    tissue = np.asarray(tissue, dtype=np.float64)
    n = tissue.shape[0]
    start = int(np.clip(baseline_end - 1, 0, max(n - 2, 0)))
    peak_index = start + int(np.argmax(tissue[start:]))
    peak = tissue[peak_index]
    if not peak > 0:
        return start, n - 1
    after = np.arange(n) > peak_index
    low = after & (tissue < PASSAGE_END_FRACTION * peak)
    inner = np.zeros(n, dtype=bool)
    inner[1:-1] = (tissue[1:-1] <= tissue[:-2]) & (tissue[1:-1] < tissue[2:])
    times = np.asarray(times, dtype=np.float64)
    ahead = np.searchsorted(times, times + RECIRCULATION_WITHIN_S, side="right")
    later_max = np.full(n, -np.inf)  # per frame (not per voxel): the highest value ahead
    for i in range(n - 1):
        later_max[i] = tissue[i + 1 : max(int(ahead[i]), i + 2)].max()
    rebound = later_max >= tissue + RECIRCULATION_REBOUND * peak
    trough = after & inner & rebound & (tissue < RECIRCULATION_TROUGH * peak)
    ends = np.flatnonzero(low | trough)
    stop = int(ends[0]) if ends.size else n - 1
    return start, max(stop, min(start + 2, n - 1))


def passage_areas(
    curves: np.ndarray, aif: np.ndarray, times: np.ndarray, window: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """∫C_t (V,) and ∫C_a over the frames ``window`` (inclusive; trapezoid rule)."""
    start, stop = window
    span = slice(start, stop + 1)
    t = np.asarray(times, dtype=np.float64)[span]
    return np.trapezoid(np.asarray(curves)[:, span], t, axis=1), float(np.trapezoid(np.asarray(aif)[span], t))
