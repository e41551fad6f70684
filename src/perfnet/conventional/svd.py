"""SVD-family deconvolution kernels (sSVD, cSVD, oSVD, Tikhonov), batched over voxels in torch.

The indicator-dilution model C_t = C_a ⊗ k on the frame grid t_i = i·Δt is discretised as
c_i = Σ_j h_{i−j} k_j with one of two quadratures:

* ``"trapezoid"`` (default): C_a piecewise linear, k constant over each frame interval
  [t_j, t_{j+1}), so h_m = ∫_{t_{m−1}}^{t_m} C_a = Δt·(a_{m−1} + a_m)/2 (a_{−1} = 0). A residue
  that starts at a frame (R(0) = 1, the maximum of every residue function) is represented
  exactly, and k_j is the mean of k over [t_j, t_{j+1}). Its kernel vanishes at the Nyquist
  frequency, so with very weak regularisation (P ≲ 0.005 for sSVD) k alternates sample to sample.
* ``"rectangle"``: h_m = Δt·a_m (Østergaard 1996; Wu 2003). k_j is centred on t_j, so the jump
  at the bolus arrival is split over half a cell: short-MTT flows come out lower and Tmax later
  by about Δt/2 than with the trapezoid rule.

sSVD uses the lower-triangular Toeplitz matrix A_ij = h_{i−j} (i ≥ j) (Østergaard 1996); cSVD,
oSVD and Tikhonov the block-circulant D_ij = h_{(i−j) mod L} with C_a and C_t zero-padded to
L = 2N, which makes k insensitive to the tissue arriving before or after the AIF (Wu 2003).
The pseudo-inverse of a matrix M = U S Vᵀ with filter factors φ(s) is M⁺ = V diag(φ/s) Uᵀ:
truncation φ = [s ≥ P·s_max] (Østergaard 1996) or Tikhonov φ = s²/(s² + λ²) (Calamante 2003).

Flow is max k and Tmax the time of that maximum. For the circulant methods the maximum is
searched from MAX_NEGATIVE_LAG_S before the AIF (the end of the L-sample circle: tissue arriving
before the AIF; Wu 2003) to the end of the acquisition, not over the wrap-around noise; a maximum
at a negative time gives Tmax = 0 (clamped, not wrapped). Sub-frame refinement: see
:func:`peak_time`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

QUADRATURES = ("trapezoid", "rectangle")

Progress = Callable[[float], None] | None


def convolution_kernel(aif: np.ndarray, dt: float, length: int, quadrature: str = "trapezoid") -> np.ndarray:
    """h_m (m = 0…length−1) of c_i = Σ_j h_{i−j} k_j for the AIF zero-padded to ``length``."""
    a = np.zeros(length, dtype=np.float64)
    a[: aif.shape[0]] = aif
    if quadrature == "rectangle":
        return dt * a  # Østergaard 1996
    if quadrature == "trapezoid":
        return dt * 0.5 * (a + np.r_[0.0, a[:-1]])  # trapezoid rule of ∫C_a over each frame interval
    raise ValueError(f"unknown quadrature {quadrature!r}; expected one of {QUADRATURES}")


def convolution_matrix(
    aif: np.ndarray, dt: float, *, circulant: bool, quadrature: str = "trapezoid", pad_factor: int = 2
) -> np.ndarray:
    """Toeplitz A (N×N, A_ij = h_{i−j}, i ≥ j; Østergaard 1996) or block-circulant D (L×L,
    D_ij = h_{(i−j) mod L}, L = pad_factor·N; Wu 2003)."""
    n = aif.shape[0]
    size = pad_factor * n if circulant else n
    h = convolution_kernel(aif, dt, size, quadrature)
    lag = np.arange(size)[:, None] - np.arange(size)[None, :]
    if circulant:
        return h[lag % size]
    return np.where(lag >= 0, h[np.clip(lag, 0, None)], 0.0)


@dataclass(frozen=True)
class Decomposition:
    """SVD M = U S Vᵀ of a convolution matrix, and the length N of the data it applies to."""

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    n: int
    circulant: bool
    quadrature: str = "trapezoid"

    @classmethod
    def of(
        cls,
        aif: np.ndarray,
        dt: float,
        *,
        circulant: bool,
        quadrature: str = "trapezoid",
        pad_factor: int = 2,
    ) -> Decomposition:
        matrix = convolution_matrix(
            aif, dt, circulant=circulant, quadrature=quadrature, pad_factor=pad_factor
        )
        u, s, vt = np.linalg.svd(matrix)
        if not s[0] > 0:
            raise ValueError("the AIF has no signal (all singular values are 0)")
        return cls(u=u, s=s, vt=vt, n=aif.shape[0], circulant=circulant, quadrature=quadrature)

    def reciprocal(self, factors: np.ndarray | None = None) -> np.ndarray:
        """φ/s per component, 0 where s = 0 (such components are never kept)."""
        factors = np.ones_like(self.s) if factors is None else factors
        return np.divide(factors, self.s, out=np.zeros_like(self.s), where=self.s > 0)

    def filtered_inverse(self, factors: np.ndarray) -> np.ndarray:
        """M⁺ restricted to the first N data samples (the rest is zero padding): (L, N)."""
        return (self.vt.T * self.reciprocal(factors)) @ self.u[: self.n].T


def truncation_factors(s: np.ndarray, threshold: float) -> np.ndarray:
    """φ = [s ≥ P·s_max] (Østergaard 1996)."""
    return (s >= threshold * s[0]).astype(np.float64)


def tikhonov_factors(s: np.ndarray, mu: float) -> np.ndarray:
    """φ = s²/(s² + λ²), λ = μ·s_max (Tikhonov; Calamante 2003)."""
    lam = mu * s[0]
    return s**2 / (s**2 + lam**2)


def oscillation_index(residue: np.ndarray) -> np.ndarray:
    """O = 1/(L·max k) · Σ_{j≥2} |k_j − 2k_{j−1} + k_{j−2}| along the last axis (Wu 2003)."""
    residue = np.asarray(residue, dtype=np.float64)
    length = residue.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(np.diff(residue, n=2, axis=-1)).sum(axis=-1) / (length * residue.max(axis=-1))


#: Block-circulant residues: the maximum is searched from this many seconds before the AIF
#: (tissue fed earlier than the chosen artery) up to the end of the acquisition; the rest of the
#: 2N circle only holds wrap-around noise, whose peaks would otherwise win in noisy voxels.
MAX_NEGATIVE_LAG_S = 5.0


def _lag_window(length: int, n: int, dt: float, device: torch.device) -> torch.Tensor:
    """Bool (L,): samples of a circulant residue that may hold its maximum."""
    lag = torch.arange(length, device=device)
    negative = max(1, round(MAX_NEGATIVE_LAG_S / dt))
    return (lag < n) | (lag >= length - negative)


def _peak_parts(
    residue: torch.Tensor, circulant: bool, window: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Maximum, its index, its two neighbours and the samples two before and two after
    (circular for block-circulant residues, whose maximum is searched inside ``window``)."""
    searched = residue if window is None else residue.masked_fill(~window, float("-inf"))
    peak, index = searched.max(dim=1)
    length = residue.shape[1]
    if circulant:
        lags = [(index + lag) % length for lag in (-1, 1, -2, 2)]
    else:
        lags = [(index + lag).clamp(0, length - 1) for lag in (-1, 1, -2, 2)]
    values = residue.gather(1, torch.stack(lags, dim=1))
    return peak, index, values[:, 0], values[:, 1], values[:, 2], values[:, 3]


