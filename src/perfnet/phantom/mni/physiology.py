"""Style-B physiology: population-shaped arterial input, four residue families, gamma-kernel
dispersion, lagged-normal venous transit, and the indicator-dilution convolution.

Tissue concentration (Østergaard 1996; hematocrit and density as Rempp 1994):

    C_t(t) = (ρ / kH) · CBF/6000 · [C_a ⊗ h](t − δ),   h = D_β ⊗ R,

R the residue (R(0) = 1, ∫R = MTT), D_β a gamma-density dispersion kernel of mean β and shape k
(Calamante et al. 2003 give the exponential case, k = 1; here k = 1.5–5), δ the delay; so
∫C_t/∫C_a = (CBV/100)·ρ/kH with CBV = CBF·MTT/60, and Tmax = δ + argmax h.

Arterial input: the population curve of Parker et al. (MRM 2006; two Gaussians for first pass and
recirculation plus a sigmoid-gated exponential washout), stretched in time, its recirculation and
washout rescaled, started at the bolus arrival and scaled to the drawn peak. ``aif_model="gamma"``
(an override, never drawn) swaps the first-pass Gaussian for a gamma variate x^α e^(−x/b) of the
same peak time, full width at half maximum and area (α = ``AIF_GAMMA_SHAPE``), so a factor
ablation can ask what the arterial shape alone costs a method.

Residue families (shape parameters mapped from two drawn quantiles q₁, q₂):

- ``exponential``: R = e^{−t/MTT} (a well-mixed compartment);
- ``gamma``: transit times MTT·(f₀ + (1 − f₀)·G), G ~ Gamma(k, 1/k): a minimum transit f₀·MTT
  (f₀ = 0.05–0.25) then a narrow gamma spread (k = 3–8); R = Q(k, k(t/MTT − f₀)/(1 − f₀));
- ``lagged-normal``: T = N(μ, σ²) + Exp(τ) (Bassingthwaighte 1966), τ = a·MTT (a = 0.3–0.6),
  μ = (1 − a)·MTT, σ = c·μ (c = 0.15–0.3); R = 1 − F_exGaussian(t);
- ``two-compartment``: R = f·e^{−t/τ₁} + (1 − f)·e^{−t/τ₂}, f = 0.5–0.8, τ₁ = (0.4–0.8)·MTT,
  τ₂ = (MTT − fτ₁)/(1 − f) ≤ 3.4·MTT (a fast capillary and a slow venular pool).

Every residue is cell-averaged on a 0.1 s grid over 8·MTT + 40 s and scaled to the exact area
MTT (what a longer tail would hold is spread over the kept part), so CBV = CBF·MTT/60 holds to
float precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from perfnet.constants import HEMATOCRIT_FACTOR, TISSUE_DENSITY
from perfnet.phantom.mni.config import AIF_GAMMA_SHAPE, MniConfig

DT = 0.1  # s, the fine time grid
MTT_BIN = 0.1  # s, MTT bins (truth MTT is the bin value)
DISPERSION_BIN = 0.1  # s, bins of the dispersion kernel's mean
SUBCELL = 5  # samples per cell for the cell average

# Parker et al. 2006 population AIF, converted from minutes to seconds (concentration in mM).
_PARKER = {
    "A1": 0.809 * 60.0,  # mmol·s
    "A2": 0.330 * 60.0,
    "T1": 0.17046 * 60.0,
    "T2": 0.365 * 60.0,
    "sigma1": 0.0563 * 60.0,
    "sigma2": 0.132 * 60.0,
    "alpha": 1.050,
    "beta": 0.1685 / 60.0,
    "s": 38.078 / 60.0,
    "tau": 0.483 * 60.0,
}


@dataclass(frozen=True)
class PopulationAIF:
    """Parker's population curve, stretched by ``stretch`` and started at ``arrival`` (s)."""

    arrival: float
    stretch: float
    recirculation: float
    washout: float
    scale: float = 1.0
    first_pass: str = "population"  # or "gamma" (MniConfig.aif_model)

    @property
    def onset(self) -> float:
        """Parker time at which the stretched curve is started (3.5 σ₁ before the first peak)."""
        return _PARKER["T1"] - 3.5 * _PARKER["sigma1"]

    def shape(self, t: np.ndarray) -> np.ndarray:
        p = _PARKER
        tp = (np.asarray(t, dtype=np.float64) - self.arrival) / self.stretch + self.onset
        gauss = []
        for n in (1, 2):
            sigma = p[f"sigma{n}"]
            gauss.append(
                p[f"A{n}"] / (sigma * np.sqrt(2 * np.pi)) * np.exp(-((tp - p[f"T{n}"]) ** 2) / (2 * sigma**2))
            )
        if self.first_pass == "gamma":
            gauss[0] = p["A1"] * gamma_first_pass(tp - p["T1"], p["sigma1"], AIF_GAMMA_SHAPE)
        washout = p["alpha"] * np.exp(-p["beta"] * tp) / (1.0 + np.exp(-p["s"] * (tp - p["tau"])))
        curve = gauss[0] + self.recirculation * gauss[1] + self.washout * washout
        return np.where(tp >= self.onset, curve, 0.0)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return self.scale * self.shape(t)

    @classmethod
    def from_config(cls, cfg: MniConfig) -> PopulationAIF:
        unit = cls(
            cfg.arrival_s,
            cfg.aif_stretch,
            cfg.recirculation_factor,
            cfg.washout_factor,
            first_pass=cfg.aif_model,
        )
        t = np.arange(0.0, cfg.arrival_s + 80.0 * cfg.aif_stretch, 0.01)
        return cls(**{**unit.__dict__, "scale": cfg.aif_peak / float(unit.shape(t).max())})


