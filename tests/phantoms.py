"""Small phantom studies for tests, cached per session (they are deterministic)."""

from __future__ import annotations

import functools
from pathlib import Path

from perfnet.phantom import PhantomConfig, PhantomStudy, simulate_study

DATA = Path(__file__).parent / "data"


@functools.lru_cache(maxsize=16)
def small_study(seed: int, modality: str = "CT", noise: bool = True, **overrides) -> PhantomStudy:
    """A small phantom study (96×96×6 unless overridden), cached by its arguments."""
    overrides = {"matrix": 96, "slices": 6, "coverage_mm": 60.0, **overrides}
    return simulate_study(PhantomConfig.draw(seed, modality, **overrides), noise=noise)
