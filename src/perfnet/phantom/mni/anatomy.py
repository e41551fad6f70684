"""Style-B anatomy: the MNI152 template posed, deformed and sampled onto the study grid.

Every study voxel centre w (scanner mm) maps to a template point

    q = c₀ + S⁻¹ Rᵀ (w − t) + u(·),

R the head rotation (pitch = through-plane tilt, roll, yaw), S the drawn head scale, t the in-plane
offset, c₀ the template's brain centre and u a smooth random displacement field (RMS
``warp_amplitude_mm``, correlation ``warp_length_mm``; sampled at the linearly mapped point); the
slab centre (world z = 0) lies ``slab_center_mm`` above c₀. Partial volume: the template's class
fractions (from its probabilities, the distance outside the intracranial space for extra-axial CSF,
skull, scalp and air, and vessel rasters) are averaged over each voxel's footprint and sampled at
its centre (see :func:`build_mni_anatomy`). The result carries the tissue fractions per voxel
besides the style-A ``Anatomy`` output type.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

from perfnet.phantom.anatomy import (
    AIR,
    ARTERY,
    BONE,
    CSF,
    DEEP_GREY,
    GREY_MATTER,
    SOFT_TISSUE,
    VEIN,
    WHITE_MATTER,
    Anatomy,
    Grid,
)
from perfnet.phantom.mni.config import MniConfig
from perfnet.phantom.mni.fields import FourierField
from perfnet.phantom.mni.template import (
    ARTERIES,
    BRAIN_CENTRE_MNI,
    MIDLINE_ARTERIES,
    OCCLUDED_BRANCHES,
    MniTemplate,
    load_template,
    territory_codes,
)

#: Class order of the fraction stack (label ids of the shared output type).
CLASSES = (AIR, SOFT_TISSUE, BONE, CSF, GREY_MATTER, WHITE_MATTER, DEEP_GREY, ARTERY, VEIN)
PARENCHYMA_CLASSES = (GREY_MATTER, WHITE_MATTER, DEEP_GREY)
#: Lowest template z (MNI mm) a slab may reach: the template ends at −72 (the lower brainstem).
LOWEST_TEMPLATE_Z = -68.0
#: Study voxels at least this large (mm, in-plane and through-plane) sample the 2 mm template.
COARSE_GRID_MM = 1.6


@dataclass
class MniAnatomy:
    """The shared ``Anatomy`` plus what style B adds: per-voxel fractions and the pose."""

    anatomy: Anatomy
    fractions: np.ndarray  # float32 (len(CLASSES), X, Y, Z): mean over the voxel's footprint
    occluded_fraction: np.ndarray  # float32 (X, Y, Z): blood of arteries distal to the occlusion
    template_points: np.ndarray  # float32 (3, N): MNI point of every voxel centre (C order)
    territory: np.ndarray  # uint8 (X, Y, Z): territory code of every voxel inside the head
    pose: dict

    def fraction(self, label: int) -> np.ndarray:
        return self.fractions[CLASSES.index(label)]

    @property
    def tissue_fraction(self) -> np.ndarray:
        return sum(self.fraction(c) for c in PARENCHYMA_CLASSES)  # type: ignore[return-value]


def head_rotation(cfg: MniConfig) -> np.ndarray:
    """Head → scanner rotation: pitch about x (through-plane tilt), roll about y, yaw about z."""
    return Rotation.from_euler("xyz", cfg.head_rotation_deg, degrees=True).as_matrix()


class _Pose:
    """World (scanner mm) → linearly mapped template point, and the warp on top of it."""

    def __init__(self, cfg: MniConfig, rotation: np.ndarray, slab_height: float) -> None:
        """``slab_height``: head mm from the brain centre c₀ up to the slab centre (world z = 0),
        so c₀ lies at world (offset x, offset y, −slab_height)."""
        self.rotation = rotation
        self.inverse_scale = 1.0 / np.asarray(cfg.head_scale, dtype=np.float64)
        self.offset = np.array([cfg.head_offset_mm[0], cfg.head_offset_mm[1], -slab_height])
        # q_lin = c0 + S⁻¹ Rᵀ (w − t): one 3×4 matrix
        linear = np.diag(self.inverse_scale) @ rotation.T
        self.matrix = np.c_[linear, BRAIN_CENTRE_MNI - linear @ self.offset]

    def linear(self, world: np.ndarray) -> np.ndarray:
        """(3, N) world → (3, N) template, float32."""
        m = self.matrix.astype(np.float32)
        return m[:, :3] @ world.astype(np.float32) + m[:, 3:]


class _Warp:
    """Smooth random displacement (template mm) on a lattice, sampled trilinearly."""

    BOX = np.array([[-110.0, 110.0], [-150.0, 110.0], [-90.0, 125.0]])

    def __init__(self, cfg: MniConfig, rng: np.random.Generator) -> None:
        spacing = cfg.warp_length_mm / 2.0
        shape = tuple(int(np.ceil((hi - lo) / spacing)) + 1 for lo, hi in self.BOX)
        lattice = rng.standard_normal((3, *shape)).astype(np.float32)
        for c in range(3):
            lattice[c] = ndimage.gaussian_filter(lattice[c], sigma=1.0, mode="wrap")
        lattice *= cfg.warp_amplitude_mm / max(float(lattice.std()), 1e-6) / np.sqrt(3.0)
        self.lattice = torch.from_numpy(lattice)[None]  # (1, 3, X, Y, Z)
        self.spacing = spacing

    def __call__(self, q: np.ndarray) -> np.ndarray:
        coords = (q - self.BOX[:, :1].astype(np.float32)) / np.float32(self.spacing)
        return _sample(self.lattice, coords)


def _sample(volume: torch.Tensor, voxel_coords: np.ndarray, padding: str = "zeros") -> np.ndarray:
    """Trilinear samples of ``volume`` (1, C, X, Y, Z) at voxel coordinates (3, N) → (C, N)."""
    sizes = np.array(volume.shape[2:], dtype=np.float32)
    norm = 2.0 * voxel_coords / np.maximum(sizes[:, None] - 1.0, 1.0) - 1.0
    grid = torch.from_numpy(np.ascontiguousarray(norm[::-1].T))[None, None, None]  # (1,1,1,N,3) z,y,x
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode=padding, align_corners=True)
    return out[0, :, 0, 0].numpy()


def _rasterise_vessels(
    template: MniTemplate,
    lo: np.ndarray,
    shape: tuple[int, int, int],
    vessels: list[tuple[np.ndarray, float, int]],
) -> np.ndarray:
    """Blood fraction rasters (channels, *shape) on the template crop starting at voxel ``lo``:
    every template voxel is the mean of 2×2×2 anti-aliased inside-tube tests, so a thin vessel's
    blood volume per mm stays ≈ πr² (within ~20 %) at either level."""
    channels = 1 + max(c for _, _, c in vessels)
    raster = np.zeros((channels, *shape), dtype=np.float32)
    inv = np.linalg.inv(template.affine)
    offsets = np.array(list(itertools.product((-0.25, 0.25), repeat=3)))
    edge = 0.5  # anti-aliasing width (voxels)
    for line, radius_mm, channel in vessels:
        radius = radius_mm / template.voxel_mm
        vox = (inv[:3, :3] @ line.T + inv[:3, 3:]).T - lo  # crop voxel coordinates
        for a, b in itertools.pairwise(vox):
            start = np.maximum(np.floor(np.minimum(a, b) - radius - 1).astype(int), 0)
            stop = np.minimum(np.ceil(np.maximum(a, b) + radius + 2).astype(int), np.array(shape))
            if np.any(stop <= start):
                continue
            axes = [np.arange(s, e, dtype=np.float64) for s, e in zip(start, stop, strict=True)]
            pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
            axis = b - a
            length = max(float(np.linalg.norm(axis)), 1e-9)
            unit = axis / length
            fraction = np.zeros(len(pts))
            for off in offsets:
                rel = pts + off - a
                along = np.clip(rel @ unit, 0.0, length)
                dist = np.linalg.norm(rel - along[:, None] * unit, axis=1)
                fraction += np.clip(0.5 + (radius - dist) / edge, 0.0, 1.0)
            fraction /= len(offsets)
            block = raster[channel, start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
            np.maximum(block, fraction.reshape(block.shape).astype(np.float32), out=block)
    return raster


def _vessel_lines(cfg: MniConfig, template: MniTemplate, rng: np.random.Generator) -> list:
    """(centre line MNI mm, radius, channel) with channel 0 open artery, 1 occluded, 2 sinus;
    every point jittered by ≤ 1.5 mm so no two heads share exact vessel paths."""
    occluded = set()
    if cfg.lesion in ("penumbra", "core"):
        occluded = set(OCCLUDED_BRANCHES[(cfg.territory, cfg.occlusion)])
    lesion_side = 1.0 if cfg.hemisphere == "right" else -1.0
    out = []
    for name, _territory, radius, points in ARTERIES:
        for side in (1.0, -1.0):
            line = np.array(points, dtype=np.float64) * np.array([side, 1.0, 1.0])
            line = line + rng.uniform(-1.5, 1.5, line.shape)
            channel = 1 if (name in occluded and side == lesion_side) else 0
            out.append((line, radius, channel))
    for _name, radius, points in MIDLINE_ARTERIES:
        out.append((np.array(points, dtype=np.float64), radius, 0))
    for line, radius in template.sinuses:
        out.append((line + rng.uniform(-1.0, 1.0, line.shape), radius, 2))
    return out


def study_grid(cfg: MniConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Voxel → scanner affine (RAS mm, slab centred at z = 0) and the grid shape."""
    nx = ny = cfg.matrix
    nz = cfg.slices
    px, _, dz = cfg.voxel_size
    affine = np.diag([px, px, dz, 1.0])
    affine[:3, 3] = [-(nx - 1) / 2 * px, -(ny - 1) / 2 * px, -(nz - 1) / 2 * dz]
    return affine, (nx, ny, nz)


