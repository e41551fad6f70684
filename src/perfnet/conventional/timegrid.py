"""Moved to :mod:`perfnet.preprocess.timegrid` (shared by every method); kept as an import shim."""

from perfnet.preprocess.timegrid import resample_curves, uniform_grid

__all__ = ["resample_curves", "uniform_grid"]
