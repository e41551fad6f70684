"""A U-Net's Laplace scale head fitted after the fact, on a frozen trained backbone.

The head (:class:`perfnet.models.unet.UNet`, ``scale_head=True``) reads the last decoder features
without sending gradients back, so fitting it changes nothing of the maps. Here only its
parameters train, on the Laplace negative log-likelihood ``log b + |y − μ| / b`` (Hess et al. 2018)
of the backbone's residuals, in the network's domain (standardised, log for the log-domain maps),
with μ and b averaged over the four in-plane flips exactly as inference averages them
(:func:`perfnet.inference.cnn.predict`). The studies it is fitted on should be ones the backbone
did not train on: on its own training data the residuals are smaller than on unseen studies, and a
scale fitted there would be too narrow.

:func:`temperature` then gives one factor per map that brings the 90 % interval's coverage on a
separate calibration set to 90 % (the scale's counterpart of Guo et al. 2017's temperature scaling);
the U-Net stores it in its ``scale_temperature`` buffer.

:func:`view_features`, :func:`with_new_head` and :func:`train_frozen_head` are the pieces every
post-hoc head shares (also the core head, :mod:`perfnet.training.core_head`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from perfnet.evaluation.metrics import laplace_half_width
from perfnet.inference.inputs import model_size, resize_slices
from perfnet.inference.targets import to_model
from perfnet.io.types import PerfusionSeries
from perfnet.models.unet import UNet

#: The four in-plane views inference averages (test-time flips).
VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclass
class ScaleSamples:
    """Brain voxels of some studies: the decoder features of each flip view (N, V, C), the
    flip-averaged maps μ (N, M) and the targets y (N, M), in the network's standardised domain."""

    features: torch.Tensor
    mean: torch.Tensor
    target: torch.Tensor

    @staticmethod
    def cat(parts: Iterable[ScaleSamples]) -> ScaleSamples:
        parts = list(parts)
        return ScaleSamples(
            torch.cat([p.features for p in parts]),
            torch.cat([p.mean for p in parts]),
            torch.cat([p.target for p in parts]),
        )


def study_tensors(
    series: PerfusionSeries,
    truth: dict[str, np.ndarray],
    truth_brain: np.ndarray,
    config: dict[str, Any],
    *,
    motion_correction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A study as the network sees it: inputs (Z, T, X', Y') scaled as inference scales them,
    standardised targets in the network's domain (Z, M, X', Y') and the loss mask (Z, X', Y'): the
    truth brain within the automatic one. Inputs are made by inference's own chain
    (:func:`perfnet.inference.series.model_input`); TTP targets are relative to the grid start."""
    from perfnet.inference.series import model_input

    made = model_input(series, config, motion_correction=motion_correction)
    inp = made.input
    maps, logs = config["maps"], config.get("log_offsets", {})
    size = model_size(series.spatial_shape[:2], series.voxel_size[:2], config.get("pixel_mm"))
    curves = torch.from_numpy(np.ascontiguousarray(np.moveaxis(inp.curves, (2, 3), (0, 1))))
    x = resize_slices(curves.float() / float(config["input_scale"]), size)
    targets = []
    for m in maps:
        y = truth[m] - np.float32(made.offset_s) if m == "ttp" else truth[m]
        y = (to_model(y.astype(np.float32), m, logs) - config["target_mean"][m]) / config["target_sd"][m]
        targets.append(np.moveaxis(y, 2, 0))
    y = resize_slices(torch.from_numpy(np.stack(targets, axis=1).astype(np.float32)), size)
    brain = np.moveaxis(truth_brain & inp.brain, 2, 0).astype(np.float32)
    mask = resize_slices(torch.from_numpy(brain)[:, None], size)[:, 0] > 0.5
    return x, y, mask


def view_features(model: UNet, xb: torch.Tensor) -> list[torch.Tensor]:
    """The last decoder features (B, C, H, W) of each in-plane flip of ``xb`` in :data:`VIEWS`,
    cropped to ``xb``'s size and flipped back: the views inference averages."""
    h, w = xb.shape[-2:]
    views = []
    for dims in VIEWS:
        f = model.decode(xb.flip(dims) if dims else xb)[..., :h, :w]  # cropped, then flipped back
        views.append(f.flip(dims) if dims else f)
    return views


def with_new_head(path: Any, head: dict[str, Any], prefixes: tuple[str, ...]) -> tuple[torch.nn.Module, dict]:
    """The network of a weights file with an unfitted head: ``head`` added to its constructor
    arguments, every tensor of the file whose name does not start with ``prefixes`` loaded (so a
    head of the same kind in the file is replaced). ValueError if the file is not such a backbone."""
    import json

    from perfnet.inference.weights import load_weights
    from perfnet.models import build_model

    old, config = load_weights(path)
    config = json.loads(json.dumps(config))
    config["model_kwargs"] = config["model_kwargs"] | head
    try:
        model = build_model(config["model"], **config["model_kwargs"])
    except TypeError:
        raise ValueError(f"{path} holds a {config['model']} network, which takes no such head") from None
    backbone = {k: v for k, v in old.state_dict().items() if not k.startswith(prefixes)}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith(prefixes) for k in missing):
        raise ValueError(f"{path} does not fit a U-Net backbone ({missing}, {unexpected})")
    return model.eval(), config