#: A residue peak whose samples two frames either side are all below NARROW_PEAK[0] of it is
#: narrow (a bolus passing without transit, e.g. a pure shift of the AIF): its parabola vertex is
#: read at the centre of its trapezoid cell. At or above NARROW_PEAK[1] the peak is broad: the
#: regulariser's blur already delays a broad, fast-rising peak by more than half a frame
#: (noise-free dispersed residues, cSVD/oSVD/Tikhonov: +0.5 to +2.4 s), and reading it at the
#: centre made the phantom table worse (cSVD CT Dice 0.888 → 0.815 on seed 500), so it is read at
#: the cell's start. In between the half-frame shift is interpolated linearly.
NARROW_PEAK = (0.2, 0.6)


def _centre_shift(
    peak: np.ndarray, before2: np.ndarray | None, after2: np.ndarray | None, centred: bool
) -> np.ndarray | float:
    """Frames to add to a parabola vertex in trapezoid cell units (0 … ½, see NARROW_PEAK)."""
    if not centred:
        return 0.0
    if before2 is None or after2 is None:
        return 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.maximum(before2, after2) / np.where(peak > 0, peak, np.nan)
    low, high = NARROW_PEAK
    return 0.5 * np.clip(np.nan_to_num((high - spread) / (high - low), nan=0.0), 0.0, 1.0)


