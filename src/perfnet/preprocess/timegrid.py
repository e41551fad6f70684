"""Uniform time grids for deconvolution of series with non-uniform frame times."""

from __future__ import annotations

import numpy as np


def uniform_grid(times: np.ndarray, rtol: float = 1e-3) -> tuple[np.ndarray, float]:
    """The frame times themselves when uniform, else a grid at the median interval over the
    same span (two-phase protocols keep their fast interval, which is usually the majority)."""
    times = np.asarray(times, dtype=np.float64)
    steps = np.diff(times)
    dt = float(np.median(steps))
    if np.allclose(steps, dt, rtol=rtol, atol=1e-6):
        return times - times[0], dt
    n = int(np.floor((times[-1] - times[0]) / dt + 1e-6)) + 1
    return np.arange(n) * dt, dt


def resample_curves(curves: np.ndarray, times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of every row of ``curves`` (V, T) from ``times`` onto ``grid``."""
    times = np.asarray(times, dtype=np.float64) - times[0]
    if grid.shape == times.shape and np.allclose(grid, times):
        return np.asarray(curves, dtype=np.float32)
    right = np.clip(np.searchsorted(times, grid, side="right"), 1, times.size - 1)
    left = right - 1
    frac = np.clip((grid - times[left]) / (times[right] - times[left]), 0.0, 1.0).astype(np.float32)
    curves = np.asarray(curves, dtype=np.float32)
    return curves[:, left] * (1.0 - frac) + curves[:, right] * frac
