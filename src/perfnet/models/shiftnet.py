"""A U-Net whose flow maps cannot read a voxel's delay: shift-invariant by construction.

Why (issue 12's core): the bundled U-Net (frames as channels) reads a core's CBF higher the
earlier its bolus arrives — the same lesion at delays 7 / 11.5 / 16 s reads 0.40 / 0.32 / 0.25 of
healthy CBF (truth 0.22 at each) — and training on lesions whose delay is unrelated to their flow
does not teach that away (README, "Is the coupling in the training data at all?"): a first layer
that mixes the frames by fixed weights sees a time-shifted curve as a different curve.

Here the flow maps (CBF, CBV, MTT: every map that is not a time) come from a spatial U-Net
(:class:`~perfnet.models.unet.UNet`, Gava's 2×2 kernels and average pooling) that reads only
features invariant to a shift of a voxel's curve: each voxel's curve passes a temporal front, a
bias-free 1-D convolution (the same for every voxel, so shifting a curve shifts its features), and
each front channel's maximum and mean over time are kept; the same features of the arterial bolus
patch's mean curve (one per study, broadcast) give the network the artery's size and shape. So
CBF, CBV and MTT depend on the shape and size of the curves and on the artery's, never on when a
curve arrives (exactly, for shifts by whole front frames that keep the curve inside the grid).

The time maps (TTP, Tmax) *are* the shift, so they come from a second, ordinary U-Net on the frames
as channels (Gava's network, ``in_channels`` = frames), whose delay reading is what they need.

Any frame count works for the flow branch (pooling over time); the frame-time input is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perfnet.models.unet import UNet


class TemporalFront(nn.Module):
    """A bias-free 1-D convolution over time (a flat zero curve gives zero features everywhere),
    pooled over time. One layer: the front runs on every voxel of every frame (80× the pixels of
    the U-Net's first layer), so its cost, not the U-Net's, sets the training time on a CPU."""

    def __init__(self, channels: int = 8, kernel: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, channels, kernel, padding=kernel // 2, bias=False)

    def forward(self, curves: torch.Tensor) -> torch.Tensor:
        """curves (N, T) → invariant features (N, 2·channels): each channel's maximum and mean."""
        f = F.relu(self.conv(curves[:, None]))  # (N, C, T)
        return torch.cat([f.max(dim=2).values, f.mean(dim=2)], dim=1)


class ShiftNet(nn.Module):
    """Shift-invariant flow maps beside a frames-as-channels U-Net for the time maps (module
    docstring).

    Args:
        frames: input frames (the time maps' U-Net reads them as channels).
        out_channels: number of maps.
        width, stages, norm: the U-Nets'.
        temporal: channels of the temporal front.
        time_maps: indices of the maps that are times (TTP, Tmax), from the frames' U-Net.
        time_pool: frames averaged before the front (2: the front reads 2 s frames of the 1 s
            grid, halving its cost; invariance is then exact for even shifts and close for odd).
    """

    def __init__(
        self,
        frames: int,
        out_channels: int,
        width: int = 16,
        stages: int = 4,
        norm: bool = True,
        temporal: int = 8,
        time_maps: list[int] | None = None,
        time_pool: int = 2,
    ) -> None:
        super().__init__()
        self.time_pool = int(time_pool)
        self.time_maps = sorted(int(i) for i in time_maps or [])
        if any(not 0 <= i < out_channels for i in self.time_maps) or len(set(self.time_maps)) < len(
            self.time_maps
        ):
            raise ValueError(f"time_maps must be distinct outputs 0…{out_channels - 1}, got {time_maps}")
        self.flow_maps = [i for i in range(out_channels) if i not in self.time_maps]
        self.out_channels = out_channels
        self.front = TemporalFront(temporal)
        self.flow = UNet(4 * temporal, len(self.flow_maps), width, stages, norm) if self.flow_maps else None
        self.timing = UNet(frames, len(self.time_maps), width, stages, norm) if self.time_maps else None

    def forward(self, x: torch.Tensor, bolus: torch.Tensor) -> tuple[torch.Tensor, None]:
        """x (B, T, H, W) curves, bolus (B, T, D, P, P) arterial patches → (maps (B, M, H, W), None)."""
        b, _, h, w = x.shape
        value = x.new_zeros(b, self.out_channels, h, w)
        if self.timing is not None:
            value[:, self.time_maps] = self.timing(x)
        if self.flow is not None:
            artery = bolus.flatten(2).mean(dim=2)  # (B, T): the patch's mean curve
            if self.time_pool > 1:
                x = F.avg_pool3d(x[:, None], (self.time_pool, 1, 1))[:, 0]
                artery = F.avg_pool1d(artery[:, None], self.time_pool)[:, 0]
            t = x.shape[1]
            inv = self.front(x.permute(0, 2, 3, 1).reshape(b * h * w, t))
            inv = inv.reshape(b, h, w, -1).permute(0, 3, 1, 2)
            a_inv = self.front(artery)[:, :, None, None].expand(-1, -1, h, w)
            value[:, self.flow_maps] = self.flow(torch.cat([inv, a_inv], dim=1))
        return value, None