def peak_time(
    peak: np.ndarray,
    index: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    length: int,
    dt: float,
    circulant: bool,
    before2: np.ndarray | None = None,
    quadrature: str = "trapezoid",
    cell_centre: bool = True,
    after2: np.ndarray | None = None,
) -> np.ndarray:
    """Tmax (s) of the residue maximum with sub-frame refinement.

    With the trapezoid rule k_j is the mean of k over [t_j, t_{j+1}), i.e. it stands for the
    middle of its cell, t_j + Δt/2. A residue that rises within one frame (the sample two before
    the peak is below 20 % of it: every undispersed residue jumps to R(0) at its delay) starts
    inside the previous frame, at t_i − Δt·k_{i−1}/k_i, provided it stays high for two frames
    (``after2`` ≥ ¼ peak when given: a narrow symmetric peak, such as a pure shift of the AIF
    seen through the regulariser, is not a step); a smooth peak is refined by the parabola
    through its neighbours (as :func:`perfnet.conventional.maps.subsample_argmax`); a narrow peak
    is placed at its cell's centre, a broad one at its start (see NARROW_PEAK; ``cell_centre``
    False reads every peak at its cell's start, the former convention, which put a pure shift of
    the AIF half a frame early). For block-circulant residues a maximum in the second half of the
    L-sample circle is a negative time and Tmax is clamped at 0; for sSVD maxima at either end
    are not refined.
    """
    peak, before, after = (np.asarray(x, dtype=np.float64) for x in (peak, before, after))
    denom = before - 2.0 * peak + after
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(denom < 0, 0.5 * (before - after) / denom, 0.0)
        onset = np.where(peak > 0, -np.clip(before / peak, 0.0, 1.0), 0.0)
    offset = np.clip(np.nan_to_num(offset), -0.5, 0.5)
    if not circulant:  # causal residue: nothing before the first sample
        before = np.where(index >= 1, before, 0.0)
        if before2 is not None:
            before2 = np.where(index >= 2, before2, 0.0)
    offset = offset + _centre_shift(peak, before2, after2, cell_centre and quadrature == "trapezoid")
    if before2 is not None:
        sharp = np.asarray(before2, dtype=np.float64) < 0.2 * peak
        if after2 is not None:
            sharp &= np.asarray(after2, dtype=np.float64) >= 0.25 * peak
        # rectangle rule: k_j is centred on t_j, so its cell starts half a frame earlier
        onset = onset - (0.5 if quadrature == "rectangle" else 0.0)
        offset = np.where(sharp, np.nan_to_num(onset), offset)
    if not circulant:
        offset = np.where((index == length - 1) | ((index == 0) & (before2 is None)), 0.0, offset)
    position = index + offset
    if circulant:
        position = np.where(position > length / 2, position - length, position)
    return np.maximum(position * dt, 0.0)


def _chunks(n_voxels: int, chunk_size: int) -> Sequence[slice]:
    return [slice(start, min(start + chunk_size, n_voxels)) for start in range(0, n_voxels, chunk_size)]


def _to_torch(curves: np.ndarray, rows: slice, device: torch.device) -> torch.Tensor:
    block = np.ascontiguousarray(curves[rows], dtype=np.float32)
    return torch.from_numpy(block).to(device)


