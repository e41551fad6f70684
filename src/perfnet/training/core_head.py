"""A U-Net's core head fitted after the fact, on a frozen trained backbone (issue 12.3's lesion head).

The clinical core is a ratio, rCBF < 30 % of healthy tissue, and a regression pulls the core's low
CBF towards the population mean, so the rule on a network's CBF misses cores that the network
"sees" (its other maps and its features still differ there). The head
(:class:`perfnet.models.unet.UNet`, ``core_head=True``) reads the detached last decoder features,
the maps and the maps relative to their slice's brain median, all flip-averaged exactly as
inference averages them (:func:`perfnet.inference.cnn.predict`), and gives the probability that a
voxel is core. Only its parameters train, on the phantom's *truth* core (the tissue whose CBF is
< 30 % of its own healthy value: the definition the rule approximates), with the soft Dice plus
binary cross-entropy loss of segmentation networks (nnU-Net's). The studies must be ones the
backbone never trained on, so that the head learns the backbone's behaviour on unseen data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from perfnet.inference.inputs import resize_slices
from perfnet.models.unet import UNet
from perfnet.training.scale import train_frozen_head, view_features

#: The standardisation scale that switches an input off (``maps_only``): any feature / 1e30 is 0.
FEATURES_OFF = 1e30


@dataclass
class CoreSamples:
    """Brain voxels of some studies: the head's inputs (N, C + 2M; float16 to hold many studies),
    the truth core (N,) and each voxel's study index (N,)."""

    inputs: torch.Tensor
    core: torch.Tensor
    study: torch.Tensor

    @staticmethod
    def cat(parts: Iterable[CoreSamples]) -> CoreSamples:
        parts = list(parts)
        offset, studies = 0, []
        for p in parts:
            studies.append(p.study + offset)
            offset += int(p.study.max()) + 1 if p.study.numel() else 1
        return CoreSamples(
            torch.cat([p.inputs for p in parts]), torch.cat([p.core for p in parts]), torch.cat(studies)
        )


@torch.no_grad()
def collect_core(
    model: UNet, x: torch.Tensor, mask: torch.Tensor, core: np.ndarray, *, batch_slices: int = 4
) -> CoreSamples:
    """One study's samples from :func:`perfnet.training.scale.study_tensors`' inputs ``x`` and
    brain ``mask`` (model grid) and its truth ``core`` (X, Y, Z on the series grid)."""
    model.eval()
    size = tuple(x.shape[-2:])
    truth = torch.from_numpy(np.moveaxis(core, 2, 0).astype(np.float32))[:, None]
    truth = resize_slices(truth, size)[:, 0] > 0.5
    inputs = []
    for z0 in range(0, x.shape[0], batch_slices):
        views = view_features(model, x[z0 : z0 + batch_slices])
        features = value = None
        for f in views:
            v = model.head(f)
            features = f if features is None else features + f
            value = v if value is None else value + v
        assert features is not None and value is not None
        n = len(views)
        inputs.append(model.core_inputs(features / n, value / n, mask[z0 : z0 + batch_slices]))
    stacked = torch.cat(inputs)  # (Z, K, H, W)
    z, i, j = mask.nonzero(as_tuple=True)
    return CoreSamples(
        inputs=stacked[z, :, i, j].half(),
        core=(truth & mask)[z, i, j],
        study=torch.zeros(z.numel(), dtype=torch.long),
    )


def soft_dice_bce(logit: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Soft Dice loss (1 − Dice of the probabilities, smoothed by 1) plus the binary cross-entropy
    with positives weighted by ``pos_weight``."""
    p = torch.sigmoid(logit)
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logit, target, pos_weight=torch.tensor(pos_weight, dtype=logit.dtype)
    )
    return bce + 1 - dice


def fit_core_head(
    model: UNet,
    samples: CoreSamples,
    *,
    steps: int = 600,
    lr: float = 1e-2,
    batch: int = 65536,
    pos_weight: float = 3.0,
    seed: int = 0,
    maps_only: bool = False,
) -> list[float]:
    """Train the core head only (the backbone frozen) on the samples: the input standardisation
    buffers set from them, then Adam on :func:`soft_dice_bce` with batches of random voxels;
    returns the loss every 50 steps. ``maps_only``: the head reads the maps and the relative maps
    alone, not the decoder features (their standardisation scale set so large that they enter as
    0: quantities of the clinical rule's kind, which a change of data style moves less)."""
    if model.core_head is None:
        raise ValueError("the model has no core head to fit")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for module in model.core_head:
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
    x = samples.inputs.float()
    with torch.no_grad():
        model.core_input_mean.copy_(x.mean(dim=0))
        model.core_input_sd.copy_(x.std(dim=0).clamp_min(1e-6))
        if maps_only:
            model.core_input_sd[: model.core_input_sd.numel() - 2 * model.head.out_channels] = FEATURES_OFF
    target = samples.core.float()

    def loss_of(pick: torch.Tensor) -> torch.Tensor:
        return soft_dice_bce(model.core_logit_of_vectors(x[pick]), target[pick], pos_weight)

    params = list(model.core_head.parameters())
    n = x.shape[0]
    return train_frozen_head(model, params, loss_of, n, steps=steps, lr=lr, batch=batch, generator=gen)


def dice_per_study(model: UNet, samples: CoreSamples, threshold: float = 0.5) -> np.ndarray:
    """The voxel-wise core Dice of the head (probability ≥ ``threshold``) per study of the samples
    (model grid, before the lesion clean-up; NaN for a study without core in truth or head)."""
    with torch.no_grad():
        called = torch.sigmoid(model.core_logit_of_vectors(samples.inputs.float())) >= threshold
    out = []
    for s in range(int(samples.study.max()) + 1 if samples.study.numel() else 0):
        sel = samples.study == s
        a, b = called[sel], samples.core[sel]
        total = int(a.sum() + b.sum())
        out.append(2 * int((a & b).sum()) / total if total else np.nan)
    return np.array(out)


__all__ = ["CoreSamples", "collect_core", "dice_per_study", "fit_core_head", "soft_dice_bce"]
