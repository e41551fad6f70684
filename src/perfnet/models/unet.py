"""Gava et al. 2022's U-Net for CT perfusion maps: time frames as input channels.

Encoder–decoder with skip connections, 2×2 convolutions, average pooling instead of max pooling,
four stages. Any in-plane size works: inputs are padded to a multiple of 2**stages and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv2x2(nn.Module):
    """2×2 convolution keeping the size ('same' padding is asymmetric for an even kernel: one
    row/column after), normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True) -> None:
        super().__init__()
        self.pad = nn.ReplicationPad2d((0, 1, 0, 1))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=2, bias=not norm)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pad(x))))


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: bool = True) -> None:
        super().__init__(Conv2x2(in_channels, out_channels, norm), Conv2x2(out_channels, out_channels, norm))


class UNet(nn.Module):
    """U-Net (Ronneberger 2015) as adapted by Gava et al. 2022 for model-free CTP maps.

    Args:
        in_channels: number of time frames (after resampling to the model's time grid).
        out_channels: number of maps regressed (e.g. 5 for cbf, cbv, mtt, ttp, tmax).
        width: channels of the first stage; doubled at each of the ``stages`` down-steps
            (Gava: 32 → 512 with 4 stages).
    """

    def __init__(
        self, in_channels: int, out_channels: int, width: int = 32, stages: int = 4, norm: bool = True
    ) -> None:
        super().__init__()
        self.stages = stages
        widths = [width * 2**i for i in range(stages + 1)]
        self.inc = DoubleConv(in_channels, widths[0], norm)
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm) for i in range(stages))
        self.pool = nn.AvgPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(stages))
        )
        self.dec = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], norm) for i in reversed(range(stages)))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, W) → (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        multiple = 2**self.stages
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(self.pool(skips[-1])))
        y = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            y = dec(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)[..., :h, :w]
