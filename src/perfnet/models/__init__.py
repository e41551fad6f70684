"""Neural networks of perfnet (nn.Modules and their losses only; no file access).

- ``unet``: Gava et al. 2022, U-Net with time frames as channels (CT perfusion).
- ``temporal``: Hess et al. 2018, per-voxel temporal encoder with arterial bolus codes (DSC-MRI).

:data:`NETWORKS` is the one table training and inference use: how to build a network from the
training settings, how to call it, and its defaults. A new network is one module plus one
:func:`register_network` line; nothing else branches on a network's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from perfnet.models.losses import importance_weights, laplace_nll, masked_mse
from perfnet.models.shiftnet import ShiftNet
from perfnet.models.temporal import TemporalNet
from perfnet.models.unet import UNet

Output = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class NetworkSpec:
    """A network as training and inference see it.

    ``kwargs(frames, maps, width)`` gives the constructor arguments; ``forward(model, x, times,
    bolus)`` returns (value, scale or None) for inputs x (B, T, H, W), the frame-time channel
    ``times`` (T,) and the arterial bolus patches (or None). A model that returns a scale predicts
    a Laplace scale per map (``*_uncertainty`` outputs): whether it does is a property of the built
    model and its weights (a U-Net with its scale head does, one without does not), not of the
    network's name. ``loss``/``crop``: training defaults; ``pretrain``: it takes Gava's
    low-resolution pre-training stage; ``map_kwargs(maps)``: constructor arguments that depend on
    the trained maps' names (e.g. which maps are times), merged after ``kwargs``."""

    name: str
    cls: type[nn.Module]
    kwargs: Callable[[int, int, int], dict[str, Any]]
    forward: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], Output]
    loss: str
    crop: int
    pretrain: bool
    description: str = ""
    map_kwargs: Callable[[list[str]], dict[str, Any]] | None = None


NETWORKS: dict[str, NetworkSpec] = {}


def register_network(spec: NetworkSpec) -> NetworkSpec:
    """Add a network to :data:`NETWORKS` (its name must be new)."""
    if spec.name in NETWORKS:
        raise ValueError(f"network {spec.name!r} is already registered")
    NETWORKS[spec.name] = spec
    return spec


def network_spec(name: str) -> NetworkSpec:
    if name not in NETWORKS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(NETWORKS)}")
    return NETWORKS[name]


register_network(
    NetworkSpec(
        "unet",
        UNet,
        kwargs=lambda frames, maps, width: {"in_channels": frames, "out_channels": maps, "width": width},
        forward=lambda model, x, times, bolus: model.predict(x),
        loss="mse",
        crop=256,
        pretrain=True,
        description="Gava et al. 2022: U-Net, frames as channels, 2×2 kernels, average pooling (CT),"
        " optional Laplace scale head",
    )
)
register_network(
    NetworkSpec(
        "temporal",
        TemporalNet,
        kwargs=lambda frames, maps, width: {"out_maps": maps, "width": width},
        forward=lambda model, x, times, bolus: model(x, times, bolus),
        loss="laplace",
        crop=32,
        pretrain=False,
        description="Hess et al. 2018: per-voxel temporal encoder, bolus codes, Laplace scale (DSC-MRI)",
    )
)
register_network(
    NetworkSpec(
        "shiftnet",
        ShiftNet,
        kwargs=lambda frames, maps, width: {"frames": frames, "out_channels": maps, "width": width},
        forward=lambda model, x, times, bolus: model(x),
        loss="mse",
        crop=256,
        pretrain=True,
        description="flow maps from a U-Net on curves aligned on their neighbourhood's bolus (a region's"
        " delay cannot reach them), TTP/Tmax from a frames-as-channels U-Net (issue 12's core)",
        map_kwargs=lambda maps: {"time_maps": [i for i, m in enumerate(maps) if m in ("ttp", "tmax")]},
    )
)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A model of the registry by name, with its constructor arguments."""
    return network_spec(name).cls(**kwargs)


__all__ = [
    "NETWORKS",
    "NetworkSpec",
    "ShiftNet",
    "TemporalNet",
    "UNet",
    "build_model",
    "importance_weights",
    "laplace_nll",
    "masked_mse",
    "network_spec",
    "register_network",
]
