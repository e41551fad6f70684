"""Gava et al. 2022's U-Net for CT perfusion maps: time frames as input channels.

Encoder–decoder with skip connections, 2×2 convolutions, average pooling instead of max pooling,
four stages. Any in-plane size works: inputs are padded to a multiple of 2**stages and cropped back.

Optional scale head (``scale_head=True``): a per-pixel two-layer 1×1 convolution on the *detached*
last decoder feature map → softplus → the scale b of a Laplace distribution per map (the
heteroscedastic uncertainty of Hess et al. 2018, here beside Gava's MSE regression). It reads the
features without sending gradients back, and it is trained on the detached mean
(:meth:`UNet.predict`, the loss of :mod:`perfnet.training.task`), so the maps are exactly those of
the same backbone without the head: a head can be fitted afterwards on a frozen, trained U-Net
(:mod:`perfnet.training.scale`). ``scale_temperature`` (a buffer, 1 by default) multiplies b per map:
a post-hoc calibration factor (Guo et al. 2017's temperature scaling, for a Laplace scale).

Optional core head (``core_head=True``; issue 12.3's lesion head): the probability that a voxel
is ischaemic core, from the *detached* last decoder features, the (flip-averaged) maps and the maps
relative to their slice's brain median (log-domain maps: log ratios, the form of the clinical rCBF
rule), standardised by stored buffers, through per-pixel 1×1 convolutions. Like the scale head it
reads without sending gradients back, so it is fitted on a frozen backbone
(:mod:`perfnet.training.core_head`) and the maps stay those of the backbone.
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
        scale_head: add the Laplace scale head (module docstring); without it :meth:`predict`
            returns no scale.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 32,
        stages: int = 4,
        norm: bool = True,
        scale_head: bool = False,
        core_head: bool = False,
        core_hidden: int = 32,
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
        self.scale_head: nn.Module | None = None
        if scale_head:
            self.scale_head = nn.Sequential(
                nn.Conv2d(widths[0], widths[0], kernel_size=1),
                nn.ReLU(),
                nn.Conv2d(widths[0], out_channels, kernel_size=1),
            )
            self.register_buffer("scale_temperature", torch.ones(out_channels))
        self.core_head: nn.Module | None = None
        if core_head:
            inputs = widths[0] + 2 * out_channels
            layers: list[nn.Module] = [nn.Conv2d(inputs, core_hidden or 1, kernel_size=1)]
            if core_hidden:
                layers += [nn.ReLU(), nn.Conv2d(core_hidden, 1, kernel_size=1)]
            self.core_head = nn.Sequential(*layers)
            self.register_buffer("core_input_mean", torch.zeros(inputs))
            self.register_buffer("core_input_sd", torch.ones(inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, W) → the maps (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        return self.head(self.decode(x))[..., :h, :w]

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, H, W) → (maps, Laplace scale b > 0 or None without a scale head), each
        (B, out_channels, H, W); the maps are :meth:`forward`'s, bit for bit."""
        value, scale, _ = self.predict_with_features(x)
        return value, scale

    def predict_with_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """:meth:`predict`'s outputs and the last decoder features (B, width, H, W) they were read
        from, all cropped to x's size (the core head's input)."""
        h, w = x.shape[-2:]
        features = self.decode(x)
        value = self.head(features)[..., :h, :w]
        scale = None if self.scale_head is None else self.scale(features)[..., :h, :w]
        return value, scale, features[..., :h, :w]

    def scale(self, features: torch.Tensor) -> torch.Tensor:
        """The Laplace scale b (B, M, H, W) of the last decoder features (detached: b never trains
        the maps)."""
        if self.scale_head is None:
            raise ValueError("this U-Net has no scale head")
        return self._positive(self.scale_head(features.detach()), channel_dim=1)

    def scale_of_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`scale` of feature vectors (N, C) → (N, M): the head's 1×1 convolutions as the
        matrix products they are (fast for the many voxels of a post-hoc fit)."""
        if self.scale_head is None:
            raise ValueError("this U-Net has no scale head")
        z = features.detach()
        for layer in self.scale_head:
            z = (
                F.linear(z, layer.weight[:, :, 0, 0], layer.bias)
                if isinstance(layer, nn.Conv2d)
                else layer(z)
            )
        return self._positive(z, channel_dim=-1)

    def _positive(self, raw: torch.Tensor, channel_dim: int) -> torch.Tensor:
        shape = [1] * raw.dim()
        shape[channel_dim] = -1
        return (F.softplus(raw) + 1e-3) * self.scale_temperature.view(shape)

    @staticmethod
    def core_inputs(features: torch.Tensor, value: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """The core head's inputs (B, C + 2M, H, W): detached features, maps, and maps minus their
        slice's median over ``brain`` (B, H, W; a slice without brain: minus 0)."""
        medians = []
        for b in range(value.shape[0]):
            inside = value[b][:, brain[b]]
            median = inside.median(dim=1).values if inside.shape[1] else value.new_zeros(value.shape[1])
            medians.append(median)
        relative = value - torch.stack(medians)[:, :, None, None]
        return torch.cat([features.detach(), value.detach(), relative.detach()], dim=1)

    def core_logit_of_vectors(self, inputs: torch.Tensor) -> torch.Tensor:
        """The core head on input vectors (N, C + 2M) → logits (N,): its 1×1 convolutions as
        matrix products."""
        if self.core_head is None:
            raise ValueError("this U-Net has no core head")
        z = (inputs - self.core_input_mean) / self.core_input_sd
        for layer in self.core_head:
            conv = isinstance(layer, nn.Conv2d)
            z = F.linear(z, layer.weight[:, :, 0, 0], layer.bias) if conv else layer(z)
        return z[:, 0]

    def core_probability(self, inputs: torch.Tensor) -> torch.Tensor:
        """The core probability (B, H, W) of :meth:`core_inputs`' output."""
        if self.core_head is None:
            raise ValueError("this U-Net has no core head")
        shape = (1, -1, 1, 1)
        z = (inputs - self.core_input_mean.view(shape)) / self.core_input_sd.view(shape)
        return torch.sigmoid(self.core_head(z)[:, 0])

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder feature map (B, width, H', W') of x padded to a multiple of 2**stages."""
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
        return y
