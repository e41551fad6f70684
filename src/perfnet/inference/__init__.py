"""CNN inference: a series → perfusion maps (+ per-voxel uncertainty where the model gives one).

The heavy parts (torch) load on first use, so importing the package to register the ``cnn``
method costs nothing: see :mod:`perfnet.inference.cnn`.
"""

from __future__ import annotations

from typing import Any

from perfnet.registry import register_method

register_method(
    "cnn",
    "perfnet.inference.cnn:run_method",
    kind="cnn",
    takes_weights=True,
    description="model-free CNN (Gava 2022 U-Net for CT, Hess 2018 temporal net for MR; bundled weights)",
)

_LAZY = {
    "analyze_cnn",
    "load_weights",
    "predict",
    "prepare_input",
    "save_weights",
    "time_channel",
    "run_model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module("perfnet.inference.cnn"), name)
    raise AttributeError(f"module 'perfnet.inference' has no attribute {name!r}")


__all__ = sorted(_LAZY)