def _slab_height(cfg: MniConfig, rotation: np.ndarray) -> float:
    """Height of the slab centre above the brain centre (head mm): ``slab_center_mm``, raised
    where the slab would reach below the template's lowest plane."""
    height = cfg.slab_center_mm
    half = (cfg.slices * cfg.slice_spacing_mm) / 2.0
    corners = np.array([[x, y, -half] for x in (-70.0, 70.0) for y in (-95.0, 80.0)]).T
    lowest = float(_Pose(cfg, rotation, height).linear(corners)[2].min())
    if lowest < LOWEST_TEMPLATE_Z:
        height += (LOWEST_TEMPLATE_Z - lowest) * float(np.mean(cfg.head_scale))
    return height


def _template_fractions(
    cfg: MniConfig, template: MniTemplate, crop: tuple[slice, ...], lo: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Class fractions (len(CLASSES) + 1 occluded-artery channel, *crop) on the 1 mm template crop.

    Outside the intracranial space the distance d to it (in head mm) decides: d < csf_gap →
    extra-axial CSF, then skull (thickness varying ± 20 % smoothly), scalp, air (1 mm soft edges).
    Arteries stay in the intracranial space and the extra-axial CSF; sinuses may groove the skull.
    """
    volumes = (template.gm, template.wm, template.intracranial, template.deep_grey)
    gm, wm, icv, deep = (v[crop] for v in volumes)
    shape = gm.shape
    vessels = _rasterise_vessels(template, lo, shape, _vessel_lines(cfg, template, rng))  # type: ignore[arg-type]
    d_head = template.outside_distance[crop] * np.float32(np.mean(cfg.head_scale))
    gap = cfg.csf_gap_mm
    skull = np.full(shape, cfg.skull_thickness_mm, dtype=np.float32)
    near = (d_head > 0) & (d_head < gap + 1.2 * cfg.skull_thickness_mm + 1.0)
    idx = np.nonzero(near)
    q = (template.affine[:3, :3] @ (np.stack(idx) + lo[:, None]) + template.affine[:3, 3:]).astype(np.float32)
    skull[idx] *= 1.0 + 0.1 * np.clip(FourierField(rng, 40.0, modes=16)(q), -2.0, 2.0)
    out = np.empty((len(CLASSES) + 1, *shape), dtype=np.float32)
    outside = 1.0 - icv
    inner = np.clip(gap - d_head + 0.5, 0.0, 1.0)
    to_scalp = np.clip(gap + skull - d_head + 0.5, 0.0, 1.0)
    to_air = np.clip(gap + skull + cfg.scalp_thickness_mm - d_head + 0.5, 0.0, 1.0)
    csf_out = outside * inner
    bone = outside * (to_scalp - inner)
    art_open, art_occluded, vein = vessels
    artery_room = np.clip(icv + csf_out, 0.0, 1.0)
    art_open *= artery_room
    art_occluded *= artery_room
    artery = np.minimum(art_open + art_occluded, 1.0)
    vein *= np.clip(icv + csf_out + bone, 0.0, 1.0)
    total = artery + vein
    blood = np.minimum(total, 1.0)
    rest = 1.0 - blood
    share = np.where(total > 0, blood / np.maximum(total, 1e-6), 0.0).astype(np.float32)
    out[0] = outside * (1.0 - to_air) * rest  # air
    out[1] = outside * (to_air - to_scalp) * rest  # scalp
    out[2] = bone * rest
    out[3] = (np.maximum(icv - gm - wm, 0.0) + csf_out) * rest
    out[4] = gm * (1.0 - deep) * rest
    out[5] = wm * rest
    out[6] = gm * deep * rest
    out[7] = artery * share
    out[8] = vein * share
    out[9] = np.minimum(art_occluded, 1.0) * share
    return out


def build_mni_anatomy(cfg: MniConfig) -> MniAnatomy:
    """Sample the posed, deformed template onto the study grid with partial volume.

    Partial volume: the template's class fractions are averaged over the voxel's footprint (a box
    of pixel × pixel × slice thickness in template mm, aligned with the template axes; the head's
    tilt of ≤ 18° is neglected in the box's orientation) and sampled trilinearly at the voxel
    centre's template point.
    """
    # the 2 mm template for coarse grids (it has the detail they can show, at 1/8 of the work)
    template = load_template(2 if min(cfg.pixel_mm, cfg.slice_thickness_mm) >= COARSE_GRID_MM else 1)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.anatomy_seed, 0xA7A]))
    rotation = head_rotation(cfg)
    height = _slab_height(cfg, rotation)
    pose = _Pose(cfg, rotation, height)
    warp = _Warp(cfg, rng)
    affine, shape = study_grid(cfg)
    nx, ny, nz = shape
    px, _, dz = cfg.voxel_size
    xs = affine[0, 3] + np.arange(nx) * px
    ys = affine[1, 3] + np.arange(ny) * px
    zs = affine[2, 3] + np.arange(nz) * dz
    world = np.stack(np.meshgrid(xs, ys, zs, indexing="ij")).reshape(3, -1)
    q_lin = pose.linear(world)
    template_points = q_lin + warp(q_lin)

    # the template crop under the slab (+ margin), its class fractions, the footprint average
    box = np.array([px, px, cfg.slice_thickness_mm]) / np.asarray(cfg.head_scale)
    margin = box.max() + 3.0
    inv = np.linalg.inv(template.affine)
    lo = np.floor(inv[:3, :3] @ (template_points.min(axis=1) - margin) + inv[:3, 3]).astype(int)
    hi = np.ceil(inv[:3, :3] @ (template_points.max(axis=1) + margin) + inv[:3, 3]).astype(int) + 1
    lo = np.clip(lo, 0, np.array(template.shape) - 2)
    hi = np.clip(hi, lo + 2, np.array(template.shape))
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    stack = _template_fractions(cfg, template, crop, lo, rng)
    sizes = np.maximum(np.rint(box / template.voxel_mm).astype(int), 1)
    for axis, size in enumerate(sizes):
        if size > 1:
            ndimage.uniform_filter1d(stack, int(size), axis=axis + 1, output=stack, mode="nearest")
    crop_inv = inv.copy()
    crop_inv[:3, 3] -= lo
    coords = (crop_inv[:3, :3] @ template_points + crop_inv[:3, 3:]).astype(np.float32)
    sampled = _sample(torch.from_numpy(stack)[None], coords, padding="border")
    del stack
    sampled = np.clip(sampled, 0.0, None)
    fractions = sampled[: len(CLASSES)]
    fractions /= np.maximum(fractions.sum(axis=0, keepdims=True), 1e-6)
    fractions = fractions.reshape(len(CLASSES), *shape)
    occluded = sampled[len(CLASSES)].reshape(shape)

    labels, background = _labels(fractions)
    artery_pv = fractions[CLASSES.index(ARTERY)]
    vein_pv = fractions[CLASSES.index(VEIN)]
    territory = np.zeros(shape, dtype=np.uint8)
    inside = np.flatnonzero(fractions[CLASSES.index(AIR)].ravel() < 0.5)
    wobble = np.tanh(FourierField(rng, 30.0, modes=24)(template_points[:, inside]))
    territory.ravel()[inside] = territory_codes(template_points[:, inside], wobble)
    parenchyma_territory = np.where(np.isin(labels, PARENCHYMA_CLASSES), territory, 0).astype(np.uint8)
    world_to_head = (np.diag(pose.inverse_scale) @ rotation.T).astype(np.float64)
    grid = Grid(shape=shape, affine=affine, points=template_points, world_to_head=world_to_head)
    anatomy = Anatomy(
        grid=grid,
        labels=labels,
        background_labels=background,
        artery_pv=np.ascontiguousarray(artery_pv, dtype=np.float32),
        artery_occluded=(occluded > 0.5 * artery_pv) & (artery_pv > 0.01),
        vein_pv=np.ascontiguousarray(vein_pv, dtype=np.float32),
        territory=parenchyma_territory,
        scale=np.asarray(cfg.head_scale, dtype=np.float64),
    )
    pose_record = {
        "head_centre_world_mm": [round(float(v), 3) for v in pose.offset],  # where c₀ lies
        "template_point_of_world_origin_mm": [round(float(v), 3) for v in pose.matrix[:, 3]],
        "world_to_template_linear": np.round(pose.matrix[:, :3], 6).tolist(),
        "slab_moved_up_mm": round(height - cfg.slab_center_mm, 3),
        "footprint_template_voxels": sizes.tolist(),
        "template": template.source,
    }
    return MniAnatomy(anatomy, fractions, occluded, template_points, territory, pose_record)


def _labels(fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels: parenchyma where GM + WM + deep grey ≥ ½ of the voxel and blood < ½ (its largest
    class), a vessel where its blood ≥ ½, else the largest class; background: without vessels."""
    index = {c: i for i, c in enumerate(CLASSES)}
    ids = np.array(CLASSES, dtype=np.uint8)
    tissue = sum(fractions[index[c]] for c in PARENCHYMA_CLASSES)
    non_vessel = [index[c] for c in CLASSES if c not in (ARTERY, VEIN)]
    background = ids[non_vessel][np.argmax(fractions[non_vessel], axis=0)]
    parenchyma_idx = [index[c] for c in PARENCHYMA_CLASSES]
    dominant_tissue = ids[parenchyma_idx][np.argmax(fractions[parenchyma_idx], axis=0)]
    background = np.where(tissue >= 0.5, dominant_tissue, background).astype(np.uint8)
    labels = background.copy()
    blood_artery, blood_vein = fractions[index[ARTERY]], fractions[index[VEIN]]
    labels[blood_vein >= 0.5] = VEIN
    labels[blood_artery >= 0.5] = ARTERY
    both = (blood_artery + blood_vein >= 0.5) & (labels != ARTERY) & (labels != VEIN)
    labels[both] = np.where(blood_artery[both] >= blood_vein[both], ARTERY, VEIN)
    return labels, background
