"""Target transforms: the maps a network regresses in a log domain.

CBF and CBV span a decade between infarct core and healthy grey matter, and the lesion rules
threshold them *relative* to healthy tissue (core: rCBF < 30 %). A squared error on raw values is
dominated by grey matter and lets a network pull low-flow tissue towards the population mean; on
``log(value + offset)`` an error costs by its ratio, as the thresholds do. The offset keeps zero
(outside the brain, CSF) finite. A weights file lists its transforms under ``log_offsets``
(absent: every map linear, as in weights written before the transforms existed).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

#: Default offsets (map units): small against healthy tissue, about the noise floor of a core.
LOG_OFFSETS = {"cbf": 1.0, "cbv": 0.1, "mtt": 0.5}

A = TypeVar("A", np.ndarray, torch.Tensor)


def to_model(values: A, name: str, log_offsets: dict[str, float]) -> A:
    """Map units → the domain the network regresses (log for the maps in ``log_offsets``)."""
    if name not in log_offsets:
        return values
    offset = float(log_offsets[name])
    if isinstance(values, torch.Tensor):
        return torch.log(values.clamp_min(0) + offset)
    return np.log(np.maximum(values, 0) + offset)


def from_model(values: A, name: str, log_offsets: dict[str, float]) -> A:
    """The network's domain → map units (≥ 0 for log maps)."""
    if name not in log_offsets:
        return values
    offset = float(log_offsets[name])
    if isinstance(values, torch.Tensor):
        return (torch.exp(values) - offset).clamp_min(0)
    return np.maximum(np.exp(values) - offset, 0)


def window_to_model(
    window: tuple[float, float], name: str, log_offsets: dict[str, float]
) -> tuple[float, float]:
    """A clinically relevant value window (Hess's importance weighting) in the network's domain."""
    if name not in log_offsets:
        return window
    offset = float(log_offsets[name])
    return (math.log(max(window[0], 0) + offset), math.log(max(window[1], 0) + offset))


def log_offsets_for(maps: list[str]) -> dict[str, float]:
    """Default offsets of the given maps (unknown names raise KeyError with the valid ones)."""
    unknown = [m for m in maps if m not in LOG_OFFSETS]
    if unknown:
        raise KeyError(f"no log transform for {', '.join(unknown)} (choose from {', '.join(LOG_OFFSETS)})")
    return {m: LOG_OFFSETS[m] for m in maps}
