"""Hess et al. 2018's network for DSC-MRI perfusion maps, kept cheap enough for a CPU.

Structure (as in the paper, widths reduced): a per-voxel temporal encoder of 1D convolutions over
each voxel's curve with the frame times as an extra input channel and two max-poolings; a
bolus-characterisation branch (3D convolutions over a fixed patch near the large arteries, one
code per frame) whose codes are concatenated to every voxel's sequence; 2D convolutions over the
per-voxel codes for in-slice correlation; SELU activations, dropout 0.5, and two outputs per map:
the value and the scale b of a Laplace distribution (the per-voxel uncertainty).

Cost control (the paper's 256-d code per voxel over 80 frames is ~180 GFLOP per 256² slice):
time is pooled early, codes are narrow (64), and ``AdaptiveAvgPool1d`` makes any frame count work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BolusEncoder(nn.Module):
    """3D convolutions over each frame's arterial patch (D, P, P) → one code per frame."""

    def __init__(self, code: int = 8, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(1, width, kernel_size=3, padding=1),
            nn.SELU(),
            nn.Conv3d(width, width, kernel_size=3, padding=1),
            nn.SELU(),
            nn.AdaptiveAvgPool3d(1),
        )
        self.out = nn.Linear(width, code)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches: (B, T, D, P, P) → codes (B, code, T)."""
        b, t = patches.shape[:2]
        z = self.net(patches.reshape(b * t, 1, *patches.shape[2:])).flatten(1)
        return self.out(z).reshape(b, t, -1).transpose(1, 2)


class TemporalEncoder(nn.Module):
    """1D convolutions over each voxel's curve (+ time and bolus channels) → a code per voxel."""

    def __init__(self, in_channels: int, code: int = 64, width: int = 32, positions: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(in_channels, width, kernel_size=5, padding=2),
            nn.SELU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, kernel_size=5, padding=2),
            nn.SELU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, kernel_size=3, padding=1),
            nn.SELU(),
            nn.AdaptiveAvgPool1d(positions),
        )
        self.out = nn.Linear(width * positions, code)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences: (N, C, T) → (N, code)."""
        return F.selu(self.out(self.net(sequences).flatten(1)))


class ExpectedAlphaDropout(nn.AlphaDropout):
    """Alpha dropout whose evaluation mode is its training mode's *expectation*.

    ``nn.AlphaDropout`` keeps the mean and variance of a standard-normal input, but for a given
    activation x its training output a·(x·m + α'(1 − m)) + b has the expectation a(1 − p)·x +
    a·α'·p + b, which is 0.443·x at p = 0.5 (a = 0.886, b = 0.779, α' = −1.758), while its
    evaluation mode passes x unchanged. Before a linear layer that is a different network: the
    temporal network's last 1×1 convolution saw activations 2.26× smaller in training than at
    inference, so every output's deviation from its bias came out 2.26× too large (the bundled MR
    network read healthy Tmax 0.5 s too low, clipped at 0, and hypoperfused Tmax 8.7 s too high on
    studies it was trained on: Tmax MAEC 1.60 s against 0.87 s with this expectation). Training
    is unchanged, and the module has no parameters, so weights trained with ``nn.AlphaDropout``
    load as they are and are read as they were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.p == 0:
            return super().forward(x)
        p = self.p
        alpha = -1.7580993408473766  # −λ·α of SELU: the value a dropped unit takes
        a = ((1 - p) * (1 + p * alpha**2)) ** -0.5
        b = -a * alpha * p
        return x * (a * (1 - p)) + (a * alpha * p + b)


class TemporalNet(nn.Module):
    """Per-voxel temporal encoding + arterial bolus codes + in-slice 2D convolutions.

    Args:
        out_maps: number of maps; the output has a value and a Laplace scale for each.
        code: per-voxel code size; bolus_code: size of each frame's arterial code (0: no branch).
        dropout: alpha dropout before the last layer (SELU networks; Hess et al. used 0.5).
    """

    def __init__(
        self, out_maps: int, code: int = 64, width: int = 32, bolus_code: int = 8, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.out_maps = out_maps
        self.bolus = BolusEncoder(bolus_code) if bolus_code > 0 else None
        self.encoder = TemporalEncoder(2 + bolus_code, code, width)
        self.spatial = nn.Sequential(
            nn.Conv2d(code, code, kernel_size=3, padding=1),
            nn.SELU(),
            nn.Conv2d(code, code, kernel_size=3, padding=1),
            nn.SELU(),
            ExpectedAlphaDropout(dropout),  # evaluated as its training expectation (see there)
            nn.Conv2d(code, 2 * out_maps, kernel_size=1),
        )

    def forward(
        self, x: torch.Tensor, times: torch.Tensor, bolus: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, H, W) curves; times: (B, T) or (T,) frame times (scaled); bolus: (B, T, D, P, P).

        Returns (value, scale), each (B, out_maps, H, W); scale > 0.
        """
        b, t, h, w = x.shape
        if times.dim() == 1:
            times = times.expand(b, t)
        channels = [x.unsqueeze(1), times[:, None, :, None, None].expand(b, 1, t, h, w)]
        if self.bolus is not None:
            if bolus is None:
                raise ValueError("this model needs the arterial bolus patches")
            codes = self.bolus(bolus)  # (B, c, T)
            channels.append(codes[..., None, None].expand(-1, -1, t, h, w))
        seq = torch.cat(channels, dim=1)  # (B, C, T, H, W)
        seq = seq.permute(0, 3, 4, 1, 2).reshape(b * h * w, seq.shape[1], t)
        codes = self.encoder(seq).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        out = self.spatial(codes)
        value, raw_scale = out[:, : self.out_maps], out[:, self.out_maps :]
        return value, F.softplus(raw_scale) + 1e-3
