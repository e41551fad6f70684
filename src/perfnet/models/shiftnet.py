"""A U-Net whose flow maps cannot read a region's delay: delay-invariant by construction.

Why (issue 12's core): the bundled U-Net (frames as channels) reads a core's CBF higher the
earlier its bolus arrives — the same lesion at delays 7 / 11.5 / 16 s reads 0.40 / 0.32 / 0.25 of
healthy CBF (truth 0.22 at each) — and training on lesions whose delay is unrelated to their flow
does not teach that away (docs/cnn.md, "Is the coupling in the training data at all?"): a first layer
that mixes the frames by fixed weights sees a time-shifted curve as a different curve.

Here the flow maps (CBF, CBV, MTT: every map that is not a time) come from a U-Net (Gava's, frames
as channels) that reads every voxel's curve *aligned*: moved by whole frames so that the bolus of
its neighbourhood peaks at the same frame (:class:`Aligner`). The delay is measured on curves
smoothed in-plane and in time (a Gaussian of ``sigma_px``, 6 pixels = 11 mm at the CT network's
1.8 mm: a CT voxel's curve peaks a few HU above noise of the same size, and a small core's own
curve is low and long; on a study of the unseen set at lesion delays 7 / 11.5 / 16 s the aligned
core's mean curve peaks at 4.0 / 3.4 / 3.1 HU with σ = 2 pixels and 3.5 / 3.5 / 3.5 with σ = 6)
as the centre of mass of the part above half the peak, which moves frame
for frame with the curves. So a region whose curves all arrive δ frames later is read from the
same aligned input, and its flow is the same (exactly for whole-frame δ; where the delay changes
within the smoothing width the alignment follows it smoothly). The U-Net keeps what makes it
work at CT noise: its first layer is linear in the frames and in space, so noise averages before
any nonlinearity (a delay-invariant feature of a single voxel's curve, e.g. its maximum, reads
noise: the core at 0.87 of healthy against 0.29 true in a first version of this network).

The flow U-Net reads only the first ``window`` aligned frames (48 of 80 by default): moving a late
curve earlier brings in frames from beyond the grid, and whatever fills them (the last frame,
repeated) would tell the network how far it moved whenever the curve is not back to baseline by
the grid's end, as a delayed core's long curve is not. With the window, every curve moved at most
32 frames earlier is read from observed frames only.

The time maps (TTP, Tmax) *are* the delay, so they come from a second U-Net on the frames as they
are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perfnet.models.unet import UNet


def _gaussian(sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _smoothing_matrix(kernel: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """M (n, n) with (v @ M)[j] = Σ_k kernel[k] · v[clamp(j + k − r, 0, n − 1)]: the kernel
    (length 2r + 1) applied along a length-n axis with replicate padding."""
    r = kernel.numel() // 2
    j = torch.arange(n, device=like.device)
    source = (j[None, :] + torch.arange(-r, r + 1, device=like.device)[:, None]).clamp(0, n - 1)
    m = torch.zeros(n, n, dtype=like.dtype, device=like.device)
    weights = kernel.to(like)[:, None].expand_as(source)
    m.index_put_((source, j[None, :].expand_as(source)), weights, accumulate=True)
    return m


def _smooth_field(x: torch.Tensor, knots: int = 4) -> torch.Tensor:
    """A random field (B, H, W) in [−1, 1], smooth over a quarter of the image: uniform values on
    a ``knots`` × ``knots`` grid, interpolated bilinearly (torch's global generator)."""
    b, _, h, w = x.shape
    field = torch.rand(b, 1, knots, knots, device=x.device, dtype=x.dtype) * 2 - 1
    return F.interpolate(field, size=(h, w), mode="bilinear", align_corners=True)[:, 0]


class Aligner(nn.Module):
    """Moves each voxel's curve by whole frames so that its neighbourhood's bolus sits at frame
    ``anchor``; no parameters.

    The delay of voxel v is the centre of mass over time of max(0, s_v(t) − ½ max_t s_v(t)), s the
    curves smoothed by a Gaussian of ``sigma_px`` pixels in-plane and ``sigma_t`` frames in time
    (both separable, the same at every frame and voxel, so s moves with the curves and the centre
    moves frame for frame); the shift is anchor − round(centre). Frames moved in from beyond the
    grid repeat its first / last frame, which leaks the shift where a curve has not returned to
    baseline by the grid's end (a plateau as long as the shift; docs/cnn.md, "A delay-invariant flow
    branch"): :class:`ShiftNet`'s flow U-Net reads only the first ``window`` aligned frames, which
    every curve moved at most T − window frames earlier fills with observed data.
    ``fractional``: the exact shift instead, the curves interpolated linearly in time. ``jitter``
    (training only): the centres moved by a smooth random field of up to ± ``jitter`` frames.
    """

    def __init__(
        self,
        anchor: int = 16,
        sigma_px: float = 6.0,
        sigma_t: float = 1.0,
        fractional: bool = False,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        self.anchor = int(anchor)
        self.fractional = bool(fractional)
        if jitter < 0:
            raise ValueError(f"jitter must be ≥ 0 frames, got {jitter}")
        self.jitter = float(jitter)
        self.register_buffer("space", _gaussian(sigma_px), persistent=False)
        self.register_buffer("time", _gaussian(sigma_t), persistent=False)

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, H, W) smoothed in-plane and in time (replicate padding), each axis as one
        matrix product (a banded matrix per axis: ~10× faster on a CPU than a 1-channel convolution
        with a 37-tap kernel)."""
        t, h, w = x.shape[1:]
        y = x @ _smoothing_matrix(self.space, w, x)
        y = (y.transpose(-1, -2) @ _smoothing_matrix(self.space, h, x)).transpose(-1, -2)
        return (y.permute(0, 2, 3, 1) @ _smoothing_matrix(self.time, t, x)).permute(0, 3, 1, 2)

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        """The bolus centre (B, H, W) in frames of curves x (B, T, H, W)."""
        s = self.smooth(x)
        mass = (s - 0.5 * s.amax(dim=1, keepdim=True)).clamp_min(0)
        t = torch.arange(x.shape[1], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        total = mass.sum(dim=1)
        return torch.where(total > 0, (mass * t).sum(dim=1) / total.clamp_min(1e-12), float(self.anchor))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H, W) → (aligned curves (B, T, H, W), shift (B, H, W) in frames: whole, or
        with ``fractional`` the exact one, the curves then interpolated linearly in time)."""
        with torch.no_grad():
            centre = self.centre(x)
            if self.training and self.jitter > 0:
                centre = centre + self.jitter * _smooth_field(x)
            shift = self.anchor - (centre if self.fractional else torch.round(centre))
            t = torch.arange(x.shape[1], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            at = t - shift[:, None]
            low = torch.floor(at)
            index = low.long()
            last = x.shape[1] - 1
        if not self.fractional:
            return torch.gather(x, 1, index.clamp(0, last)), shift
        early, late = (torch.gather(x, 1, (index + k).clamp(0, last)) for k in (0, 1))
        return torch.lerp(early, late, at - low), shift


class ShiftNet(nn.Module):
    """Delay-invariant flow maps beside a frames-as-channels U-Net for the time maps (module
    docstring).

    Args:
        frames: input frames (both U-Nets read them as channels).
        out_channels: number of maps.
        width, stages, norm: the U-Nets'.
        time_maps: indices of the maps that are times (TTP, Tmax), from the unaligned frames.
        anchor, sigma_px, sigma_t: the :class:`Aligner`'s.
        window: aligned frames the flow U-Net reads (its ``in_channels``; at most ``frames``;
            None: all): frames 0 … window − 1 hold observed data for every curve moved at most
            ``frames − window`` frames earlier, so no padding (whose length would be the shift)
            reaches the flow maps.
        fractional: align by the exact centre, interpolating the curves linearly in time, instead
            of by whole frames (whose steps between neighbouring voxels mark where the delay
            changes, and so how much it changes across a lesion).
        jitter: in training only, each sample's bolus centres moved by a smooth random field of
            up to ± ``jitter`` frames before the alignment, so that what the alignment leaves of
            a region's delay (a small core is aligned on its surroundings' bolus: ~1 frame later
            per 9 s of lesion delay, and its penumbra's residual spreads) cannot tell the flow
            U-Net anything about the flow. Inference (eval mode) aligns exactly as without it.
    """

    def __init__(
        self,
        frames: int,
        out_channels: int,
        width: int = 16,
        stages: int = 4,
        norm: bool = True,
        time_maps: list[int] | None = None,
        anchor: int = 16,
        sigma_px: float = 6.0,
        sigma_t: float = 1.0,
        window: int | None = 48,
        fractional: bool = False,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        self.window = frames if window is None else min(int(window), frames)
        if self.window <= anchor:
            raise ValueError(f"window must be more than the anchor ({anchor}), got {self.window}")
        self.time_maps = sorted(int(i) for i in time_maps or [])
        if any(not 0 <= i < out_channels for i in self.time_maps) or len(set(self.time_maps)) < len(
            self.time_maps
        ):
            raise ValueError(f"time_maps must be distinct outputs 0…{out_channels - 1}, got {time_maps}")
        self.flow_maps = [i for i in range(out_channels) if i not in self.time_maps]
        self.out_channels = out_channels
        self.align = Aligner(anchor, sigma_px, sigma_t, fractional, jitter)
        self.flow = UNet(self.window, len(self.flow_maps), width, stages, norm) if self.flow_maps else None
        self.timing = UNet(frames, len(self.time_maps), width, stages, norm) if self.time_maps else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """x (B, T, H, W) curves → (maps (B, M, H, W), None)."""
        b, _, h, w = x.shape
        value = x.new_zeros(b, self.out_channels, h, w)
        if self.timing is not None:
            value[:, self.time_maps] = self.timing(x)
        if self.flow is not None:
            value[:, self.flow_maps] = self.flow(self.flow_input(x))
        return value, None

    def flow_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the flow U-Net reads: x (B, T, H, W) aligned, its first ``window`` frames."""
        return self.align(x)[0][:, : self.window]
