"""Kudo-style digital tile phantom: one tile per (CBV, MTT, delay, residue) with known truth.

After Kudo et al., Radiology 2013;267:201–211 (the digital phantom used to compare CT and MR
perfusion software): CBV 1–5 mL/100 g, MTT 24/k s for k = 1…7 (24, 12, 8, 6, 4.8, 4, 3.4 s), so
CBF = 60·CBV/MTT (2.5–88 mL/100 g/min), delays 0–3 s in 0.5 s steps, 1 s frames, and the arterial
input given as a mask. One axial slice per residue family (exponential, gamma, box, linear); in a
slice the tiles form a grid of 35 rows (CBV × MTT) by 7 columns (delay), each ``tile``×``tile``
voxels, plus an arterial tile beside them. CT signal: HU = 40 + concentration (+ Gaussian noise of
``noise_hu`` SD when asked).

Tissue concentration (Østergaard 1996 with kH/ρ of Rempp 1994, as :mod:`perfnet.phantom.physiology`):
C_t(t) = (ρ/kH)·CBF/6000·[C_a ⊗ R](t − δ), convolved on a 0.1 s grid with cell-integrated residues
so ∫C_t/∫C_a is exact. No dispersion: every residue is maximal at its start (R(0) = 1), so the
true Tmax of a tile is its delay δ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from perfnet.io.types import PerfusionSeries
from perfnet.phantom.physiology import (
    FINE_DT,
    ArterialInput,
    _fft_convolve,
    cell_weights,
    fine_time_grid,
    sample_shifted,
    tissue_scale,
)

TILE_CBV = (1.0, 2.0, 3.0, 4.0, 5.0)  # mL/100 g
TILE_MTT = tuple(24.0 / k for k in range(1, 8))  # s: 24, 12, 8, 6, 4.8, 4, 3.43
TILE_DELAYS = tuple(0.5 * i for i in range(7))  # s: 0 … 3
TILE_RESIDUES = ("exponential", "gamma", "box", "linear")
GAMMA_SHAPE = 2.0  # shape of the gamma transit-time distribution of the "gamma" residue
TISSUE_HU = 40.0  # baseline HU of every voxel


def cumulative_tile_residue(family: str, t: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """∫₀ᵗ R(τ) dτ for the tile residues, R(0) = 1 and ∫R = MTT.

    exponential e^{−t/MTT}; gamma: survival of a gamma(k = GAMMA_SHAPE) transit time; box: 1 until
    MTT; linear: 1 − t/(2·MTT) until 2·MTT (Kudo 2013).
    """
    t = np.maximum(t, 0.0)
    if family == "exponential":
        return mtt * -np.expm1(-t / mtt)
    if family == "box":
        return np.minimum(t, mtt)
    if family == "linear":
        s = np.minimum(t, 2.0 * mtt)
        return s - s**2 / (4.0 * mtt)
    if family == "gamma":
        theta = mtt / GAMMA_SHAPE
        return t * special.gammaincc(GAMMA_SHAPE, t / theta) + mtt * special.gammainc(
            GAMMA_SHAPE + 1.0, t / theta
        )
    raise ValueError(f"unknown tile residue {family!r}; expected one of {TILE_RESIDUES}")


@dataclass
class TilePhantom:
    """A tile phantom study and its truth.

    ``tile_index`` (X, Y, Z) int: the tile of every voxel, −1 outside tissue tiles; per tile
    (flat arrays of length n_tiles): ``cbf`` mL/100 g/min, ``cbv`` mL/100 g, ``mtt`` s, ``delay`` s
    (= true Tmax), ``residue`` the family name. ``aif`` is the noise-free arterial concentration
    at the frame times (HU above baseline), ``curves`` the noise-free tissue concentration per tile.
    """

    series: PerfusionSeries
    brain_mask: np.ndarray
    aif_mask: np.ndarray
    tile_index: np.ndarray
    cbf: np.ndarray
    cbv: np.ndarray
    mtt: np.ndarray
    delay: np.ndarray
    residue: np.ndarray
    aif: np.ndarray
    curves: np.ndarray

    def tile_medians(self, volume: np.ndarray) -> np.ndarray:
        """Median of ``volume`` over each tile's voxels (n_tiles,)."""
        inside = self.tile_index >= 0
        idx, values = self.tile_index[inside], np.asarray(volume, dtype=np.float64)[inside]
        order = np.argsort(idx, kind="stable")
        groups = np.split(values[order], np.flatnonzero(np.diff(idx[order])) + 1)
        return np.array([np.median(g) for g in groups])