def deconvolve_filtered(
    curves: np.ndarray,
    decomposition: Decomposition,
    factors: np.ndarray,
    dt: float,
    *,
    device: torch.device,
    chunk_size: int,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k = M⁺_φ c for every voxel with one filter φ (sSVD, cSVD, Tikhonov); returns (flow, tmax)."""
    inverse_t = torch.from_numpy(decomposition.filtered_inverse(factors).T.astype(np.float32)).to(device)
    length = inverse_t.shape[1]
    n_voxels = curves.shape[0]
    parts = [np.empty(n_voxels, dtype=np.float32) for _ in range(5)]
    index = np.empty(n_voxels, dtype=np.int64)
    slices = _chunks(n_voxels, chunk_size)
    window = _lag_window(length, decomposition.n, dt, device) if decomposition.circulant else None
    with torch.inference_mode():
        for done, rows in enumerate(slices, 1):
            residue = _to_torch(curves, rows, device) @ inverse_t
            peak, idx, *around = _peak_parts(residue, decomposition.circulant, window)
            for out, value in zip(parts, (peak, *around), strict=True):
                out[rows] = value.cpu().numpy()
            index[rows] = idx.cpu().numpy()
            if progress is not None:
                progress(done / len(slices))
    return parts[0], _tmax_of(parts, index, length, dt, decomposition.circulant, decomposition.quadrature)


def _tmax_of(
    parts: list[np.ndarray], index: np.ndarray, length: int, dt: float, circulant: bool, quadrature: str
) -> np.ndarray:
    """:func:`peak_time` of the residue parts gathered per voxel (peak, the samples one before and
    after, two before and two after, as :func:`_peak_parts` returns them) → float32 Tmax."""
    peak, before, after, before2, after2 = parts
    tmax = peak_time(peak, index, before, after, length, dt, circulant, before2, quadrature, after2=after2)
    return tmax.astype(np.float32)


def osvd_levels(s: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct truncation levels, most regularised first: thresholds P and kept components m."""
    order = np.sort(np.asarray(thresholds, dtype=np.float64))[::-1]
    kept = np.array([int(np.count_nonzero(s >= p * s[0])) for p in order])
    kept, first = np.unique(kept, return_index=True)  # one level per distinct component count
    keep = kept > 0
    return order[first][keep], kept[keep]


def deconvolve_osvd(
    curves: np.ndarray,
    decomposition: Decomposition,
    thresholds: np.ndarray,
    oi_target: float,
    dt: float,
    *,
    device: torch.device,
    chunk_size: int,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """oSVD (Wu 2003): per voxel, the least-regularised truncation with oscillation index < target.

    One SVD; per chunk the coefficients (uᵢ·c)/sᵢ are computed once and the residue and its second
    difference are built up level by level, r_m = r_{m−1} + Σ_{i∈(m−1, m]} coefᵢ vᵢ, so all levels
    cost one reconstruction. A voxel with no level below the target keeps the most regularised one.
    Returns (flow, tmax, chosen threshold P per voxel).
    """
    levels, kept = osvd_levels(decomposition.s, thresholds)
    u, vt = decomposition.u, decomposition.vt
    length = vt.shape[0]
    projection = u[: decomposition.n] * decomposition.reciprocal()
    projection = torch.from_numpy(projection.astype(np.float32)).to(device)
    basis = torch.from_numpy(vt.astype(np.float32)).to(device)
    curvature = torch.from_numpy(np.diff(vt, n=2, axis=1).astype(np.float32)).to(device)
    n_voxels = curves.shape[0]
    parts = [np.empty(n_voxels, dtype=np.float32) for _ in range(5)]
    index = np.empty(n_voxels, dtype=np.int64)
    chosen = np.empty(n_voxels, dtype=np.int64)
    slices = _chunks(n_voxels, chunk_size)
    window = _lag_window(length, decomposition.n, dt, device)
    with torch.inference_mode():
        for done, rows in enumerate(slices, 1):
            coef = _to_torch(curves, rows, device) @ projection
            size = coef.shape[0]
            residue = torch.zeros(size, length, dtype=torch.float32, device=device)
            second = torch.zeros(size, length - 2, dtype=torch.float32, device=device)
            best: list[torch.Tensor] = []
            start = 0
            for level, stop in enumerate(kept):
                block = coef[:, start:stop]
                residue.addmm_(block, basis[start:stop])
                second.addmm_(block, curvature[start:stop])
                start = stop
                peak, idx, *around = _peak_parts(residue, True, window)
                current = [peak, idx, *around, torch.full_like(idx, level)]
                if not best:  # the most regularised level is the fallback
                    best = current
                    continue
                roughness = torch.linalg.vector_norm(second, ord=1, dim=1)
                smooth = (roughness < oi_target * length * peak) & (peak > 0)
                best = [torch.where(smooth, new, old) for new, old in zip(current, best, strict=True)]
            peak, idx, *around, level_index = (x.cpu().numpy() for x in best)
            for out, value in zip(parts, (peak, *around), strict=True):
                out[rows] = value
            index[rows], chosen[rows] = idx, level_index
            if progress is not None:
                progress(done / len(slices))
    tmax = _tmax_of(parts, index, length, dt, True, decomposition.quadrature)
    return parts[0], tmax, levels[chosen].astype(np.float32)
