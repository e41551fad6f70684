"""Smooth random fields for style B: random Fourier features (Rahimi & Recht 2007).

f(q) = √(2/K) Σₖ cos(ωₖ·q + φₖ), ωₖ ~ N(0, I/ℓ²), φₖ ~ U(0, 2π): a zero-mean, unit-variance field
whose covariance tends to exp(−|r|²/(2ℓ²)) as K grows. Defined in template space (mm), so the same
seed gives the same field on any study grid.
"""

from __future__ import annotations

import numpy as np


class FourierField:
    """One smooth field of correlation length ``length_mm`` drawn from ``rng``."""

    def __init__(self, rng: np.random.Generator, length_mm: float, modes: int = 48) -> None:
        self.omega = (rng.standard_normal((modes, 3)) / length_mm).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, modes).astype(np.float32)
        self.norm = np.float32(np.sqrt(2.0 / modes))

    def __call__(self, q: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """Values at points ``q`` (3, N) in mm, float32 (N,)."""
        q = np.asarray(q, dtype=np.float32)
        out = np.empty(q.shape[1], dtype=np.float32)
        for start in range(0, q.shape[1], chunk):
            block = q[:, start : start + chunk]
            out[start : start + chunk] = np.cos(self.omega @ block + self.phase[:, None]).sum(axis=0)
        return out * self.norm