def gamma_first_pass(dt: np.ndarray, sigma: float, alpha: float) -> np.ndarray:
    """A unit-area gamma variate x^α e^(−x/b) peaking at ``dt`` = 0 with the full width at half
    maximum of a Gaussian of SD ``sigma`` (``dt``: time from the peak)."""
    # x^α e^(−x) (mode α) is at half its peak where x = −α·W(−2^(−1/α)/e), W's two real branches
    z = -(2.0 ** (-1.0 / alpha)) / np.e
    width = alpha * float(special.lambertw(z, 0).real - special.lambertw(z, -1).real)
    b = 2.0 * np.sqrt(2.0 * np.log(2.0)) * sigma / width
    u = np.maximum(np.asarray(dt, dtype=np.float64) / b + alpha, 0.0)
    return np.where(u > 0, u**alpha * np.exp(-u) / (special.gamma(alpha + 1.0) * b), 0.0)


def residue_parameters(family: str, q: tuple[float, float]) -> dict[str, float]:
    """Family parameters from the two drawn quantiles (ranges in the module docstring)."""
    q1, q2 = q
    if family == "gamma":
        return {"k": 3.0 + 5.0 * q1, "f0": 0.05 + 0.2 * q2}
    if family == "lagged-normal":
        return {"a": 0.3 + 0.3 * q1, "c": 0.15 + 0.15 * q2}
    if family == "two-compartment":
        return {"f": 0.5 + 0.3 * q1, "r1": 0.4 + 0.4 * q2}
    return {}


