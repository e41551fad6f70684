"""Map formulas shared by every conventional method (indicator-dilution theory).

With C_t the tissue and C_a the arterial concentration, deconvolution of
C_t = C_a ⊗ k gives the flow-scaled residue k(t) = (ρ/kH) · CBF/6000 · R(t) (1/s), so

    CBF  = 6000 · (kH/ρ) · max k                       mL/100 g/min   (Østergaard 1996)
    CBV  = 100 · (kH/ρ) · ∫C_t / ∫C_a                  mL/100 g       (Rempp 1994)
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
