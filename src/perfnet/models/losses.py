"""Losses of the perfusion networks, all masked to the brain.

MSE (Gava et al. 2022) and the heteroscedastic Laplace negative log-likelihood of Hess et al. 2018
with their importance weighting of clinically relevant values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the voxels where ``mask`` (broadcast over the map channel) is set."""
    total, weight = masked_mse_parts(pred, target, mask)
    return total / weight.clamp_min(1.0)


def masked_mse_parts(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ mask·(p − p̂)² and Σ mask: the MSE of several batches (data-parallel ranks) is the sum of
    their totals over the sum of their weights."""
    mask = mask.expand_as(pred).to(pred.dtype)
    return ((pred - target) ** 2 * mask).sum(), mask.sum()


def importance_weights(
    pred: torch.Tensor,
    target: torch.Tensor,
    windows: Sequence[tuple[float, float]],
    low_weight: float = 0.1,
) -> torch.Tensor:
    """1 where the range between target and prediction touches the map's clinical window, else 0.1.

    ``windows[c]`` is the (low, high) window of map channel c (dim 1), e.g. Tmax (0, 40) s.
    """
    lo = torch.tensor([w[0] for w in windows], dtype=pred.dtype, device=pred.device).view(
        1, -1, *([1] * (pred.dim() - 2))
    )
    hi = torch.tensor([w[1] for w in windows], dtype=pred.dtype, device=pred.device).view(
        1, -1, *([1] * (pred.dim() - 2))
    )
    a, b = torch.minimum(pred, target), torch.maximum(pred, target)
    touches = (b >= lo) & (a <= hi)
    return torch.where(touches, torch.ones_like(pred), torch.full_like(pred, low_weight))


def laplace_nll(
    pred: torch.Tensor,
    scale: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    windows: Sequence[tuple[float, float]] | None = None,
    low_weight: float = 0.1,
    beta: float = 0.0,
) -> torch.Tensor:
    """Weighted mean of log b + |p − p̂| / b over masked voxels (Hess et al. 2018).

    The weights (see :func:`importance_weights`) are constants: they select which errors count,
    they are not differentiated. ``beta``: β-NLL (:func:`laplace_nll_parts`).
    """
    total, weight = laplace_nll_parts(pred, scale, target, mask, windows, low_weight, beta)
    return total / weight.clamp_min(1e-12)


def laplace_nll_parts(
    pred: torch.Tensor,
    scale: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    windows: Sequence[tuple[float, float]] | None = None,
    low_weight: float = 0.1,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of :func:`laplace_nll` and the sum of its weights.

    ``beta`` > 0: β-NLL (Seitzer et al. 2022, "On the pitfalls of heteroscedastic uncertainty
    estimation"): each voxel's NLL is multiplied by its *detached* scale to the power β. Under the
    plain NLL (β = 0) the gradient on a voxel's value is sign(error) / b, so the voxels the network
    finds hard (large b: the low-flow, late-arriving hypoperfused tissue) barely train their
    value; at β = 1 every voxel's value trains as under an L1 loss, while the scale still goes
    to the expected absolute error (the same stationary point)."""
    loss = torch.log(scale) + (pred - target).abs() / scale
    if beta:
        loss = loss * scale.detach() ** beta
    weight = mask.expand_as(pred).to(pred.dtype)
    if windows is not None:
        weight = weight * importance_weights(pred.detach(), target, windows, low_weight)
    return (loss * weight).sum(), weight.sum()