def residue(family: str, p: dict[str, float], t: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """R(t) = P(transit time > t) for MTT ``mtt`` (broadcast), R(0) = 1."""
    t = np.maximum(t, 0.0)
    if family == "exponential":
        return np.exp(-t / mtt)
    if family == "gamma":
        x = np.maximum(t / mtt - p["f0"], 0.0) / (1.0 - p["f0"])
        return special.gammaincc(p["k"], p["k"] * x)
    if family == "lagged-normal":
        tau = p["a"] * mtt
        mu = (1.0 - p["a"]) * mtt
        sigma = p["c"] * mu
        z = (t - mu) / sigma
        # exGaussian CDF, its exponential term in log space (no overflow before the mode)
        log_term = -(t - mu) / tau + sigma**2 / (2 * tau**2) + special.log_ndtr(z - sigma / tau)
        return np.clip(1.0 - special.ndtr(z) + np.exp(log_term), 0.0, 1.0)
    if family == "two-compartment":
        tau1 = p["r1"] * mtt
        tau2 = (mtt - p["f"] * tau1) / (1.0 - p["f"])
        return p["f"] * np.exp(-t / tau1) + (1.0 - p["f"]) * np.exp(-t / tau2)
    raise ValueError(f"unknown residue family {family!r}")


def cell_average(function: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """(1/dt)∫ over each cell [(i − ½)dt, (i + ½)dt] ∩ [0, ∞) of ``function``, which maps times
    (M,) to values (..., M); returns (..., n)."""
    offsets = (np.arange(SUBCELL) + 0.5) / SUBCELL - 0.5
    t = (np.arange(n)[:, None] + offsets[None, :]) * DT  # (n, SUBCELL)
    values = function(np.maximum(t, 0.0).ravel())
    values = values.reshape(*values.shape[:-1], n, SUBCELL) * (t >= 0)
    return values.sum(axis=-1) / SUBCELL


def gamma_kernel(mean: np.ndarray, shape: float, n: int) -> np.ndarray:
    """Unit-area gamma-density dispersion kernels (len(mean), n) from CDF differences over the cells."""
    mean = np.maximum(np.asarray(mean, dtype=np.float64), 1e-6)[:, None]
    edges = np.maximum((np.arange(n + 1) - 0.5) * DT, 0.0)[None, :]
    cdf = special.gammainc(shape, edges / (mean / shape))
    cells = np.diff(cdf, axis=1)
    return cells / np.maximum(cells.sum(axis=1, keepdims=True), 1e-12)


def lagged_normal_kernel(mean: float, relative_sd: float, exp_share: float, n: int) -> np.ndarray:
    """Unit-area lagged-normal transit-time density on the cells (the venous output kernel)."""
    tau = exp_share * mean
    mu = (1.0 - exp_share) * mean
    sigma = relative_sd * mu
    edges = np.maximum((np.arange(n + 1) - 0.5) * DT, 0.0)
    z = (edges - mu) / sigma
    cdf = special.ndtr(z) - np.exp(
        -(edges - mu) / tau + sigma**2 / (2 * tau**2) + special.log_ndtr(z - sigma / tau)
    )
    cells = np.diff(np.clip(cdf, 0.0, 1.0))
    return cells / max(float(cells.sum()), 1e-12)


def fft_convolve(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Discrete causal convolution along the last axis, first ``n`` samples."""
    size = 1 << int(np.ceil(np.log2(a.shape[-1] + b.shape[-1])))
    return np.fft.irfft(np.fft.rfft(a, size, axis=-1) * np.fft.rfft(b, size, axis=-1), size, axis=-1)[..., :n]


def parabolic_peak(y: np.ndarray) -> np.ndarray:
    """Sub-sample position (in samples) of the first maximum along the last axis."""
    i = np.argmax(y, axis=-1)
    n = y.shape[-1]
    inner = np.clip(i, 1, n - 2)
    rows = np.arange(y.shape[0])
    left, centre, right = y[rows, inner - 1], y[rows, inner], y[rows, inner + 1]
    curvature = left - 2.0 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(curvature < 0, 0.5 * (left - right) / curvature, 0.0)
    shift = np.where((i == inner) & (centre >= left) & (centre >= right), np.clip(shift, -0.5, 0.5), 0.0)
    return i + shift


@dataclass
class TissueTable:
    """Noise-free tissue curves per (MTT bin, dispersion bin) on the fine grid, no delay, per unit
    of (ρ/kH)·CBF/6000; ``tmax`` = argmax of h = D ⊗ R (s), ``peak`` = argmax of the curve (s)."""

    mtt: np.ndarray
    dispersion: np.ndarray
    curves: np.ndarray  # (U, N)
    tmax: np.ndarray
    peak: np.ndarray


def tissue_table(
    aif_fine: np.ndarray,
    family: str,
    params: dict[str, float],
    dispersion_shape: float,
    mtt: np.ndarray,
    dispersion: np.ndarray,
) -> TissueTable:
    """Curves for every (mtt[u], dispersion[u]) pair (bins shared: residues per unique MTT,
    kernels per unique dispersion, combined by FFT)."""
    n = aif_fine.shape[0]
    u_mtt, mtt_row = np.unique(mtt, return_inverse=True)
    u_disp, disp_row = np.unique(dispersion, return_inverse=True)
    length = max(n, int(np.ceil((8.0 * float(u_mtt.max()) + 40.0) / DT)))
    residues = cell_average(lambda t: residue(family, params, t[None, :], u_mtt[:, None]), length)
    residues *= (u_mtt / DT)[:, None] / residues.sum(axis=1, keepdims=True)  # exact ∫R = MTT
    kernels = gamma_kernel(u_disp, dispersion_shape, length)
    curves = np.empty((len(mtt), n))
    tmax = np.empty(len(mtt))
    chunk = 256
    for start in range(0, len(mtt), chunk):
        rows = slice(start, start + chunk)
        h = fft_convolve(residues[mtt_row[rows]], kernels[disp_row[rows]], length)  # effective residue
        tmax[rows] = parabolic_peak(np.round(h, 9)) * DT
        curves[rows] = fft_convolve(h[:, :n], aif_fine[None, :], n) * DT
    curves = np.maximum(curves, 0.0)
    return TissueTable(
        mtt=mtt, dispersion=dispersion, curves=curves, tmax=tmax, peak=parabolic_peak(curves) * DT
    )


def tissue_scale(cbf: np.ndarray) -> np.ndarray:
    """(ρ/kH)·CBF/6000: turns [C_a ⊗ h] (h in s) into tissue concentration."""
    return (TISSUE_DENSITY / HEMATOCRIT_FACTOR) * np.asarray(cbf) / 6000.0


def shifted_samples(table: np.ndarray, rows: np.ndarray, delay: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``table[rows]`` delayed by ``delay`` (s) and read at ``times`` (linear), (V, T) float32."""
    n = table.shape[1]
    out = np.empty((rows.shape[0], times.shape[0]), dtype=np.float32)
    flat = table.ravel()
    base = rows.astype(np.int64) * n
    for j, t in enumerate(times):
        pos = (t - delay) / DT
        i0 = np.floor(pos).astype(np.int64)
        w = (pos - i0).astype(np.float32)
        lo = np.clip(i0, 0, n - 1)
        hi = np.clip(i0 + 1, 0, n - 1)
        value = flat[base + lo] * (1.0 - w) + flat[base + hi] * w
        out[:, j] = np.where(pos < 0, 0.0, value)
    return out


def fine_grid(duration: float) -> np.ndarray:
    return np.arange(int(np.ceil(duration / DT)) + 2) * DT
