"""Digital head anatomy: skull, cortex with gyri and sulci, white matter, deep grey nuclei,
ventricles, cerebellum, arteries (ICA, MCA, ACA, basilar, PCA) and venous sinuses.

Everything is defined in head coordinates (mm; x to the patient's right, y anterior, z superior,
origin at the basal-ganglia level) on a template scaled to the drawn brain size, then sampled at
the voxel centres of the study grid, so anatomy does not depend on the matrix size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from perfnet.phantom.config import PhantomConfig
from perfnet.phantom.fields import FieldSampler

AIR, SOFT_TISSUE, BONE, CSF, GREY_MATTER, WHITE_MATTER, DEEP_GREY, ARTERY, VEIN = range(9)
LABEL_NAMES = {
    AIR: "air",
    SOFT_TISSUE: "soft tissue",
    BONE: "bone",
    CSF: "CSF",
    GREY_MATTER: "grey matter",
    WHITE_MATTER: "white matter",
    DEEP_GREY: "deep grey nuclei",
    ARTERY: "artery",
    VEIN: "venous sinus",
}
PARENCHYMA = (GREY_MATTER, WHITE_MATTER, DEEP_GREY)
TERRITORY_IDS = {"MCA": 1, "ACA": 2, "PCA": 3}

# Template of the template brain (semi-axes 66, 88, 72 up, 55 down) vessel centre lines:
# (name, territory it feeds or None, radius mm, points on the right side; mirrored when 'R' in name).
_ARTERIES: tuple[tuple[str, str | None, float, tuple[tuple[float, float, float], ...]], ...] = (
    ("ICA", None, 2.0, ((14, 8, -70), (14, 8, -24), (12, 6, -14))),
    ("M1", "MCA", 1.5, ((12, 6, -14), (24, 7, -12), (34, 6, -11))),
    ("M2sup", "MCA", 1.1, ((34, 6, -11), (39, -6, 0), (43, -20, 12), (46, -36, 24))),
    ("M2inf", "MCA", 1.0, ((34, 6, -11), (41, -8, -8), (46, -28, -4), (48, -45, 2))),
    ("A1", "ACA", 1.0, ((12, 6, -14), (2.2, 12, -10))),
    ("A2", "ACA", 0.9, ((2.2, 12, -10), (2.2, 30, 5), (2.2, 36, 24), (2.2, 22, 40), (2.2, -10, 50))),
    ("PCA", "PCA", 1.0, ((0.5, -6, -24), (10, -12, -18), (22, -30, -12), (20, -55, -4), (12, -76, 2))),
)
_MIDLINE_ARTERIES = (("BA", None, 1.6, ((0, -8, -75), (0, -6, -24))),)
# Branches that fill late and weakly when the territory they feed is occluded.
_OCCLUDABLE = {"MCA": ("M2sup", "M2inf"), "ACA": ("A2",), "PCA": ("PCA",)}


@dataclass
class Grid:
    """Voxel grid: shape, voxel → world affine (RAS, mm) and head-frame coordinates (3, N)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    points: np.ndarray  # head-frame x, y, z (mm) of every voxel centre, C order
    world_to_head: np.ndarray = field(default_factory=lambda: np.eye(3))  # rotation (yaw)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def make_grid(cfg: PhantomConfig) -> Grid:
    nx = ny = cfg.matrix
    nz = cfg.slices
    px, _, pz = cfg.voxel_size
    origin = np.array([-(nx - 1) / 2 * px, -(ny - 1) / 2 * px, cfg.slab_center_mm - (nz - 1) / 2 * pz])
    affine = np.diag([px, px, pz, 1.0])
    affine[:3, 3] = origin
    xw = (origin[0] + np.arange(nx) * px).astype(np.float32)
    yw = (origin[1] + np.arange(ny) * px).astype(np.float32)
    zw = (origin[2] + np.arange(nz) * pz).astype(np.float32)
    ox, oy = cfg.head_offset_mm
    c, s = np.cos(np.radians(cfg.head_yaw_deg)), np.sin(np.radians(cfg.head_yaw_deg))
    dx = (xw - ox)[:, None]
    dy = (yw - oy)[None, :]
    xh = (c * dx + s * dy).astype(np.float32)  # rotate world → head by −yaw
    yh = (-s * dx + c * dy).astype(np.float32)
    points = np.empty((3, nx, ny, nz), dtype=np.float32)
    points[0] = xh[:, :, None]
    points[1] = yh[:, :, None]
    points[2] = zw[None, None, :]
    rotation = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return Grid(shape=(nx, ny, nz), affine=affine, points=points.reshape(3, -1), world_to_head=rotation)


