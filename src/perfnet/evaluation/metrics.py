"""Per-study metrics of a map or mask against a reference, within a mask (the papers' choices).

- MSE, MAE; PSNR = 10·log10(range² / MSE) with the range of the reference in the mask;
- MAEC (Hess et al. 2018): MAE after clipping both maps to a window ([0, 20] s for Tmax);
- SSIM (Wang et al. 2004) per slice with an 11×11 Gaussian window (σ 1.5 px), constants
  K1 = 0.01, K2 = 0.03 of the reference range, averaged over the mask's pixels;
- Dice = 2|A∩B| / (|A| + |B|) (1 when both are empty);
- interval coverage of a Laplace scale b: the fraction of voxels whose truth lies in the central
  interval of probability p, |y − μ| ≤ b·ln(1/(1 − p)) (p = 0.9: b·ln 10); calibrated when ≈ p.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Clip windows of MAEC per map (Tmax [0, 20] s as Hess et al.; others: their clinical range).
MAEC_WINDOWS = {
    "tmax": (0.0, 20.0),
    "ttp": (0.0, 60.0),
    "mtt": (0.0, 20.0),
    "cbf": (0.0, 100.0),
    "cbv": (0.0, 10.0),
}


def _masked(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    if mask is None:
        return pred.ravel(), ref.ravel()
    mask = np.asarray(mask, dtype=bool)
    return pred[mask], ref[mask]


def laplace_half_width(level: float) -> float:
    """Half-width, in units of the Laplace scale b, of the central interval of probability ``level``:
    P(|y − μ| ≤ t) = 1 − exp(−t/b) = level ⇒ t = b·ln(1/(1 − level))."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    return float(np.log(1.0 / (1.0 - level)))


def interval_coverage(
    pred: np.ndarray, scale: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, level: float = 0.9
) -> float:
    """Fraction of (masked) voxels with |ref − pred| ≤ scale·ln(1/(1 − level)) (Laplace interval)."""
    p, r = _masked(pred, ref, mask)
    b, _ = _masked(scale, ref, mask)
    if not p.size:
        return float("nan")
    return float(np.mean(np.abs(r - p) <= b * laplace_half_width(level)))


def mse(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    p, r = _masked(pred, ref, mask)
    return float(np.mean((p - r) ** 2)) if p.size else float("nan")


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    p, r = _masked(pred, ref, mask)
    return float(np.mean(np.abs(p - r))) if p.size else float("nan")


def maec(
    pred: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray | None = None,
    window: tuple[float, float] = (0.0, 20.0),
) -> float:
    p, r = _masked(pred, ref, mask)
    lo, hi = window
    return float(np.mean(np.abs(np.clip(p, lo, hi) - np.clip(r, lo, hi)))) if p.size else float("nan")


def psnr(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    p, r = _masked(pred, ref, mask)
    if not p.size:
        return float("nan")
    err = np.mean((p - r) ** 2)
    span = float(r.max() - r.min())
    if err == 0:
        return float("inf")
    return float(10 * np.log10(span**2 / err)) if span > 0 else float("nan")


def ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, sigma: float = 1.5) -> float:
    """Mean SSIM over the mask's pixels, computed slice by slice (axis 2) on 3D volumes."""
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    mask = np.ones(pred.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not mask.any():
        return float("nan")
    span = float(ref[mask].max() - ref[mask].min()) or 1.0
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    sig = (sigma, sigma, 0) if pred.ndim == 3 else sigma

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sig, truncate=3.5, mode="reflect")  # 11-pixel window

    mu_p, mu_r = blur(pred), blur(ref)
    var_p = blur(pred * pred) - mu_p**2
    var_r = blur(ref * ref) - mu_r**2
    cov = blur(pred * ref) - mu_p * mu_r
    index = ((2 * mu_p * mu_r + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_r**2 + c1) * (var_p + var_r + c2))
    return float(index[mask].mean())


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    a, b = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks {a.shape} and {b.shape} differ in shape")
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def map_metrics(name: str, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Every map metric of one map, keyed ``<name>_<metric>``."""
    window = MAEC_WINDOWS.get(name, (-np.inf, np.inf))
    return {
        f"{name}_mse": mse(pred, ref, mask),
        f"{name}_mae": mae(pred, ref, mask),
        f"{name}_maec": maec(pred, ref, mask, window),
        f"{name}_psnr": psnr(pred, ref, mask),
        f"{name}_ssim": ssim(pred, ref, mask),
    }
