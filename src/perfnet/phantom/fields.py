"""Smooth random fields in head coordinates (mm), independent of the sampling grid.

A field is white noise on a coarse lattice (spacing = correlation length / 2) smoothed by a
Gaussian of one lattice unit and interpolated trilinearly at the requested points, so the same
seed gives the same anatomy at 64 or at 512 pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Head-frame box covered by the lattices (mm): x, y, z ranges.
_BOX = ((-130.0, 130.0), (-130.0, 130.0), (-110.0, 130.0))


class FieldSampler:
    """Draws independent smooth fields, each with zero mean and unit SD, from one random stream."""

    def __init__(self, seed: int | np.random.SeedSequence) -> None:
        self.rng = np.random.default_rng(seed)

    def _lattice(self, correlation_mm: float) -> tuple[np.ndarray, float]:
        spacing = max(correlation_mm / 2.0, 0.5)
        shape = tuple(int(np.ceil((hi - lo) / spacing)) + 2 for lo, hi in _BOX)
        lattice = self.rng.standard_normal(shape).astype(np.float32)
        lattice = ndimage.gaussian_filter(lattice, sigma=1.0, mode="wrap")
        lattice /= max(float(lattice.std()), 1e-6)
        return lattice, spacing

    @staticmethod
    def _sample(lattice: np.ndarray, spacing: float, points: np.ndarray) -> np.ndarray:
        coords = np.stack([(points[i] - _BOX[i][0]) / spacing for i in range(3)])
        return ndimage.map_coordinates(lattice, coords, order=1, mode="nearest").astype(np.float32)

    def field(self, correlation_mm: float, points: np.ndarray) -> np.ndarray:
        """Sample a new field of the given correlation length at ``points`` (3, M) in mm."""
        lattice, spacing = self._lattice(correlation_mm)
        return self._sample(lattice, spacing, points)

    def field_with_gradient(self, correlation_mm: float, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A field and the magnitude of its spatial gradient (1/mm) at ``points``."""
        lattice, spacing = self._lattice(correlation_mm)
        slope = np.sqrt(sum(g**2 for g in np.gradient(lattice, spacing))).astype(np.float32)
        return self._sample(lattice, spacing, points), self._sample(slope, spacing, points)