@dataclass
class Anatomy:
    """Labels and vessels of one head on a grid (3D arrays, shape = grid.shape)."""

    grid: Grid
    labels: np.ndarray  # uint8, LABEL_NAMES
    background_labels: np.ndarray  # uint8, the tissue a vessel runs through (labels before vessels)
    artery_pv: np.ndarray  # float32 arterial blood fraction of each voxel
    artery_occluded: np.ndarray  # bool: artery voxel distal to an occlusion
    vein_pv: np.ndarray  # float32 venous (sinus) blood fraction
    territory: np.ndarray  # uint8 TERRITORY_IDS of parenchyma (0 elsewhere)
    scale: np.ndarray  # template → head scale (sx, sy, sz_sup, sz_inf)

    @property
    def parenchyma(self) -> np.ndarray:
        return np.isin(self.labels, PARENCHYMA)


def _ellipsoid(
    p: np.ndarray, centre: tuple[float, float, float], semi: tuple[float, float, float]
) -> np.ndarray:
    return (
        ((p[0] - centre[0]) / semi[0]) ** 2
        + ((p[1] - centre[1]) / semi[1]) ** 2
        + ((p[2] - centre[2]) / semi[2]) ** 2
    ) < 1.0


def _to_head(template_points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    pts = np.array(template_points, dtype=np.float64)
    pts[:, 0] *= scale[0]
    pts[:, 1] *= scale[1]
    pts[:, 2] *= np.where(pts[:, 2] > 0, scale[2], scale[3])
    return pts


def tube_partial_volume(
    grid: Grid, a: np.ndarray, b: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blood fraction of the voxels around the segment a→b (head mm) of a vessel of ``radius``.

    Each voxel is supersampled (more sub-points along axes where it is large against the radius)
    and each sub-point counts with an anti-aliased inside test, so thin vessels in coarse voxels
    come out diluted (arterial partial volume) while the blood volume per mm stays ≈ πr².
    Returns (flat voxel indices, fractions) of the voxels it touches.
    """
    voxel = np.array(grid.voxel_size)
    n_sub = np.clip(np.ceil(voxel / radius), 1, 5).astype(int)
    sub_step = voxel / n_sub
    soft = float(sub_step.mean())
    offsets = np.stack(
        np.meshgrid(
            *[((np.arange(n) + 0.5) / n - 0.5) * v for n, v in zip(n_sub, voxel, strict=True)], indexing="ij"
        ),
        axis=-1,
    ).reshape(-1, 3)
    axis = b - a
    length = float(np.linalg.norm(axis))
    u = axis / max(length, 1e-9)
    reach = radius + soft + 0.5 * float(np.linalg.norm(voxel))
    nx, ny, nz = grid.shape
    pts = grid.points.reshape(3, nx, ny, nz)
    z_slices = pts[2, 0, 0, :]
    ks = np.nonzero((z_slices >= min(a[2], b[2]) - reach) & (z_slices <= max(a[2], b[2]) + reach))[0]
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    if ks.size == 0:
        return empty
    lo = np.minimum(a, b) - reach
    hi = np.maximum(a, b) + reach
    plane_x, plane_y = pts[0, :, :, 0], pts[1, :, :, 0]
    ii, jj = np.nonzero((plane_x >= lo[0]) & (plane_x <= hi[0]) & (plane_y >= lo[1]) & (plane_y <= hi[1]))
    if ii.size == 0:
        return empty
    i0, j0 = ii.min(), jj.min()
    sub = pts[:, i0 : ii.max() + 1, j0 : jj.max() + 1, ks[0] : ks[-1] + 1].reshape(3, -1).T.astype(np.float64)
    rel = sub - a
    t_centre = rel @ u
    d_centre = np.linalg.norm(rel - np.clip(t_centre, 0, length)[:, None] * u, axis=1)
    near = np.flatnonzero(d_centre < reach)
    if near.size == 0:
        return empty
    head_offsets = offsets @ grid.world_to_head.T  # sub-voxel offsets along the voxel (world) axes
    fraction = np.zeros(near.size)
    for off in head_offsets:
        r = rel[near] + off
        t = np.clip(r @ u, 0, length)
        d = np.linalg.norm(r - t[:, None] * u, axis=1)
        fraction += np.clip(0.5 + (radius - d) / soft, 0.0, 1.0)
    fraction /= len(head_offsets)
    keep = fraction > 0
    local = np.unravel_index(near[keep], (ii.max() - i0 + 1, jj.max() - j0 + 1, ks[-1] - ks[0] + 1))
    flat = np.ravel_multi_index((local[0] + i0, local[1] + j0, local[2] + ks[0]), grid.shape)
    return flat, fraction[keep].astype(np.float32)


def _add_vessel(target: np.ndarray, grid: Grid, pts: np.ndarray, radius: float) -> np.ndarray:
    """Max-combine a polyline vessel's partial volume into ``target`` (flat); return touched mask."""
    touched = np.zeros(target.shape, dtype=bool)
    for a, b in itertools.pairwise(pts):
        idx, pv = tube_partial_volume(grid, a, b, radius)
        np.maximum.at(target, idx, pv)
        touched[idx] = True
    return touched


def build_anatomy(cfg: PhantomConfig, grid: Grid | None = None) -> Anatomy:
    grid = grid or make_grid(cfg)
    fields = FieldSampler(np.random.SeedSequence([cfg.anatomy_seed, 1]))
    p = grid.points
    a, b, c_sup, c_inf = cfg.brain_semi_axes_mm
    scale = np.array([a / 66.0, b / 88.0, c_sup / 72.0, c_inf / 55.0])
    x, y, z = p
    # --- head layers from an egg-shaped ellipsoid (wider posteriorly, frontal base higher) -----
    a_eff = a * (1.0 - 0.06 * y / b)
    frontal = 1.0 / (1.0 + np.exp(-(y - 0.3 * b) / 8.0))
    c_eff = np.where(z >= 0, c_sup, c_inf * (1.0 - 0.45 * frontal))
    rho = np.sqrt((x / a_eff) ** 2 + (y / b) ** 2 + (z / c_eff) ** 2) + 1e-6
    radial = np.sqrt(x**2 + y**2 + z**2) / rho
    depth0 = (1.0 - rho) * radial  # ≈ distance inside the smooth brain surface (mm)
    surface_wobble = np.clip(fields.field(30.0, p), -2, 2) * 0.35 * cfg.csf_gap_mm
    depth = depth0 + surface_wobble
    labels = np.full(x.shape, AIR, dtype=np.uint8)
    gap, skull = cfg.csf_gap_mm, cfg.skull_thickness_mm
    labels[depth0 > -(gap + skull + cfg.scalp_thickness_mm)] = SOFT_TISSUE
    labels[depth0 > -(gap + skull)] = BONE
    labels[depth0 > -gap] = CSF
    brain = depth > 0
    labels[brain] = WHITE_MATTER
    # --- cortex: a ribbon of varying thickness plus sulci (zero lines of a smooth field) --------
    thick = cfg.cortex_thickness_mm
    gyral = fields.field(8.0, p) * cfg.gyral_amplitude_mm
    labels[brain & (depth < thick + gyral)] = GREY_MATTER
    h, grad = fields.field_with_gradient(cfg.sulcal_wavelength_mm / 2.0, p)
    to_sulcus = np.abs(h) / np.maximum(grad, 1e-3)
    sulcus_depth = cfg.sulcal_depth_mm * (0.75 + 0.25 * fields.field(40.0, p))
    sulcal_half_width = 0.4 + 0.15 * gap
    labels[brain & (to_sulcus < sulcal_half_width + thick) & (depth < sulcus_depth + thick)] = GREY_MATTER
    labels[brain & (to_sulcus < sulcal_half_width) & (depth < sulcus_depth)] = CSF
    # --- interhemispheric fissure (above the corpus callosum and at the poles) ----------------
    fissure_half = 0.6 + 0.5 * gap
    above_cc = (z > 22 * scale[2]) | (y > 0.42 * b) | (y < -0.5 * b)
    labels[brain & above_cc & (np.abs(x) < fissure_half + thick)] = GREY_MATTER
    labels[brain & above_cc & (np.abs(x) < fissure_half)] = CSF
    # --- Sylvian fissures and insular cortex --------------------------------------------------
    xs, ys = np.abs(x) / scale[0], y / scale[1]
    zs = np.where(z > 0, z / scale[2], z / scale[3])
    # the fissure runs up and back from the M1 segment and opens laterally, narrowing medially
    z_sylvian = -11.0 - 0.88 * (ys - 6.0) + 0.25 * (xs - 34.0)
    half_width = 0.8 + 1.2 * np.clip((xs - 30.0) / 25.0, 0.0, 1.0)
    in_sylvian = (xs > 30) & (ys > -34) & (ys < 14) & brain
    labels[in_sylvian & (np.abs(zs - z_sylvian) < half_width + thick)] = GREY_MATTER
    labels[in_sylvian & (np.abs(zs - z_sylvian) < half_width)] = CSF
    insula = brain & (xs > 34 - thick) & (xs < 34) & (ys > -25) & (ys < 18) & (np.abs(zs - z_sylvian) < 14)
    labels[insula] = GREY_MATTER
    # --- posterior fossa: cerebellum (folia) and brainstem --------------------------------------
    cerebellum = brain & (zs < -24) & (ys < -22)
    folia = fields.field(5.0, p)
    labels[cerebellum] = np.where(folia[cerebellum] > -0.4, GREY_MATTER, WHITE_MATTER)
    brainstem = brain & (zs < -8) & ((xs / 11.0) ** 2 + ((ys + 17.0) / 12.0) ** 2 < 1.0)
    labels[brainstem] = WHITE_MATTER
    # --- deep grey nuclei and ventricles --------------------------------------------------------
    pt = np.stack([xs, ys, zs])
    vs = cfg.ventricle_scale
    for centre, semi in (
        ((9 + 3 * vs, 14, 8), (4.5, 10, 8)),  # caudate head
        ((22, 2, 0), (6, 13, 8)),  # lentiform nucleus
        ((10, -14, 5), (7.5, 11, 8)),  # thalamus
    ):
        labels[brain & _ellipsoid(pt, centre, semi)] = DEEP_GREY
    ventricles = (
        _ellipsoid(pt, (5.5 * vs, -4, 16), (3.5 * vs, 28, 5 * vs))
        | _ellipsoid(pt, (4 + 3 * vs, 20, 10), (3.5 * vs, 9, 6 * vs))
        | _ellipsoid(pt, (14, -30, 10), (3 * vs, 10, 4 * vs))
        | ((xs < 1.2 * vs) & (ys > -18) & (ys < 6) & (zs > -12) & (zs < 8))
        | _ellipsoid(pt, (0, -32, -35), (5, 3, 6))
    )
    labels[brain & ventricles] = CSF
    # --- vascular territories of the parenchyma ----------------------------------------------
    territory = np.zeros(x.shape, dtype=np.uint8)
    wobble = fields.field(25.0, p)
    posterior = (
        (ys < -46 + 12 * wobble) | (zs < -24) & (ys < -20) | _ellipsoid(pt, (10, -14, 5), (7.5, 11, 8))
    )
    medial = (xs < 17 + 8 * wobble + 0.2 * np.maximum(zs, 0)) & (zs > -2) & (ys > -46)
    territory[:] = TERRITORY_IDS["MCA"]
    territory[medial] = TERRITORY_IDS["ACA"]
    territory[posterior] = TERRITORY_IDS["PCA"]
    parenchyma = np.isin(labels, PARENCHYMA)
    territory[~parenchyma] = 0
    # --- vessels ------------------------------------------------------------------------------
    artery_pv = np.zeros(x.shape, dtype=np.float32)
    occluded = np.zeros(x.shape, dtype=bool)
    lesion_side = 1.0 if cfg.hemisphere == "right" else -1.0
    occlusion_branches = _OCCLUDABLE[cfg.territory] if cfg.lesion in ("penumbra", "core") else ()
    for name, _territory, radius, template in _ARTERIES:
        for side in (1.0, -1.0):
            pts = _to_head(template, scale) * np.array([side, 1.0, 1.0])
            touched = _add_vessel(artery_pv, grid, pts, radius)
            if name in occlusion_branches and side == lesion_side:
                occluded |= touched
    for _name, _t, radius, template in _MIDLINE_ARTERIES:
        _add_vessel(artery_pv, grid, _to_head(template, scale), radius)
    vein_pv = np.zeros(x.shape, dtype=np.float32)
    for pts, radius in _sinuses(cfg, scale):
        _add_vessel(vein_pv, grid, pts, radius)
    # vessels lie in the brain, the fissures and the subarachnoid space, not in bone
    inside = labels >= CSF
    artery_pv[~inside] = 0
    vein_pv[labels < BONE] = 0
    occluded &= artery_pv > 0
    background = labels.copy()
    labels[(artery_pv >= 0.5) & inside] = ARTERY
    labels[(vein_pv >= 0.5) & (labels != ARTERY)] = VEIN
    territory[~np.isin(labels, PARENCHYMA)] = 0
    shape = grid.shape
    return Anatomy(
        grid=grid,
        labels=labels.reshape(shape),
        background_labels=background.reshape(shape),
        artery_pv=artery_pv.reshape(shape),
        artery_occluded=occluded.reshape(shape),
        vein_pv=vein_pv.reshape(shape),
        territory=territory.reshape(shape),
        scale=scale,
    )


def _sinuses(cfg: PhantomConfig, scale: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Superior sagittal, straight and transverse sinuses (centre lines in head mm, radius)."""
    a, b, c_sup, c_inf = cfg.brain_semi_axes_mm
    radius = 3.5
    out_by = cfg.csf_gap_mm * 0.5 + radius * 0.6
    theta = np.radians(np.linspace(35, 200, 24))
    y = (b + out_by) * np.cos(theta)
    z = np.where(
        np.sin(theta) >= 0, (c_sup + out_by) * np.sin(theta), (c_inf * 0.55 + out_by) * np.sin(theta)
    )
    sagittal = np.stack([np.zeros_like(y), y, z], axis=1)
    confluence = sagittal[-1]
    straight = np.array([[0.0, -30 * scale[1], 14 * scale[2]], confluence])
    out = [(sagittal, radius), (straight, 2.5)]
    for side in (1.0, -1.0):
        transverse = np.array(
            [
                confluence,
                [side * 0.5 * a, confluence[1] + 0.18 * b, confluence[2] - 6],
                [side * 0.75 * a, -0.45 * b, confluence[2] - 14],
            ]
        )
        out.append((transverse, 3.0))
    return out
