"""Rigid registration of every frame of a 4D series to a reference (the estimation half of
:mod:`perfnet.preprocess.motion`, which documents the method, the pose convention and its limits),
and the resampler that applies the poses.

Coarse to fine on block-averaged copies, batched inverse-compositional Gauss–Newton on the sum of
squared differences with a per-frame gain and offset (Baker & Matthews, IJCV 2004).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

from perfnet.spatial import resample_frames, rigid_matrix

#: Voxel size (mm) of the finest registration level; coarser levels double it (:data:`LEVELS`).
FINE_VOXEL_MM = 1.0
LEVELS = 3
#: Radius (mm) of the sphere whose largest point displacement summarises a pose.
DISPLACEMENT_RADIUS_MM = 80.0
#: Gauss–Newton iterations per level and the convergence tolerance: the largest displacement of
#: the update on the :data:`DISPLACEMENT_RADIUS_MM` sphere, in mm.
ITERATIONS = 25
TOLERANCE_MM = 2e-3
#: Fraction of the voxels (strongest reference gradients) sampled, and frames per batch.
EDGE_FRACTION = 0.25
CHUNK_FRAMES = 16
RESAMPLE_CHUNK = 8
#: Gaussian smoothing (SD in voxels of each level) of reference and frames before registration.
SMOOTH_VOXELS = 1.0
FINE_SMOOTH_VOXELS = 0.0


def volume_centre(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World position (mm) of the centre of a volume of ``shape``."""
    return (np.asarray(affine) @ np.r_[(np.asarray(shape[:3]) - 1) / 2.0, 1.0])[:3]


def sphere_displacement(parameters: np.ndarray, radius: float = DISPLACEMENT_RADIUS_MM) -> np.ndarray:
    """Largest displacement |(R − I) r + t| over points r on a sphere of ``radius`` (mm), per pose."""
    n = 400  # Fibonacci sphere
    k = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * k / n), np.pi * (1 + 5**0.5) * k
    points = radius * np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )
    out = np.empty(len(parameters))
    for i, p in enumerate(np.asarray(parameters, dtype=np.float64)):
        m = rigid_matrix(p, np.zeros(3))
        out[i] = np.linalg.norm(points @ (m[:3, :3] - np.eye(3)).T + m[:3, 3], axis=1).max()
    return out


def shrink_factors(voxel_size: tuple[float, ...], target_mm: float) -> tuple[int, int, int]:
    """Per-axis integer block sizes bringing the voxels to about ``target_mm`` (≥ 1)."""
    return tuple(max(1, round(target_mm / v)) for v in voxel_size[:3])  # type: ignore[return-value]


