"""Arterial input, venous output, residue functions and the indicator-dilution convolution.

Tissue concentration (Østergaard 1996, with the hematocrit/density scaling of Rempp 1994):

    C_t(t) = (ρ / kH) · CBF/6000 · [C_a ⊗ D_β ⊗ R](t − δ),

with C_a the arterial blood concentration, R the residue function (R(0) = 1, ∫R = MTT),
D_β an exponential dispersion kernel (Calamante 2003) of time constant β and δ the delay.
Then ∫C_t / ∫C_a = (CBV/100) · ρ/kH with CBV = CBF · MTT / 60.

Convolutions run on a fine grid (dt = 0.1 s) with cell-integrated kernels, so their integrals
are exact; voxels share curves per (MTT, β) bin and are shifted by their own delay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from perfnet.constants import HEMATOCRIT_FACTOR, TISSUE_DENSITY
from perfnet.phantom.config import PhantomConfig

FINE_DT = 0.1  # s, fine time grid of the convolutions
MTT_STEP = 0.1  # s, MTT bins (truth MTT is the bin value)
BETA_STEP = 0.1  # s, dispersion bins


def gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """Gamma variate with peak 1 at t0 + αβ (Thompson 1964): ((t−t0)/αβ)^α · e^{α − (t−t0)/β}."""
    s = np.clip(np.asarray(t, dtype=np.float64) - t0, 0.0, None)
    return (s / (alpha * beta)) ** alpha * np.exp(alpha - s / beta)


@dataclass(frozen=True)
class ArterialInput:
    """Analytic AIF: first pass + recirculation + a slowly washing-out steady state."""

    arrival: float
    peak: float
    alpha: float
    beta: float
    recirculation: float
    recirculation_delay: float
    recirculation_width: float
    steady_state: float
    scale: float = 1.0

    @classmethod
    def from_config(cls, cfg: PhantomConfig) -> ArterialInput:
        # FWHM of a gamma variate ≈ 2.3548·β·√α for moderate α (normal approximation)
        beta = cfg.aif_fwhm_s / (2.3548 * np.sqrt(cfg.aif_alpha))
        unit = cls(
            cfg.arrival_s,
            1.0,
            cfg.aif_alpha,
            beta,
            cfg.recirculation_fraction,
            cfg.recirculation_delay_s,
            cfg.recirculation_width_factor,
            cfg.steady_state_fraction,
        )
        t = np.arange(0.0, cfg.arrival_s + 60.0, 0.01)
        return cls(**{**unit.__dict__, "scale": cfg.aif_peak / float(unit(t).max()), "peak": cfg.aif_peak})

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        first_peak = self.arrival + self.alpha * self.beta
        s = np.clip(t - self.arrival, 0.0, None)
        curve = gamma_variate(t, self.arrival, self.alpha, self.beta)
        curve += self.recirculation * gamma_variate(
            t,
            first_peak + self.recirculation_delay - self.alpha * self.beta * self.recirculation_width,
            self.alpha,
            self.beta * self.recirculation_width,
        )
        curve += self.steady_state * (1.0 - np.exp(-s / 12.0)) * np.exp(-s / 300.0) * (t > self.arrival)
        return self.scale * curve


def cumulative_residue(family: str, shape: float, t: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """∫₀ᵗ R(τ) dτ = t·S(t) + E[T; T ≤ t] for transit-time distribution T with mean MTT."""
    t = np.maximum(t, 0.0)
    if family == "exponential":
        return mtt * -np.expm1(-t / mtt)
    if family == "box":
        return np.minimum(t, mtt)
    if family == "gamma":
        theta = mtt / shape
        return t * special.gammaincc(shape, t / theta) + mtt * special.gammainc(shape + 1.0, t / theta)
    if family == "lognormal":
        mu = np.log(mtt) - shape**2 / 2
        with np.errstate(divide="ignore"):
            lt = np.log(np.maximum(t, 1e-12))
        survival = special.ndtr(-(lt - mu) / shape)
        return t * survival + mtt * special.ndtr((lt - mu - shape**2) / shape)
    raise ValueError(f"unknown residue family {family!r}")


def residue(family: str, shape: float, t: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """R(t) = P(T > t), R(0) = 1, ∫R = MTT."""
    t = np.maximum(t, 0.0)
    if family == "exponential":
        return np.exp(-t / mtt)
    if family == "box":
        return (t < mtt).astype(np.float64)
    if family == "gamma":
        return special.gammaincc(shape, t / (mtt / shape))
    if family == "lognormal":
        mu = np.log(mtt) - shape**2 / 2
        with np.errstate(divide="ignore"):
            return special.ndtr(-(np.log(np.maximum(t, 1e-12)) - mu) / shape)
    raise ValueError(f"unknown residue family {family!r}")


def cell_weights(cumulative: np.ndarray) -> np.ndarray:
    """Cell integrals over [(k−½)dt, (k+½)dt] ∩ [0, ∞) from a cumulative integral sampled at
    the cell edges 0, dt/2, 3dt/2, … (last axis)."""
    return np.diff(cumulative, axis=-1)


def dispersion_weights(beta: np.ndarray, n: int, shape: float = 1.0) -> np.ndarray:
    """Cell-integrated dispersion kernels of mean β (rows sum to 1); β = 0 → identity.

    ``shape`` 1: exponential (Calamante 2003); k > 1: the gamma density of shape k and mean β,
    whose mode β(k − 1)/k moves from 0 (exponential) towards β (a pure delay) as k grows.
    """
    edges = np.r_[0.0, (np.arange(n) + 0.5) * FINE_DT]
    beta = np.asarray(beta, dtype=np.float64)[:, None]
    safe = np.where(beta > 0, beta, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if shape == 1.0:
            cdf = np.where(beta > 0, -np.expm1(-edges[None, :] / safe), 1.0)
        else:
            cdf = np.where(beta > 0, special.gammainc(shape, edges[None, :] * shape / safe), 1.0)
    cdf[:, 0] = 0.0
    return np.diff(cdf, axis=-1)


def _fft_convolve(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    size = 1 << int(np.ceil(np.log2(2 * n)))
    return np.fft.irfft(np.fft.rfft(a, size, axis=-1) * np.fft.rfft(b, size, axis=-1), size, axis=-1)[..., :n]


@dataclass
class CurveTable:
    """Normalised tissue curves per (MTT, β) bin on the fine grid and their landmarks.

    ``curves[u](t) = [C_a ⊗ D_β ⊗ R_MTT](t)`` (no delay); ``tmax[u]`` is the argmax of the
    effective residue D_β ⊗ R (s), ``peak_time[u]`` the argmax of the curve (s).
    """

    mtt: np.ndarray
    beta: np.ndarray
    curves: np.ndarray  # (U, N) float64
    tmax: np.ndarray
    peak_time: np.ndarray


def _parabolic_argmax(y: np.ndarray) -> np.ndarray:
    """Sub-sample argmax along the last axis (first maximum, parabola through its neighbours)."""
    i = np.argmax(y, axis=-1)
    n = y.shape[-1]
    i0 = np.clip(i, 1, n - 2)
    rows = np.arange(y.shape[0])
    ym, y0, yp = y[rows, i0 - 1], y[rows, i0], y[rows, i0 + 1]
    denom = ym - 2 * y0 + yp
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(denom < 0, 0.5 * (ym - yp) / denom, 0.0)
    offset = np.where((i == i0) & (y0 > ym) & (y0 > yp), np.clip(offset, -0.5, 0.5), 0.0)
    return (i + offset) * FINE_DT


def build_curve_table(
    aif_fine: np.ndarray,
    family: str,
    shape: float,
    mtt: np.ndarray,
    beta: np.ndarray,
    chunk: int = 256,
    dispersion_shape: float = 1.0,
) -> CurveTable:
    """Curves for every (mtt[u], beta[u]) pair on the fine grid of ``aif_fine`` (length N);
    ``dispersion_shape``: the dispersion kernel's (:func:`dispersion_weights`)."""
    n = aif_fine.shape[0]
    edges = np.r_[0.0, (np.arange(n) + 0.5) * FINE_DT]
    t = np.arange(n) * FINE_DT
    curves = np.empty((mtt.shape[0], n))
    tmax = np.empty(mtt.shape[0])
    for start in range(0, mtt.shape[0], chunk):
        m = mtt[start : start + chunk, None]
        bt = beta[start : start + chunk]
        r_cells = cell_weights(cumulative_residue(family, shape, edges[None, :], m))
        d_cells = dispersion_weights(bt, n, dispersion_shape)
        kernel = _fft_convolve(r_cells, d_cells, n)
        curves[start : start + chunk] = _fft_convolve(kernel, aif_fine[None, :], n)
        effective = _fft_convolve(residue(family, shape, t[None, :], m), d_cells, n)
        # a plateau (box residue without dispersion) resolves to its start
        effective = np.round(effective, 9)
        tmax[start : start + chunk] = _parabolic_argmax(effective)
    curves = np.maximum(curves, 0.0)
    return CurveTable(mtt=mtt, beta=beta, curves=curves, tmax=tmax, peak_time=_parabolic_argmax(curves))