def train_frozen_head(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    steps: int,
    lr: float,
    batch: int,
    generator: torch.Generator,
) -> list[float]:
    """Adam (cosine schedule) on ``params`` alone, every other parameter of ``model`` frozen, with
    ``loss_of(indices)`` on batches of ``batch`` random samples of ``n``; returns the loss every
    50 steps (and the last). The shared loop of the post-hoc heads (scale head, core head)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history: list[float] = []
    model.train()
    for step in range(steps):
        pick = torch.randint(0, n, (min(batch, n),), generator=generator)
        loss = loss_of(pick)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history


@torch.no_grad()
def collect(
    model: UNet,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    voxels: int | None = None,
    generator: torch.Generator | None = None,
    batch_slices: int = 4,
) -> ScaleSamples:
    """The head's training samples of one study (:func:`study_tensors`' outputs): at most
    ``voxels`` brain voxels drawn at random (all without a limit)."""
    model.eval()
    feats, means = [], []
    for z0 in range(0, x.shape[0], batch_slices):
        view_feats = view_features(model, x[z0 : z0 + batch_slices])
        stacked = torch.stack(view_feats, dim=1)  # (B, V, C, H, W)
        feats.append(stacked)
        means.append(torch.stack([model.head(f) for f in view_feats]).mean(dim=0))
    f_all, mu = torch.cat(feats), torch.cat(means)
    idx = mask.nonzero(as_tuple=True)  # (z, i, j) of brain voxels
    if voxels is not None and idx[0].numel() > voxels:
        keep = torch.randperm(idx[0].numel(), generator=generator)[:voxels]
        idx = tuple(i[keep] for i in idx)
    z, i, j = idx
    return ScaleSamples(
        features=f_all[z, :, :, i, j].float(),  # (N, V, C)
        mean=mu[z, :, i, j].float(),
        target=y[z, :, i, j].float(),
    )


def head_scale(model: UNet, features: torch.Tensor) -> torch.Tensor:
    """The flip-averaged Laplace scale (N, M) of samples' features (N, V, C), as inference makes it."""
    n, v, c = features.shape
    return model.scale_of_vectors(features.reshape(n * v, c)).reshape(n, v, -1).mean(dim=1)


def laplace_nll(mean: torch.Tensor, scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over voxels and maps of log b + |y − μ| / b."""
    return (torch.log(scale) + (target - mean).abs() / scale).mean()


def fit_scale_head(
    model: UNet,
    samples: ScaleSamples,
    *,
    steps: int = 400,
    lr: float = 1e-2,
    batch: int = 65536,
    seed: int = 0,
) -> list[float]:
    """Train the scale head only (the backbone frozen) on the samples; returns the NLL per 50 steps.

    The last layer's bias starts where softplus gives the mean absolute residual of each map (the
    homoscedastic maximum-likelihood scale), so the fit starts calibrated on average."""
    if model.scale_head is None:
        raise ValueError("the model has no scale head to fit")
    gen = torch.Generator().manual_seed(seed)
    head = model.scale_head
    last = head[-1]
    with torch.no_grad():
        mad = (samples.target - samples.mean).abs().mean(dim=0).clamp_min(1e-2)
        last.weight.mul_(0.1)
        last.bias.copy_(mad + torch.log(-torch.expm1(-mad)))  # softplus⁻¹(mad)
        model.scale_temperature.fill_(1.0)

    def loss_of(pick: torch.Tensor) -> torch.Tensor:
        scale = head_scale(model, samples.features[pick])
        return laplace_nll(samples.mean[pick], scale, samples.target[pick])

    n = samples.mean.shape[0]
    params = list(head.parameters())
    return train_frozen_head(model, params, loss_of, n, steps=steps, lr=lr, batch=batch, generator=gen)


def temperature(errors: np.ndarray, scales: np.ndarray, level: float = 0.9) -> float:
    """The factor T for which |error| ≤ T·b·ln(1/(1 − level)) holds in exactly ``level`` of the voxels."""
    ratio = np.abs(errors) / np.maximum(scales, 1e-12)
    return float(np.quantile(ratio, level) / laplace_half_width(level))


def coverage(samples: ScaleSamples, model: UNet, level: float = 0.9) -> np.ndarray:
    """Per map, the fraction of samples inside the predicted central interval (network domain)."""
    with torch.no_grad():
        b = head_scale(model, samples.features)
    inside = (samples.target - samples.mean).abs() <= b * laplace_half_width(level)
    return inside.float().mean(dim=0).numpy()


__all__ = [
    "ScaleSamples",
    "collect",
    "coverage",
    "fit_scale_head",
    "head_scale",
    "laplace_nll",
    "study_tensors",
    "temperature",
    "train_frozen_head",
    "view_features",
    "with_new_head",
]