def block_mean(data: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` voxels over the first three axes (edges cut);
    (X, Y, Z) or (X, Y, Z, T) → float32. Chunked over the last axis to bound memory."""
    fx, fy, fz = factors
    nx, ny, nz = (s // f for s, f in zip(data.shape[:3], factors, strict=True))
    if data.ndim == 3:
        return block_mean(data[..., None], factors)[..., 0]
    out = np.empty((nx, ny, nz, data.shape[3]), dtype=np.float32)
    for start in range(0, data.shape[3], 8):
        cut = data[: nx * fx, : ny * fy, : nz * fz, start : start + 8]
        out[..., start : start + 8] = cut.reshape(nx, fx, ny, fy, nz, fz, -1).mean(
            axis=(1, 3, 5), dtype=np.float32
        )
    return out


def level_affine(affine: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Voxel → world affine of a block-averaged grid (block k covers voxels k·f … k·f + f − 1)."""
    scale = np.diag([*factors, 1.0])
    scale[:3, 3] = (np.asarray(factors) - 1) / 2.0
    return np.asarray(affine, dtype=np.float64) @ scale


def _delta(step: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4×4 rigid update about ``centre`` from (δt mm, ω rad rotation vector)."""
    out = np.eye(4)
    rot = Rotation.from_rotvec(step[3:]).as_matrix()
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + step[:3]
    return out


def _pose(world: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(tx, ty, tz, rx, ry, rz) of a 4×4 rigid world transform about ``centre``."""
    rot = world[:3, :3]
    translation = world[:3, 3] - (centre - rot @ centre)
    return np.r_[translation, Rotation.from_matrix(rot).as_euler("xyz", degrees=True)]


class _Level:
    """One pyramid level: the reference's sample points and their steepest-descent images."""

    def __init__(self, fixed: np.ndarray, affine: np.ndarray, centre: np.ndarray) -> None:
        self.shape = fixed.shape
        self.affine = affine
        self.inverse = np.linalg.inv(affine)
        f = torch.from_numpy(np.ascontiguousarray(fixed, dtype=np.float32))
        grads = [  # central differences along i, j, k (voxel units); none along a single slice
            torch.gradient(f, dim=d)[0] if n > 1 else torch.zeros_like(f) for d, n in enumerate(self.shape)
        ]
        index_grad = torch.stack([g.reshape(-1) for g in grads], dim=1)  # (N, 3)
        grad = index_grad @ torch.from_numpy(np.linalg.inv(affine[:3, :3]).astype(np.float32))
        magnitude = grad.norm(dim=1)
        count = max(64, int(EDGE_FRACTION * magnitude.numel()))
        keep = torch.topk(magnitude, min(count, magnitude.numel())).indices.sort().values
        grad = grad[keep]
        idx = np.stack(np.unravel_index(keep.numpy(), self.shape), axis=1).astype(np.float64)
        r = torch.from_numpy((idx @ affine[:3, :3].T + affine[:3, 3] - centre).astype(np.float32))
        self.jacobian = torch.cat([grad, torch.linalg.cross(r, grad, dim=1)], dim=1)  # (P, 6)
        self.outer = (self.jacobian[:, :, None] * self.jacobian[:, None, :]).reshape(-1, 36)
        self.fixed = f.reshape(-1)[keep]
        self.index = torch.from_numpy(np.c_[idx, np.ones(len(idx))].astype(np.float32))  # (P, 4)

    def warp(self, frames: torch.Tensor, worlds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, X, Y, Z) sampled at W x for the level's sample points x, and their weights."""
        maps = torch.from_numpy((self.inverse[None] @ worlds @ self.affine[None])[:, :3].astype(np.float32))
        coords = torch.einsum("pc,brc->bpr", self.index, maps)  # (B, P, 3) voxel indices (i, j, k)
        n = torch.tensor(self.shape, dtype=torch.float32)
        # weight 1 from 1.5 voxels inside the frame's edges, falling linearly to 0 at 0.5 voxel
        # (axes of ≥ 4 voxels): the frame's border voxels may hold values filled in from outside
        # the field of view by an earlier resampling, and a weight continuous in the pose keeps
        # samples leaving the frame from pulling the fit
        ramp = torch.clamp(coords - 0.5, 0.0, 1.0) * torch.clamp(n - 1.5 - coords, 0.0, 1.0)
        hard = ((coords >= -1e-4) & (coords <= n - 1 + 1e-4)).float()
        weight = torch.where(n >= 4, ramp, hard).prod(dim=2)
        grid = (2.0 * coords / (n - 1).clamp_min(1.0) - 1.0).flip(-1)  # torch order (k, j, i)
        sampled = F.grid_sample(
            frames[:, None], grid[:, None, None], mode="bilinear", padding_mode="border", align_corners=True
        )
        return sampled.reshape(len(worlds), -1), weight


def _register_level(
    level: _Level, frames: torch.Tensor, worlds: np.ndarray, centre: np.ndarray, iterations: int
) -> np.ndarray:
    """Gauss–Newton with a per-frame gain and offset; returns the refined poses (B, 4, 4)."""
    worlds = worlds.copy()
    active = np.ones(len(worlds), dtype=bool)
    fixed = level.fixed[None]
    for _ in range(iterations):
        ids = np.flatnonzero(active)
        if ids.size == 0:
            break
        warped, w = level.warp(frames[ids], worlds[ids])
        n = w.sum(dim=1, keepdim=True).clamp_min(1.0)
        mf = (w * fixed).sum(dim=1, keepdim=True) / n
        mw = (w * warped).sum(dim=1, keepdim=True) / n
        cov = (w * (fixed - mf) * (warped - mw)).sum(dim=1, keepdim=True)
        var = (w * (fixed - mf) ** 2).sum(dim=1, keepdim=True).clamp_min(1e-12)
        gain = (cov / var).clamp(0.2, 5.0)
        residual = w * (warped - (gain * (fixed - mf) + mw))
        hessian = (w @ level.outer).reshape(-1, 6, 6).double() * (gain.double() ** 2)[:, :, None]
        gradient = (residual @ level.jacobian).double() * gain.double()
        trace = torch.diagonal(hessian, dim1=1, dim2=2).mean(dim=1)
        # a featureless frame (flat image, no gradients) has no information on its pose: no step
        informative = trace > 1e-20
        damping = (1e-9 * trace + 1e-30)[:, None, None]
        step, info = torch.linalg.solve_ex(
            hessian + damping * torch.eye(6, dtype=torch.float64), gradient[..., None]
        )
        ok = informative & (info == 0) & torch.isfinite(step[..., 0]).all(dim=1)
        step = torch.where(ok[:, None], step[..., 0], torch.zeros_like(step[..., 0])).numpy()
        for b, t in enumerate(ids):
            worlds[t] = worlds[t] @ np.linalg.inv(_delta(step[b], centre))
            moved = np.linalg.norm(step[b, :3]) + np.linalg.norm(step[b, 3:]) * DISPLACEMENT_RADIUS_MM
            active[t] = moved > TOLERANCE_MM
    return worlds


def resample_with_edges(data4d: np.ndarray, voxel_maps: np.ndarray, cval: float) -> np.ndarray:
    """:func:`perfnet.spatial.resample_frames`, but points up to one slice beyond the first or last
    slice take that slice's values (edge replication), not ``cval``: a slight through-plane motion
    must not pull air into the edge slices. Processed in chunks of frames to bound memory."""
    shift = np.eye(4)
    shift[2, 3] = 1.0  # padded slice index = slice index + 1
    padded_maps = shift[None] @ voxel_maps @ np.linalg.inv(shift)[None]
    out = np.empty(data4d.shape, dtype=np.float32)
    for start in range(0, data4d.shape[3], RESAMPLE_CHUNK):
        chunk = np.asarray(data4d[..., start : start + RESAMPLE_CHUNK], dtype=np.float32)
        padded = np.concatenate([chunk[:, :, :1], chunk, chunk[:, :, -1:]], axis=2)
        moved = resample_frames(padded, padded_maps[start : start + RESAMPLE_CHUNK], cval=cval)
        out[..., start : start + RESAMPLE_CHUNK] = moved[:, :, 1:-1]
    return out


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def estimate_motion(
    data4d: np.ndarray, affine: np.ndarray, reference: int | str = 0, fine_voxel_mm: float = FINE_VOXEL_MM
) -> np.ndarray:
    """Pose parameters (T, 6) of every frame relative to the reference (see the module docstring).

    The Gauss–Newton loop runs many small torch operations: it runs single-threaded, since the
    thread barriers of every small operation cost more than they gain (and, on a loaded machine,
    make a run many times slower).
    """
    with _torch_threads(1):
        return _estimate_motion(data4d, affine, reference, fine_voxel_mm)


def _estimate_motion(
    data4d: np.ndarray, affine: np.ndarray, reference: int | str, fine_voxel_mm: float
) -> np.ndarray:
    return _register(data4d, affine, reference, fine_voxel_mm)[0]


def _register(
    data4d: np.ndarray, affine: np.ndarray, reference: int | str, fine_voxel_mm: float
) -> tuple[np.ndarray, list[tuple[np.ndarray, tuple[int, int, int]]]]:
    """Poses (T, 6) and the pyramid's block means (unsmoothed), finest first, with their factors."""
    shape = data4d.shape[:3]
    n_frames = data4d.shape[3]
    voxel = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    centre = volume_centre(affine, shape)
    factors = [shrink_factors(voxel, fine_voxel_mm)]
    data = [block_mean(data4d, factors[0])]
    for _ in range(LEVELS - 1):  # halve the axes whose voxels are still small and many
        small = data[-1]
        relative = tuple(
            2 if v * f <= 2.5 * fine_voxel_mm * 2 ** (len(data) - 1) and n >= 32 else 1
            for v, f, n in zip(voxel, factors[-1], small.shape[:3], strict=True)
        )
        if relative == (1, 1, 1):
            break
        factors.append(tuple(f * r for f, r in zip(factors[-1], relative, strict=True)))
        data.append(block_mean(small, relative))
    pyramid = []
    for i, (small, f) in enumerate(zip(data[::-1], factors[::-1], strict=True)):
        width = SMOOTH_VOXELS if i < len(data) - 1 else FINE_SMOOTH_VOXELS
        if width > 0:
            small = _smooth(small, np.asarray(voxel) * np.asarray(f), width)
        pyramid.append((small, level_affine(affine, f)))

    levels, tensors = [], []
    for small, lev_affine in pyramid:
        ref = small.mean(axis=3) if reference == "mean" else small[..., int(reference)]
        levels.append(_Level(ref, lev_affine, centre))
        tensors.append(torch.from_numpy(np.ascontiguousarray(np.moveaxis(small, 3, 0))))
    if reference == "mean":
        chunks = [list(range(s, min(s + CHUNK_FRAMES, n_frames))) for s in range(0, n_frames, CHUNK_FRAMES)]
    else:  # outward from the reference, so each chunk starts next to a registered frame
        r = int(reference)
        after, before = list(range(r + 1, n_frames)), list(range(r - 1, -1, -1))
        chunks = [after[s : s + CHUNK_FRAMES] for s in range(0, len(after), CHUNK_FRAMES)]
        chunks += [before[s : s + CHUNK_FRAMES] for s in range(0, len(before), CHUNK_FRAMES)]
    worlds = np.tile(np.eye(4), (n_frames, 1, 1))
    for chunk in chunks:
        neighbour = chunk[0] - 1 if reference == "mean" or chunk[0] > int(reference) else chunk[0] + 1
        start = worlds[neighbour] if 0 <= neighbour < n_frames else np.eye(4)
        poses = np.repeat(start[None], len(chunk), axis=0)
        for level, frames in zip(levels, tensors, strict=True):
            poses = _register_level(level, frames[chunk], poses, centre, ITERATIONS)
        worlds[chunk] = poses
    return np.stack([_pose(w, centre) for w in worlds]), list(zip(data, factors, strict=True))


def _smooth(small: np.ndarray, size_mm: np.ndarray, width: float) -> np.ndarray:
    """Gaussian smoothing of (X, Y, Z, T) by ``width`` voxels in-plane, and through thin slices only."""
    sigma = [width if s <= 2.0 * size_mm[:2].min() else 0.0 for s in size_mm]
    return ndimage.gaussian_filter(small, [*sigma, 0.0])
