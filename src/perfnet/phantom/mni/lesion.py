"""Style-B lesions: ischaemia of one vascular territory, graded by the reach of the collaterals.

An occlusion (``proximal``: the whole territory of one side; ``distal``: a branch, a ball of radius
``branch_radius_mm`` around a random point of that territory) starves the region it feeds;
leptomeningeal collaterals reach in from the region's border with the neighbouring territories, so
the severity grows with the depth d (mm) into the region:

    s = 1 − exp(−d / λ),   λ = collateral_fraction · max d,

smoothed over 2 mm and scaled to 1 at the region's deepest point in the slab. At severity s:

    relative CBF = 1 − (1 − p)·s, falling to ``core_cbf`` where s passes ``core_onset`` (core),
    MTT × (1 + (m − 1)·s),   delay + D·s^γ,   dispersion kernel mean + B·s,

p = ``lesion_penumbra_cbf`` (≥ 0.35, so a penumbra-only lesion has no core), m the MTT factor, D the
lesion delay, γ = ``delay_exponent``, B = ``lesion_dispersion`` (× 0.3 in oligaemia). The core
(core lesions only) is where the blood–brain barrier breaks down too: MR contrast leakage is
weighted by its logistic weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from perfnet.phantom.mni.anatomy import PARENCHYMA_CLASSES, MniAnatomy
from perfnet.phantom.mni.config import MniConfig
from perfnet.phantom.mni.template import TERRITORY_CODES

#: Width (in severity) of the logistic step from penumbra to core.
CORE_STEP_WIDTH = 0.04


@dataclass
class LesionField:
    severity: np.ndarray  # float32 (X, Y, Z) in [0, 1]
    core_weight: np.ndarray  # float32 (X, Y, Z) in [0, 1]: the core's logistic weight (0 unless core)
    record: dict = field(default_factory=dict)


def lesion_field(cfg: MniConfig, mni: MniAnatomy, rng: np.random.Generator) -> LesionField:
    shape = mni.anatomy.labels.shape
    zeros = np.zeros(shape, dtype=np.float32)
    if cfg.lesion == "none":
        return LesionField(zeros, zeros.copy(), {"kind": "none"})
    side = 1.0 if cfg.hemisphere == "right" else -1.0
    x = mni.template_points[0].reshape(shape)
    territory = mni.territory == TERRITORY_CODES[cfg.territory]
    parenchyma = np.isin(mni.anatomy.labels, PARENCHYMA_CLASSES)
    region = territory.copy()
    record: dict = {"kind": cfg.lesion, "territory": cfg.territory, "side": cfg.hemisphere}
    if cfg.occlusion == "distal":
        candidates = np.flatnonzero((territory & parenchyma & (x * side > 0)).ravel())
        if candidates.size:
            centre = mni.template_points[:, int(rng.choice(candidates))].astype(np.float64)
            distance = np.linalg.norm(mni.template_points - centre[:, None].astype(np.float32), axis=0)
            region &= (distance < cfg.branch_radius_mm).reshape(shape)
            record["branch_centre_mni"] = [round(float(v), 2) for v in centre]
    voxel = mni.anatomy.grid.voxel_size
    # depth from the region's border; the midline is no border (both sides' territories counted)
    depth = ndimage.distance_transform_edt(region, sampling=voxel).astype(np.float32)
    region &= x * side > 0
    depth[~region] = 0.0
    inside = region & parenchyma
    deepest = float(depth[inside].max()) if inside.any() else 0.0
    if deepest <= 0:
        record["in_slab"] = False
        return LesionField(zeros, zeros.copy(), record)
    reach = max(cfg.collateral_fraction * deepest, 1.0)
    severity = np.where(region, 1.0 - np.exp(-depth / reach), 0.0).astype(np.float32)
    sigma = [2.0 / v for v in voxel[:2]] + [0.0]
    severity = ndimage.gaussian_filter(severity, sigma=sigma, mode="nearest")
    severity *= x * side > 0  # never across the midline
    top = float(severity[inside].max())
    severity = np.clip(severity / max(top, 1e-6), 0.0, 1.0).astype(np.float32)
    core = np.zeros(shape, dtype=np.float32)
    if cfg.lesion == "core":
        core = (1.0 / (1.0 + np.exp(-(severity - cfg.core_onset) / CORE_STEP_WIDTH))).astype(np.float32)
        core[severity <= 0] = 0.0
    record |= {"in_slab": True, "deepest_mm": round(deepest, 2), "collateral_reach_mm": round(reach, 2)}
    return LesionField(severity, core, record)


def relative_cbf(cfg: MniConfig, severity: np.ndarray, core_weight: np.ndarray) -> np.ndarray:
    """CBF / healthy CBF at the given severity and core weight."""
    if cfg.lesion == "none":
        return np.ones_like(severity)
    outside_core = 1.0 - (1.0 - cfg.lesion_penumbra_cbf) * severity
    return outside_core * (1.0 - core_weight) + cfg.core_cbf * core_weight
