"""Per-voxel perfusion parameters of healthy tissue and of an ischaemic lesion.

Healthy tissue takes class values (grey, white, deep grey) modulated by smooth fields. A lesion
is a smooth weight w ∈ [0, 1] centred in one vascular territory of one hemisphere; at weight w:

    delay   = δ₀ + lesion_delay · ((1 − m)·w^γ + m·w₂)
    CBF     = CBF₀ · (1 − (1 − lesion_cbf_factor) · w^p)      (p = lesion_core_power)
    MTT     = MTT₀ · (1 + (lesion_mtt_factor − 1) · w)
    β       = β₀ + lesion_dispersion · w                       (0 for the box residue: plug flow)

so CBV = CBF·MTT/60 falls in the core and is kept or raised in the penumbra. The delay's
exponent γ (``lesion_delay_power``) and its share m (``lesion_delay_mix``) of a second smooth weight
w₂ (its own centre in the same territory, 1.3× the radius) are 1 and 0 by default: the delay then
follows the CBF drop, the lowest flow always at the longest delay. Drawn apart (training cohorts,
``perfnet simulate --delay-power/--delay-mix``) the core can sit at a moderate delay, as with good
collaterals or an early scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from perfnet.phantom.anatomy import DEEP_GREY, GREY_MATTER, TERRITORY_IDS, WHITE_MATTER, Anatomy
from perfnet.phantom.config import PhantomConfig
from perfnet.phantom.fields import FieldSampler

# Lesion centres in template head coordinates (right side; mirrored for the left).
_LESION_CENTRES = {"MCA": (36.0, -4.0, 6.0), "ACA": (8.0, 18.0, 34.0), "PCA": (16.0, -62.0, 2.0)}


@dataclass
class PerfusionParameters:
    """Flat arrays over the parenchyma voxels (``index`` into the raveled volume)."""

    index: np.ndarray
    cbf: np.ndarray
    cbf_healthy: np.ndarray
    mtt: np.ndarray
    delay: np.ndarray
    dispersion: np.ndarray
    lesion_weight: np.ndarray


def lesion_weight(
    cfg: PhantomConfig,
    anatomy: Anatomy,
    fields: FieldSampler,
    radius_mm: float | None = None,
    jitter_mm: float = 8.0,
) -> np.ndarray:
    """Smooth lesion weight (flat over all voxels), 0 outside the affected territory side; its
    centre drawn within ``jitter_mm`` of the territory's, its radius ``lesion_radius_mm`` unless given."""
    n_vox = anatomy.labels.size
    if cfg.lesion == "none":
        return np.zeros(n_vox, dtype=np.float32)
    p = anatomy.grid.points
    side = 1.0 if cfg.hemisphere == "right" else -1.0
    rng = fields.rng
    cx, cy, cz = _LESION_CENTRES[cfg.territory]
    sx, sy, sz_sup, sz_inf = anatomy.scale
    centre = np.array([side * cx * sx, cy * sy, cz * (sz_sup if cz > 0 else sz_inf)])
    centre += rng.uniform(-jitter_mm, jitter_mm, 3)
    distance = np.sqrt(((p - centre[:, None].astype(np.float32)) ** 2).sum(axis=0))
    warped = distance * (1.0 + 0.3 * np.clip(fields.field(30.0, p), -2, 2))
    weight = np.exp(-((warped / (radius_mm or cfg.lesion_radius_mm)) ** 2.5))
    # confine to the territory on that side, with borders softened over ~3 mm
    in_territory = (anatomy.territory == TERRITORY_IDS[cfg.territory]) & (
        (p[0] * side).reshape(anatomy.labels.shape) > 0
    )
    sigma = [3.0 / v for v in anatomy.grid.voxel_size]
    membership = ndimage.gaussian_filter(in_territory.astype(np.float32), sigma=sigma, mode="nearest").ravel()
    weight = weight * np.clip(2.0 * membership, 0.0, 1.0) * (p[0] * side > 0)  # never across the midline
    parenchyma = anatomy.parenchyma.ravel()
    top = float(weight[parenchyma].max()) if parenchyma.any() else 0.0
    if top > 0:
        weight = weight / top
    weight[~parenchyma] = 0
    return weight.astype(np.float32)


def _delay_weight(
    cfg: PhantomConfig, anatomy: Anatomy, fields: FieldSampler, index: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """(1 − m)·w^γ + m·w₂: w itself by default (γ = 1, m = 0; nothing more drawn, so the default
    phantom is the one drawn before these parameters existed)."""
    gamma, mix = cfg.lesion_delay_power, cfg.lesion_delay_mix
    own = w if gamma == 1 else w**gamma
    if mix == 0 or cfg.lesion == "none":
        return own
    second = lesion_weight(cfg, anatomy, fields, radius_mm=1.3 * cfg.lesion_radius_mm, jitter_mm=25.0)[index]
    return (1.0 - mix) * own + mix * second


def perfusion_parameters(cfg: PhantomConfig, anatomy: Anatomy) -> PerfusionParameters:
    fields = FieldSampler(np.random.SeedSequence([cfg.anatomy_seed, 2]))
    labels = anatomy.labels.ravel()
    index = np.flatnonzero(np.isin(labels, (GREY_MATTER, WHITE_MATTER, DEEP_GREY)))
    cls = labels[index]
    p = anatomy.grid.points[:, index]
    cbf0 = np.select([cls == GREY_MATTER, cls == WHITE_MATTER], [cfg.cbf_gm, cfg.cbf_wm], cfg.cbf_deep)
    cbv0 = np.select([cls == GREY_MATTER, cls == WHITE_MATTER], [cfg.cbv_gm, cfg.cbv_wm], cfg.cbv_deep)
    var = cfg.perfusion_variation
    cbf0 = cbf0 * np.exp(var * np.clip(fields.field(20.0, p), -3, 3))
    cbv0 = cbv0 * np.exp(var * np.clip(fields.field(20.0, p), -3, 3))
    mtt0 = 60.0 * cbv0 / cbf0
    delay0 = cfg.baseline_delay_s * np.clip(0.7 + 0.3 * fields.field(40.0, p), 0.0, 1.6)
    beta0 = cfg.baseline_dispersion_s * np.clip(0.7 + 0.3 * fields.field(40.0, p), 0.0, 1.6)
    w = lesion_weight(cfg, anatomy, fields)[index]
    cbf = cbf0 * (1.0 - (1.0 - cfg.lesion_cbf) * w**cfg.lesion_core_power)
    mtt = mtt0 * (1.0 + (cfg.lesion_mtt - 1.0) * w)
    delay = delay0 + cfg.lesion_delay * _delay_weight(cfg, anatomy, fields, index, w)
    beta = beta0 + cfg.lesion_dispersion_s * w
    if cfg.residue == "box":
        beta = np.zeros_like(beta)
    return PerfusionParameters(
        index=index,
        cbf=cbf.astype(np.float64),
        cbf_healthy=cbf0.astype(np.float64),
        mtt=mtt.astype(np.float64),
        delay=delay.astype(np.float64),
        dispersion=beta.astype(np.float64),
        lesion_weight=w,
    )
