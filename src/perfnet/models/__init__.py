"""Neural networks of perfnet (nn.Modules and their losses only; no file access).

- ``unet``: Gava et al. 2022, U-Net with time frames as channels (CT perfusion).
- ``temporal``: Hess et al. 2018, per-voxel temporal encoder with arterial bolus codes (DSC-MRI).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from perfnet.models.losses import importance_weights, laplace_nll, masked_mse
from perfnet.models.temporal import TemporalNet
from perfnet.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "temporal": TemporalNet}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A model of the registry by name, with its constructor arguments."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "TemporalNet", "UNet", "build_model", "importance_weights", "laplace_nll", "masked_mse"]