def fine_time_grid(duration: float) -> np.ndarray:
    return np.arange(int(np.ceil(duration / FINE_DT)) + 2) * FINE_DT


def tissue_scale(cbf: np.ndarray) -> np.ndarray:
    """(ρ/kH) · CBF/6000: converts [C_a ⊗ R] (R in s) into tissue concentration."""
    return (TISSUE_DENSITY / HEMATOCRIT_FACTOR) * np.asarray(cbf) / 6000.0


def sample_shifted(table: np.ndarray, rows: np.ndarray, delays: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Curves ``table[rows]`` delayed by ``delays`` (s), linearly interpolated at ``times``.

    Returns (len(rows), len(times)) float32; a frame at a time before the delay gets 0.
    """
    n = table.shape[1]
    out = np.empty((rows.shape[0], times.shape[0]), dtype=np.float32)
    for j, t in enumerate(times):
        pos = (t - delays) / FINE_DT
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        lo = np.clip(i0, 0, n - 1)
        hi = np.clip(i0 + 1, 0, n - 1)
        value = table[rows, lo] * (1 - frac) + table[rows, hi] * frac
        out[:, j] = np.where(pos < 0, 0.0, value)
    return out


def venous_output(aif_fine: np.ndarray, mean_transit: float, shape: float) -> np.ndarray:
    """VOF on the fine grid: the AIF through a gamma transit-time kernel of unit area."""
    n = aif_fine.shape[0]
    edges = np.r_[0.0, (np.arange(n) + 0.5) * FINE_DT]
    cdf = special.gammainc(shape, edges / (mean_transit / shape))
    return _fft_convolve(np.diff(cdf)[None, :], aif_fine[None, :], n)[0]