def tile_curves(
    aif: ArterialInput,
    times: np.ndarray,
    residue: str,
    cbv: np.ndarray,
    mtt: np.ndarray,
    delay: np.ndarray,
) -> np.ndarray:
    """Noise-free tissue concentration (n, T) at ``times`` of tiles with these parameters."""
    fine = fine_time_grid(float(times[-1]) + 1.0)
    aif_fine = aif(fine)
    edges = np.r_[0.0, (np.arange(fine.size) + 0.5) * FINE_DT]
    mtt = np.asarray(mtt, dtype=np.float64)
    kernels = cell_weights(cumulative_tile_residue(residue, edges[None, :], mtt[:, None]))
    table = _fft_convolve(kernels, aif_fine[None, :], fine.size)
    table *= tissue_scale(60.0 * np.asarray(cbv) / mtt)[:, None]
    # the table starts at the AIF's own time origin: delay is added to the frame clock
    return sample_shifted(np.maximum(table, 0.0), np.arange(mtt.size), np.asarray(delay, float), times)


def tile_phantom(
    *,
    tile: int = 4,
    frames: int = 80,
    frame_interval_s: float = 1.0,
    arrival_s: float = 5.0,
    residues: tuple[str, ...] = TILE_RESIDUES,
    noise_hu: float = 0.0,
    aif_peak_hu: float = 400.0,
    aif_fwhm_s: float = 6.0,
    recirculation: float = 0.15,
    seed: int = 0,
) -> TilePhantom:
    """Build the tile phantom (CT, HU). ``arrival_s`` is the AIF's bolus arrival (a non-integer
    value puts every tile at a sub-frame offset); the AIF has a recirculation bump of relative
    height ``recirculation`` and a small steady state, like :class:`ArterialInput`."""
    if tile < 1 or frames < 10 or frame_interval_s <= 0:
        raise ValueError("tile ≥ 1, frames ≥ 10 and a positive frame interval are required")
    times = np.arange(frames, dtype=np.float64) * frame_interval_s
    alpha = 3.0
    beta = aif_fwhm_s / (2.3548 * np.sqrt(alpha))
    unit = ArterialInput(arrival_s, 1.0, alpha, beta, recirculation, 8.0, 1.5, 0.05)
    probe = np.arange(0.0, arrival_s + 60.0, 0.01)
    arterial = ArterialInput(**{**unit.__dict__, "scale": aif_peak_hu / float(unit(probe).max())})
    grid_cbv, grid_mtt = np.meshgrid(TILE_CBV, TILE_MTT, indexing="ij")
    cbv_row, mtt_row = grid_cbv.ravel(), grid_mtt.ravel()  # 35 rows
    n_rows, n_cols = cbv_row.size, len(TILE_DELAYS)
    shape = ((n_rows) * tile, (n_cols + 1) * tile, len(residues))
    data = np.full((*shape, frames), TISSUE_HU, dtype=np.float32)
    tile_index = np.full(shape, -1, dtype=np.int64)
    aif_mask = np.zeros(shape, dtype=bool)
    aif_curve = arterial(times)
    per_tile: dict[str, list[np.ndarray]] = {k: [] for k in ("cbv", "mtt", "delay", "residue", "curves")}
    for z, family in enumerate(residues):
        cbv = np.repeat(cbv_row, n_cols)
        mtt = np.repeat(mtt_row, n_cols)
        delay = np.tile(np.asarray(TILE_DELAYS), n_rows)
        curves = tile_curves(arterial, times, family, cbv, mtt, delay)
        offset = z * n_rows * n_cols
        for k in range(cbv.size):
            row, col = divmod(k, n_cols)
            block = (slice(row * tile, (row + 1) * tile), slice(col * tile, (col + 1) * tile), z)
            data[block] += curves[k]
            tile_index[block] = offset + k
        aif_block = (slice(0, tile), slice(n_cols * tile, (n_cols + 1) * tile), z)
        data[aif_block] += aif_curve.astype(np.float32)
        aif_mask[aif_block] = True
        for key, value in (("cbv", cbv), ("mtt", mtt), ("delay", delay), ("curves", curves)):
            per_tile[key].append(value)
        per_tile["residue"].append(np.full(cbv.size, family))
    if noise_hu > 0:
        data += np.random.default_rng(seed).normal(0.0, noise_hu, data.shape).astype(np.float32)
    series = PerfusionSeries(
        data=data,
        times=times,
        affine=np.diag([1.0, 1.0, 5.0, 1.0]),
        modality="CT",
        meta={"source": "perfnet tile phantom (Kudo et al. 2013 layout)", "noise_hu": noise_hu},
    )
    cbv, mtt = np.concatenate(per_tile["cbv"]), np.concatenate(per_tile["mtt"])
    return TilePhantom(
        series=series,
        brain_mask=tile_index >= 0,
        aif_mask=aif_mask,
        tile_index=tile_index,
        cbf=60.0 * cbv / mtt,
        cbv=cbv,
        mtt=mtt,
        delay=np.concatenate(per_tile["delay"]),
        residue=np.concatenate(per_tile["residue"]),
        aif=aif_curve,
        curves=np.concatenate(per_tile["curves"]),
    )
