"""Rigid motion correction of a 4D series: every frame registered to a reference, then resampled.

Registration runs on block-averaged (shrunken) copies, coarse to fine: the in-plane voxels (and
through-plane ones where slices are thin) are brought to about 4, 2 and :data:`FINE_VOXEL_MM` mm.
At each level all frames of a chunk are registered at once (batched torch) by inverse-compositional
Gauss–Newton on the sum of squared differences: with the reference F, its world gradient ∇F and
r = x − c, the steepest-descent images are J = [∇F, r × ∇F], the Hessian H = a²·JᵀJ and the update
Δp = H⁻¹·a·Jᵀ(M∘W − a·F − b), W ← W ∘ ΔW(Δp)⁻¹, where a per-frame gain a and offset b (fitted by
least squares every iteration) absorb global intensity changes. Only the voxels with the
strongest reference gradients (:data:`EDGE_FRACTION`) are sampled: elsewhere J ≈ 0. Samples
landing within 1.5 voxels of the frame's edges are down-weighted, continuously in the pose (border
voxels may hold values filled in from outside the field of view by an earlier resampling). Frames
are processed in chunks outward from the reference, each chunk starting from the last pose of the
chunk before it (heads move continuously). The transforms are applied once, at full resolution,
by the batched trilinear resampler :func:`perfnet.spatial.resample_frames`, with edge slices
replicated so that a slight through-plane shift does not pull air into them; then every frame is
blurred in-plane to the interpolation blur of the most blurred one (:func:`equalise_blur`), so
that voxels at strong edges do not step between the sharp reference and the resampled frames.

Convention: everything is in the series' world (NIfTI RAS) millimetres. A frame's pose is the
world transform W with ``frame(W x) = reference(x)``; ``parameters[t]`` = (tx, ty, tz mm, rx, ry,
rz deg) with ``W = perfnet.spatial.rigid_matrix(parameters[t], centre)``, ``centre`` the volume
centre: ``voxel_map(W, affine)`` applied to the reference renders the frame, and
``voxel_map(W⁻¹, affine)`` applied to the frame renders the corrected frame.

Checks (:func:`motion_correct`): a correction never makes a frame less similar to the reference
than leaving it alone. Every estimated pose is judged on a smoothed grid of about
:data:`EVALUATION_VOXEL_MM` mm by the normalised gradient correlation (NGC) with the reference over
the head, which the contrast bolus barely moves (it changes intensities, not where the edges are):
poses beyond physical bounds, less similar than no correction, without anatomy to register, or
jumping alone far from their accepted neighbours are rejected and replaced by the pose
interpolated in time from the accepted neighbours (or the identity). On thick slices the
through-plane parts of the poses are kept only when they raise the similarity of the typical frame
(interpolating between 5 mm slices blurs, and the bolus biases tz). Frames that no rigid pose
aligns — through-plane motion on thick slices mixes neighbouring slices — stand out from their
temporal neighbours (:func:`unalignable_frames`) and are listed for :func:`interpolate_frames`;
:func:`replacement_verdict` says when too many are lost (the ``motion_unrecoverable`` flag). The
voxels filled from outside the slab are returned as ``outside`` for the arterial search.

Known limits: with thick slices (≥ 5 mm) the through-plane parameters (tz, rx, ry) are weakly
determined. On 6 mm phantom slices, tz picks up a bias of up to ~0.6 mm when the head moves
in-plane (the resampled frame is blurred, the reference is not) and up to ~1 mm from the DSC
bolus signal drop without motion (hence the similarity test of the through-plane parts); in-plane
displacements stay within ~0.2 voxel. Through-plane motion that lasts (the head settles half a
slice lower) is not undone and not excluded here: the signal steps it leaves are levelled
afterwards (:mod:`perfnet.preprocess.levels`, from ``estimated`` against the applied poses), and
``large_motion`` reports it.

Source: Baker & Matthews, "Lucas-Kanade 20 years on: a unifying framework", IJCV 2004 (inverse
compositional algorithm with a linear appearance gain/bias).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

from perfnet.spatial import resample_frames, rigid_matrix, voxel_map

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


#: Per-frame acceptance of an estimated pose (see :func:`accept_poses`). Similarities are the
#: normalised gradient correlation (NGC) with the reference on the evaluation grid.
EVALUATION_VOXEL_MM = 3.0
MAX_TRANSLATION_MM = 20.0
MAX_ROTATION_DEG = 15.0
JUMP_MM = 5.0
SIMILARITY_TOLERANCE = 0.01
MIN_SIMILARITY = 0.5
THROUGH_PLANE_GAIN = 0.002
#: Pairs of consecutive frames (evenly spread) whose similarity tells whether the anatomy is stable.
CONSECUTIVE_PAIRS = 16
#: Unalignable frames (see :func:`unalignable_frames`): mismatch with the median of the frame and
#: this many kept neighbouring frames on each side, robust z-score and absolute floor of exclusion.
MISMATCH_NEIGHBOURS = 2
MISMATCH_Z = 6.0
MISMATCH_FLOOR = 0.01
MISMATCH_PASSES = 3
#: ... computed on the evaluation grid smoothed in-plane by a Gaussian of this SD (mm): through-plane
#: mixing changes the anatomy at every in-plane scale, the blur of the resampling only at the
#: finest (an in-plane jump of 2 mm / 2° then scores < 0.003, 1 mm through-plane > 0.02).
MISMATCH_SMOOTH_MM = 4.0
#: Excluded frames are replaceable (see :func:`replacement_verdict`) when no more than this fraction
#: of the frames is excluded and no gap in the bolus passage exceeds this fraction of its FWHM.
MAX_EXCLUDED_FRACTION = 1.0 / 3.0
MAX_GAP_FRACTION = 0.5
#: A corrected voxel sampled more than this far (voxels) beyond the outermost voxel centres of the
#: frame holds content from outside the imaged volume.
OUTSIDE_TOLERANCE_VOXELS = 0.05
#: ... and, where the through-plane part of a pose was estimated but not applied, anatomy that the
#: estimate places more than this far beyond them (the estimates not applied are uncertain: the
#: DSC bolus alone moves tz by up to ~1 mm on 6 mm slices).
UNAPPLIED_TOLERANCE_VOXELS = 0.25
#: A corrected voxel whose value draws more than this fraction on frame voxels that hold anatomy from
#: beyond the imaged slab (by the estimated pose; see :func:`content_from_outside`) in a kept frame
#: is ``outside`` too: the edge slice of a frame whose head moved through-plane holds what lay
#: beyond the slab, which a rigid correction moves back into the slab's edge slice. (Frames whose
#: through-plane part was not applied: more than :data:`UNAPPLIED_TOLERANCE_VOXELS`.) 5 % is the
#: scale of the signal a bolus changes in tissue (DSC ~10 %, CT 20–40 HU) when what moves in is
#: air or bone.
CONTENT_OUTSIDE_FRACTION = 0.05

#: Frame status values of :attr:`MotionResult.status`.
STATUSES = ("reference", "accepted", "in_plane", "interpolated", "identity")
#: The statuses whose estimated pose the checks trusted (the others were rejected).
TRUSTED_STATUSES = ("reference", "accepted", "in_plane")
#: Why an estimated pose was rejected (:attr:`MotionResult.rejected`).
REJECTIONS = ("out_of_bounds", "no_anatomy", "less_similar", "jump")


@dataclass
class MotionResult:
    """Motion-corrected series, the head pose of every frame, and what could not be corrected.

    Attributes:
        data: corrected frames (X, Y, Z, T) float32; excluded frames are *not* replaced here
            (:func:`interpolate_frames` does that).
        parameters: (T, 6) pose applied to each frame relative to the reference: tx, ty, tz (mm),
            rx, ry, rz (deg), in the :func:`perfnet.spatial.rigid_matrix` convention.
        displacement_mm: (T,) largest displacement of a point on a sphere of
            :data:`DISPLACEMENT_RADIUS_MM` about the centre, of the applied pose.
        head_displacement_mm: (T,) the same of the head's estimated pose where the estimate was
            accepted (through-plane part included, applied or not), else of the applied pose: how
            far the head moved, for the ``large_motion`` flag.
        centre: (3,) rotation centre, the volume centre in world mm.
        reference: the reference frame index or "mean".
        seconds: wall time of the correction (registration, checks and resampling).
        estimated: (T, 6) poses the registration estimated, before the per-frame acceptance.
        consecutive_similarity: median NGC of consecutive uncorrected frames; below
            :data:`MIN_SIMILARITY` the series shows no stable anatomy and nothing is corrected.
        status: per frame, one of :data:`STATUSES`: "accepted" (the estimate is applied),
            "in_plane" (only its in-plane part: thick slices, see :func:`motion_correct`),
            "interpolated" (estimate rejected; the pose interpolated in time between the nearest
            accepted frames is applied), "identity" (estimate rejected; the frame is left as
            acquired).
        rejected: per frame, None or why its estimate was rejected (:data:`REJECTIONS`).
        similarity_uncorrected: (T,) NGC of each uncorrected frame with the reference.
        similarity: (T,) NGC of each corrected frame with the reference.
        mismatch: (T,) 1 − NGC of each corrected frame with the median of its kept neighbours.
        excluded_frames: (E,) int, frames that cannot be aligned (:func:`unalignable_frames`), to be
            replaced by :func:`interpolate_frames`.
        outside: (X, Y, Z) bool, voxels whose corrected curve holds content from outside the imaged
            volume (the slab) in at least one kept frame: the corrected voxel was sampled beyond the
            frame's outermost voxel centres (by more than :data:`OUTSIDE_TOLERANCE_VOXELS`), or,
            where the through-plane part of the pose was estimated but not applied (status
            "in_plane"), that estimate places its anatomy beyond them (by more than
            :data:`UNAPPLIED_TOLERANCE_VOXELS`). Slab edges that moved out of the field of view:
            bone or air moves into them and their curves step. Also (``outside_content``) voxels
            whose corrected value draws more than :data:`CONTENT_OUTSIDE_FRACTION` on anatomy
            from beyond the slab (:func:`content_from_outside`: the opposite edge of a
            through-plane move). An arterial or venous search must exclude them
            (``perfnet.conventional.aif``).
        outside_fraction: (T,) fraction of the head (reference frame above air) filled from outside.
        unrecoverable: None, or why the excluded frames cannot be replaced
            (:func:`replacement_verdict`): the ``motion_unrecoverable`` QC flag.
    """

    data: np.ndarray
    parameters: np.ndarray
    displacement_mm: np.ndarray
    centre: np.ndarray
    reference: int | str
    seconds: float
    estimated: np.ndarray | None = None
    head_displacement_mm: np.ndarray | None = None
    consecutive_similarity: float | None = None
    status: list[str] = field(default_factory=list)
    rejected: list[str | None] = field(default_factory=list)
    similarity_uncorrected: np.ndarray | None = None
    similarity: np.ndarray | None = None
    mismatch: np.ndarray | None = None
    excluded_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    outside: np.ndarray | None = None
    outside_fraction: np.ndarray | None = None
    outside_content: np.ndarray | None = None
    unrecoverable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for provenance.json (without the data and the ``outside`` mask)."""

        def rounded(values: np.ndarray | None, digits: int = 4) -> list[float] | None:
            return None if values is None else [round(float(v), digits) for v in values]

        out: dict[str, Any] = {
            "reference": self.reference,
            "centre_mm": [round(float(v), 3) for v in self.centre],
            "parameters": [[round(float(v), 4) for v in row] for row in self.parameters],
            "displacement_mm": rounded(self.displacement_mm),
            "max_displacement_mm": round(float(self.displacement_mm.max()), 4),
            "max_head_displacement_mm": round(float(self.head_displacement_mm.max()), 4)
            if self.head_displacement_mm is not None
            else None,
            "seconds": round(self.seconds, 3),
        }
        if self.status:
            out["consecutive_similarity"] = round(float(self.consecutive_similarity or 0.0), 4)
            out["frame_status"] = list(self.status)
            out["rejected"] = {
                str(t): {
                    "reason": reason,
                    "estimate": [round(float(v), 4) for v in self.estimated[t]]
                    if self.estimated is not None
                    else None,
                }
                for t, reason in enumerate(self.rejected)
                if reason is not None
            }
        out |= {
            "similarity_uncorrected": rounded(self.similarity_uncorrected),
            "similarity": rounded(self.similarity),
            "mismatch": rounded(self.mismatch, 5),
            "excluded_frames": [int(t) for t in self.excluded_frames],
            "outside_voxels": None if self.outside is None else int(self.outside.sum()),
            "outside_content_voxels": None
            if self.outside_content is None
            else int(self.outside_content.sum()),
            "outside_fraction": rounded(self.outside_fraction),
            "motion_unrecoverable": self.unrecoverable is not None,
            "unrecoverable_reason": self.unrecoverable,
        }
        return out


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


# --- checks of the estimated poses -------------------------------------------------------------


def gradient(volume: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """World gradient (per mm) of (X, Y, Z[, B]) along the three voxel axes, (3, X, Y, Z[, B]);
    central differences inside, one-sided at the edges, zero along an axis of one voxel."""
    out = np.zeros((3, *volume.shape), dtype=np.float32)
    for d in range(3):
        if volume.shape[d] > 1:
            out[d] = np.gradient(volume, axis=d) / np.float32(spacing[d])
    return out


def gradient_correlation(
    reference_gradient: np.ndarray, frames: np.ndarray, weight: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """Normalised gradient correlation (NGC) of frames (X, Y, Z, B) with a reference whose
    gradient (:func:`gradient`) is given, per frame (B,), over the voxels of ``weight``:
    NGC = Σ w ∇R·∇M / √(Σ w |∇R|² · Σ w |∇M|²), gradients in world units (``spacing`` in mm).

    1 for identical edges, whatever the intensity scale; contrast enhancement changes the
    strength of some edges but not where they are, so NGC is far less sensitive to the bolus than
    intensity differences (gradient-based similarity: Pluim et al., IEEE TMI 2000).
    """
    w = np.asarray(weight, dtype=np.float32)
    grad = reference_gradient * w
    g = gradient(frames, spacing)  # (3, X, Y, Z, B)
    num = np.einsum("axyz,axyzb->b", grad, g, dtype=np.float64)
    ref_energy = float(np.einsum("axyz,axyz->", grad, reference_gradient, dtype=np.float64))
    energy = np.einsum("axyzb,axyzb->b", g * w[None, ..., None], g, dtype=np.float64)
    return num / np.sqrt(np.maximum(ref_energy * energy, 1e-30))


@dataclass
class _EvaluationGrid:
    """The coarse grid (about :data:`EVALUATION_VOXEL_MM`, smoothed) poses are judged on."""

    frames: np.ndarray  # (x, y, z, T) float32
    affine: np.ndarray
    spacing: np.ndarray  # (3,) mm
    head: np.ndarray  # (x, y, z) bool: the reference above air, grown by one in-plane voxel
    reference_gradient: np.ndarray  # (3, x, y, z) world gradient of the reference
    cval: float
    slice_normal: np.ndarray  # (3,) unit world direction of the voxel k axis
    thick_slices: bool  # slice spacing > 2 × the in-plane voxel (and more than one slice)

    @classmethod
    def of(
        cls, pyramid: list[tuple[np.ndarray, tuple[int, int, int]]], affine: np.ndarray, reference: int | str
    ) -> _EvaluationGrid:
        voxel = np.linalg.norm(affine[:3, :3], axis=0)
        choice = pyramid[-1]
        for small, factors in pyramid:  # the finest level with in-plane voxels of ≳ 3 mm
            if (voxel[:2] * np.asarray(factors[:2])).min() >= 0.75 * EVALUATION_VOXEL_MM:
                choice = (small, factors)
                break
        small, factors = choice
        spacing = voxel * np.asarray(factors)
        frames = _smooth(small, spacing, SMOOTH_VOXELS).astype(np.float32)
        ref = frames.mean(axis=3) if reference == "mean" else frames[..., int(reference)]
        return cls(
            frames=frames,
            affine=level_affine(affine, factors),
            spacing=spacing,
            head=head_mask(ref),
            reference_gradient=gradient(ref, spacing),
            cval=float(np.percentile(ref, 1.0)),
            slice_normal=affine[:3, 2] / voxel[2],
            thick_slices=bool(small.shape[2] > 1 and voxel[2] > 2.0 * voxel[:2].min()),
        )

    def resampled(self, poses: np.ndarray, frames: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """Frames (indices) of the grid corrected with their poses (T', 6)."""
        maps = np.stack([voxel_map(np.linalg.inv(rigid_matrix(p, centre)), self.affine) for p in poses])
        return resample_with_edges(self.frames[..., frames], maps, self.cval)

    def similarity(
        self, poses: np.ndarray, frames: np.ndarray, centre: np.ndarray, moved: np.ndarray | None = None
    ) -> np.ndarray:
        """NGC with the reference of the frames (indices) corrected with their poses (T', 6); the
        corrected frames are written to ``moved`` (x, y, z, T') when given."""
        out = np.empty(len(frames))
        for start in range(0, len(frames), RESAMPLE_CHUNK):
            part = slice(start, start + RESAMPLE_CHUNK)
            block = self.resampled(poses[part], frames[part], centre)
            out[part] = gradient_correlation(self.reference_gradient, block, self.head, self.spacing)
            if moved is not None:
                moved[..., part] = block
        return out

    def consecutive_similarity(self) -> float:
        """Median NGC of each uncorrected frame with the next one: a stable anatomy (any head,
        even a moving one) gives ≈ 1; a series whose edges change from frame to frame (a crop of
        enhancing vessels, a concentration map) gives far less, and no rigid pose can be judged."""
        n = self.frames.shape[3]
        if n < 2:
            return 1.0
        pairs = np.unique(np.linspace(0, n - 2, min(n - 1, CONSECUTIVE_PAIRS)).round().astype(int))
        values = [
            gradient_correlation(
                gradient(self.frames[..., t], self.spacing),
                self.frames[..., t + 1 : t + 2],
                self.head,
                self.spacing,
            )[0]
            for t in pairs
        ]
        return float(np.median(values))


def head_mask(reference: np.ndarray) -> np.ndarray:
    """The head: the reference above its air level (1st percentile + 10 % of the 1st–99th
    percentile range; CT about −780 HU, MR about a fifth of the CSF signal), grown by one voxel
    in-plane so the edges of the head count."""
    lo, hi = np.percentile(reference, [1.0, 99.0])
    head = reference > lo + 0.1 * (hi - lo)
    if not head.any():  # a flat reference: judge the whole field of view
        return np.ones(reference.shape, dtype=bool)
    grow = np.zeros((3, 3, 3), dtype=bool)
    grow[:, :, 1] = True
    return ndimage.binary_dilation(head, grow)


def in_plane_part(parameters: np.ndarray, normal: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The in-plane part of a pose (6,): its translation within the slice plane and its rotation
    about the slice normal (unit, world), both about ``centre``; tz, rx, ry for axial slices."""
    params = np.asarray(parameters, dtype=np.float64)
    normal = np.asarray(normal, dtype=np.float64) / np.linalg.norm(normal)
    translation = params[:3] - (params[:3] @ normal) * normal
    rotvec = Rotation.from_euler("xyz", params[3:], degrees=True).as_rotvec()
    rotation = Rotation.from_rotvec((rotvec @ normal) * normal).as_euler("xyz", degrees=True)
    return np.r_[translation, rotation]


def rotation_angle_deg(parameters: np.ndarray) -> np.ndarray:
    """Rotation angle (deg) of each pose (T, 6), whatever its axis."""
    params = np.atleast_2d(parameters)
    return np.degrees(Rotation.from_euler("xyz", params[:, 3:], degrees=True).magnitude())


def relative_displacement(a: np.ndarray, b: np.ndarray, centre: np.ndarray) -> float:
    """Largest displacement (mm) on the :data:`DISPLACEMENT_RADIUS_MM` sphere between two poses."""
    relative = np.linalg.inv(rigid_matrix(a, centre)) @ rigid_matrix(b, centre)
    return float(sphere_displacement(_pose(relative, centre)[None])[0])


def interpolate_poses(poses: np.ndarray, keep: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Poses (T, 6) of the frames not in ``keep`` (bool T) replaced by linear interpolation in time
    between the nearest kept frames (held constant beyond the first and last kept frame);
    identity when no frame is kept."""
    out = np.array(poses, dtype=np.float64)
    if not keep.any():
        return np.zeros_like(out)
    kept = np.flatnonzero(keep)
    for c in range(out.shape[1]):
        out[~keep, c] = np.interp(times[~keep], times[kept], out[kept, c])
    return out


def accept_poses(
    grid: _EvaluationGrid,
    estimated: np.ndarray,
    centre: np.ndarray,
    times: np.ndarray,
    reference: int | str,
    stable: bool = True,
) -> tuple[np.ndarray, list[str], list[str | None], np.ndarray, np.ndarray, np.ndarray]:
    """Keep an estimated pose only where the images support it (see :func:`motion_correct`);
    ``stable`` False (no stable anatomy, :meth:`_EvaluationGrid.consecutive_similarity`) rejects all.

    Returns the applied poses (T, 6), the status and rejection reason of every frame, the NGC
    with the reference of the uncorrected and of the corrected frames, and the corrected frames
    of the evaluation grid.
    """
    n = len(estimated)
    frames = np.arange(n)
    identity = np.zeros_like(estimated)
    s_identity = grid.similarity(identity, frames, centre)
    ref = None if reference == "mean" else int(reference)
    if not stable:  # nothing to register
        status = ["identity"] * n
        reasons: list[str | None] = ["no_anatomy"] * n
        if ref is not None:
            status[ref], reasons[ref] = "reference", None
        return identity, status, reasons, s_identity, s_identity.copy(), grid.frames.copy()
    corrected = np.empty_like(grid.frames)
    s_estimate = grid.similarity(estimated, frames, centre, corrected)
    candidate = estimated.copy()
    in_plane = np.zeros(n, dtype=bool)
    if grid.thick_slices:  # through-plane parameters must earn their blur (see motion_correct)
        flat = np.stack([in_plane_part(p, grid.slice_normal, centre) for p in estimated])
        flat_frames = np.empty_like(grid.frames)
        s_flat = grid.similarity(flat, frames, centre, flat_frames)
        moving = frames != ref
        if moving.any() and np.median(s_estimate[moving] - s_flat[moving]) <= THROUGH_PLANE_GAIN:
            in_plane[:] = True
            candidate, s_estimate, corrected = flat, s_flat, flat_frames
        del flat_frames
    estimated = candidate
    reasons = [None] * n
    for t in range(n):
        translation = float(np.linalg.norm(estimated[t, :3]))
        if translation > MAX_TRANSLATION_MM or rotation_angle_deg(estimated[t])[0] > MAX_ROTATION_DEG:
            reasons[t] = "out_of_bounds"
        elif s_estimate[t] < MIN_SIMILARITY:
            reasons[t] = "no_anatomy"
        elif s_estimate[t] < s_identity[t] - SIMILARITY_TOLERANCE:
            reasons[t] = "less_similar"
    if ref is not None:
        reasons[ref] = None
    accepted = np.array([r is None for r in reasons])
    # isolated jumps: an accepted frame more than JUMP_MM away from both accepted neighbours, which
    # agree with each other, must match the reference better than the pose between them
    spikes, between = [], []
    order = np.flatnonzero(accepted)
    for i in range(1, len(order) - 1):
        before, t, after = order[i - 1], order[i], order[i + 1]
        if t == ref:
            continue
        d_before = relative_displacement(estimated[before], estimated[t], centre)
        d_after = relative_displacement(estimated[t], estimated[after], centre)
        if (
            min(d_before, d_after) > JUMP_MM
            and relative_displacement(estimated[before], estimated[after], centre) <= JUMP_MM
        ):
            w = (times[t] - times[before]) / max(times[after] - times[before], 1e-9)
            spikes.append(t)
            between.append((1 - w) * estimated[before] + w * estimated[after])
    if spikes:
        s_between = grid.similarity(np.asarray(between), np.asarray(spikes), centre)
        for t, s in zip(spikes, s_between, strict=True):
            if s_estimate[t] < s + SIMILARITY_TOLERANCE:
                reasons[t] = "jump"
                accepted[t] = False
    applied = np.where(accepted[:, None], estimated, 0.0)
    status = ["in_plane" if flat else "accepted" for flat in in_plane]
    rejected = np.flatnonzero(~accepted)
    if rejected.size:
        fallback = interpolate_poses(applied, accepted, times)[rejected]
        fallback_frames = np.empty((*grid.frames.shape[:3], rejected.size), dtype=np.float32)
        s_fallback = grid.similarity(fallback, rejected, centre, fallback_frames)
        for i, (t, pose, s) in enumerate(zip(rejected, fallback, s_fallback, strict=True)):
            if np.abs(pose).max() > 0 and s >= s_identity[t] - SIMILARITY_TOLERANCE:
                applied[t], status[t], s_estimate[t] = pose, "interpolated", s
                corrected[..., t] = fallback_frames[..., i]
            else:
                applied[t], status[t], s_estimate[t] = 0.0, "identity", s_identity[t]
                corrected[..., t] = grid.frames[..., t]
    if ref is not None:
        status[ref] = "reference"
    return applied, status, reasons, s_identity, s_estimate, corrected


def outside_voxels(
    voxel_maps: np.ndarray,
    shape: tuple[int, int, int],
    head: np.ndarray | None = None,
    frames: np.ndarray | None = None,
    tolerance: float | tuple[float, ...] = OUTSIDE_TOLERANCE_VOXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels sampled beyond the outermost voxel centres (by more than ``tolerance`` voxels) in any
    of ``frames`` (default all), (X, Y, Z) bool, and the fraction of ``head`` (bool X, Y, Z) doing
    so in every frame (T,). ``voxel_maps`` (T, 4, 4) or (T, K, 4, 4): output voxel → input voxel
    maps of each frame (one tolerance, or one per map k); a voxel counts when any of its frame's
    maps takes it outside. Excluded frames are left out of the mask: :func:`interpolate_frames`
    replaces them by their kept neighbours."""
    voxel_maps = np.asarray(voxel_maps, dtype=np.float64)
    if voxel_maps.ndim == 3:
        voxel_maps = voxel_maps[:, None]
    outside = np.zeros(shape, dtype=bool)
    fraction = np.zeros(len(voxel_maps))
    head_count = 0 if head is None else int(np.count_nonzero(head))
    tolerances = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), voxel_maps.shape[1:2])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T
    for t, frame_maps in enumerate(voxel_maps):
        frame = np.zeros(shape, dtype=bool)
        for m, tol in zip(frame_maps, tolerances, strict=True):
            if np.allclose(m, np.eye(4), atol=1e-9):
                continue
            for a, n in enumerate(shape):
                # c − index_a is affine: voxels that may leave along axis a lie within `reach` of its ends
                shift = corners @ m[a, :3] + m[a, 3] - corners[:, a]
                reach = min(n, int(np.ceil(np.abs(shift).max() + tol)) + 1)
                for band in (np.arange(reach), np.arange(n - reach, n)):
                    index = [np.arange(size, dtype=np.float32) for size in shape]
                    index[a] = band.astype(np.float32)
                    i, j, k = index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]
                    c = (
                        np.float32(m[a, 0]) * i
                        + np.float32(m[a, 1]) * j
                        + (np.float32(m[a, 2]) * k + np.float32(m[a, 3]))
                    )
                    hit = (c < -tol) | (c > n - 1 + tol)
                    view = np.moveaxis(frame, a, 0)
                    view[band] |= np.moveaxis(hit, a, 0)
        if frames is None or t in frames:
            outside |= frame
        if head_count:
            fraction[t] = np.count_nonzero(frame & head) / head_count
    return outside, fraction


def content_from_outside(
    correction_maps: np.ndarray,
    origin_maps: np.ndarray,
    shape: tuple[int, int, int],
    frames: np.ndarray | None = None,
) -> np.ndarray:
    """Largest fraction (X, Y, Z) float32, over ``frames`` (default all), of a corrected voxel's
    value drawn from frame voxels that hold anatomy from beyond the imaged volume.

    Frame voxel k holds the reference's anatomy at ``origin_maps[t] @ k`` (the estimated pose's
    voxel map); the part of that voxel lying beyond the outermost voxel centres is the amount d
    (voxels, ≤ 1) by which that position passes them (what linear interpolation across the slab's
    edge takes from outside). The corrected frame samples the frame at ``correction_maps[t]``
    (trilinear, as :func:`resample_with_edges`); resampling d the same way gives the fraction of
    each corrected voxel's value that came from outside. The reverse of :func:`outside_voxels`:
    a head moving 3.5 mm down through 6 mm slices puts ~0.6 of beyond-the-slab anatomy into the
    frame's top slice, which the correction (sampling inside the slab there) moves back into the
    top slice of the corrected series.
    """
    shape = tuple(int(n) for n in shape)
    frames = np.arange(len(correction_maps)) if frames is None else np.asarray(frames, dtype=int)
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
    largest = np.zeros(shape, dtype=np.float32)
    for start in range(0, frames.size, RESAMPLE_CHUNK):
        chunk = frames[start : start + RESAMPLE_CHUNK]
        beyond = np.zeros((*shape, chunk.size), dtype=np.float32)
        for c, t in enumerate(chunk):
            m = np.asarray(origin_maps[t], dtype=np.float32)
            if np.allclose(m, np.eye(4), atol=1e-6):
                continue
            q = index @ m[:3, :3].T + m[:3, 3]
            upper = np.asarray(shape, dtype=np.float32) - 1
            d = np.maximum(np.maximum(-q, q - upper), 0.0).max(axis=-1)
            beyond[..., c] = np.minimum(d, 1.0)
        if not beyond.any():
            continue
        moved = resample_with_edges(beyond, np.asarray(correction_maps)[chunk], cval=1.0)
        np.maximum(largest, moved.max(axis=3), out=largest)
    return largest


def unalignable_frames(
    corrected: np.ndarray, spacing: np.ndarray, head: np.ndarray, reference: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose corrected image departs from its neighbours far more than the study's frames
    typically do: the mismatch, and the excluded frames.

    The mismatch of frame t is 1 − NGC between the corrected frame and the voxelwise median of
    itself and the :data:`MISMATCH_NEIGHBOURS` nearest kept frames on each side. The bolus changes
    the images slowly and leaves their edges in place, so that median predicts a frame well
    (mismatch ≈ 10⁻⁴ on phantoms; ≤ 0.007 at the DSC bolus arrival with 2 s frames, where the
    median of five clips the fastest changes); through-plane motion on thick slices mixes
    neighbouring slices, which no rigid correction undoes, and leaves its mark (1 mm or 1° on
    6 mm slices: > 0.02) on a run of up to :data:`MISMATCH_NEIGHBOURS` frames (the median of five
    still shows the good ones), while a lasting change of position is shared by the majority on
    either side of its step and is not excluded (``large_motion`` reports it). A frame is excluded
    when its mismatch exceeds both the median mismatch + :data:`MISMATCH_Z` robust SDs
    (1.4826·MAD) and :data:`MISMATCH_FLOOR`. This is repeated (at most :data:`MISMATCH_PASSES` times) with the
    excluded frames left out of the neighbourhoods. The reference frame is never excluded.
    """
    n = corrected.shape[3]
    keep = np.ones(n, dtype=bool)
    mismatch = np.zeros(n)
    least = 2 * MISMATCH_NEIGHBOURS + 1
    if n < least:
        return mismatch, np.zeros(0, dtype=int)
    for _ in range(MISMATCH_PASSES):
        kept = np.flatnonzero(keep)
        for t in range(n):
            others = kept[kept != t]
            near = np.r_[others[others < t][-MISMATCH_NEIGHBOURS:], others[others > t][:MISMATCH_NEIGHBOURS]]
            if near.size < 2 * MISMATCH_NEIGHBOURS:  # at the ends: the nearest kept frames
                near = others[np.argsort(np.abs(others - t), kind="stable")[: 2 * MISMATCH_NEIGHBOURS]]
            predicted = np.median(corrected[..., np.r_[t, near]], axis=3)
            grad = gradient(predicted, spacing)
            mismatch[t] = 1.0 - gradient_correlation(grad, corrected[..., t : t + 1], head, spacing)[0]
        typical = np.median(mismatch[keep])
        spread = 1.4826 * np.median(np.abs(mismatch[keep] - typical))
        bad = (mismatch > typical + MISMATCH_Z * spread) & (mismatch > MISMATCH_FLOOR)
        if reference is not None:
            bad[reference] = False
        if np.array_equal(~bad, keep) or (~bad).sum() < least:
            break
        keep = ~bad  # a frame judged against moved neighbours may come back once they are left out
    return mismatch, np.flatnonzero(~keep)


def interpolate_frames(
    data: np.ndarray, times: np.ndarray, excluded: np.ndarray | list[int], *, in_place: bool = False
) -> np.ndarray:
    """Replace the excluded frames of (X, Y, Z, T) by linear interpolation in time between the
    nearest kept frames (the nearest kept frame before the first or after the last one).

    Every method downstream (deconvolution, box-NLR, CNN) then uses the series unchanged: the frame
    times stay, the excluded frames carry the curve's trend instead of misaligned anatomy. Whether
    that is sensible is :func:`replacement_verdict`'s question.
    """
    out = data if in_place else np.array(data, copy=True)
    times = np.asarray(times, dtype=np.float64)
    excluded = np.unique(np.asarray(excluded, dtype=int))
    if excluded.size == 0:
        return out
    n = data.shape[3]
    if excluded.min() < 0 or excluded.max() >= n:
        raise ValueError(f"excluded frames must lie in 0…{n - 1}")
    kept = np.setdiff1d(np.arange(n), excluded)
    if kept.size == 0:
        raise ValueError("every frame is excluded: nothing to interpolate from")
    for t in excluded:
        before, after = kept[kept < t], kept[kept > t]
        if before.size == 0 or after.size == 0:
            out[..., t] = data[..., (after if before.size == 0 else before)[0 if before.size == 0 else -1]]
            continue
        a, b = before[-1], after[0]
        w = np.float32((times[t] - times[a]) / (times[b] - times[a]))
        out[..., t] = (1 - w) * data[..., a] + w * data[..., b]
    return out


def bolus_passage(curve: np.ndarray, times: np.ndarray) -> tuple[float, float]:
    """Start and end (s) of the bolus passage of a head-mean curve: where its departure from the
    median level, smoothed by a 5-frame running median, exceeds half its largest value (the sign
    of that largest departure: CT enhancement rises, DSC signal drops)."""
    curve = np.asarray(curve, dtype=np.float64)
    departure = curve - np.median(curve)
    smooth = ndimage.median_filter(departure, size=min(5, curve.size), mode="mirror")
    peak = int(np.argmax(np.abs(smooth)))
    signed = smooth * np.sign(smooth[peak] or 1.0)
    above = signed >= 0.5 * signed[peak]
    lo = hi = peak
    while lo > 0 and above[lo - 1]:
        lo -= 1
    while hi < curve.size - 1 and above[hi + 1]:
        hi += 1
    return float(times[lo]), float(times[hi])


def replacement_verdict(
    times: np.ndarray, excluded: np.ndarray | list[int], passage: tuple[float, float] | None
) -> str | None:
    """None when the excluded frames can be replaced by :func:`interpolate_frames`, else why not.

    Not replaceable: more than :data:`MAX_EXCLUDED_FRACTION` of the frames excluded; or, in the
    bolus passage (start, end in s, e.g. :func:`bolus_passage`), an excluded frame with no kept
    frame on one side, or kept frames around it further apart than :data:`MAX_GAP_FRACTION` of the
    passage's duration (its FWHM): linear interpolation across a gap of half a Gaussian peak's FWHM
    underestimates the peak by at most 16 % (by 8 % for a third of it).
    """
    times = np.asarray(times, dtype=np.float64)
    excluded = np.unique(np.asarray(excluded, dtype=int))
    n = times.size
    if excluded.size == 0:
        return None
    if excluded.size > MAX_EXCLUDED_FRACTION * n:
        return f"{excluded.size} of {n} frames cannot be aligned (more than a third)"
    if passage is None:
        return None
    start, end = passage
    width = max(end - start, float(np.median(np.diff(times))) if n > 1 else 0.0)
    kept = np.setdiff1d(np.arange(n), excluded)
    for t in excluded:
        before, after = kept[kept < t], kept[kept > t]
        lo = times[before[-1]] if before.size else -np.inf
        hi = times[after[0]] if after.size else np.inf
        if hi < start or lo > end:  # the gap lies outside the passage
            continue
        gap = hi - lo
        if gap > MAX_GAP_FRACTION * width:
            return (
                f"frame {t} ({times[t]:.1f} s) in the bolus passage cannot be aligned and the "
                f"nearest aligned frames are {gap:.1f} s apart (passage {width:.1f} s)"
            )
    return None


def interpolation_variance(voxel_map_: np.ndarray, shape: tuple[int, int, int], axis: int) -> float:
    """Mean variance f(1 − f) (voxel²) that trilinear resampling with ``voxel_map_`` adds along
    ``axis`` (f: the fractional part of the sampled coordinate), over up to 9³ voxels of the volume."""
    axes = [np.unique(np.linspace(0, n - 1, min(n, 9)).round()) for n in shape]  # voxel centres
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    c = points @ voxel_map_[axis, :3] + voxel_map_[axis, 3]
    f = c - np.floor(c)
    return float(np.mean(f * (1.0 - f)))


def equalise_blur(data: np.ndarray, voxel_maps: np.ndarray, voxel_size: np.ndarray) -> None:
    """In place: blur every frame (X, Y, Z, T) along its in-plane axes (and through thin slices) by
    the 3-tap kernel [e/2, 1 − e, e/2] of variance e = the largest variance any frame's resampling
    added along that axis − the variance its own resampling added (:func:`interpolation_variance`),
    so that all frames carry the same blur.

    Trilinear resampling blurs a frame by f(1 − f) voxel² per axis: nothing for the reference and
    the frames left as acquired, up to ¼ at half-voxel offsets. Left unequal, a voxel at a strong
    edge (skull between CSF and scalp in DSC-MRI) steps between the sharp reference, which
    dominates the baseline, and the blurred frames after it: a spurious early "enhancement" that
    an arterial search picks (on moving thick-slice MR phantoms the automatic AIF then sat on skull
    voxels; with equal blur, hypoperfused Dice 0.42 → 0.65). Through thick slices (> 2 × the
    in-plane voxel) nothing is added: mixing a quarter of each neighbouring slice costs more.
    """
    shape = data.shape[:3]
    thin = [n >= 3 and v <= 2.0 * min(voxel_size[:2]) for n, v in zip(shape, voxel_size, strict=True)]
    axes = [int(a) for a in np.flatnonzero(thin)]
    variance = np.array([[interpolation_variance(m, shape, a) for a in axes] for m in voxel_maps])
    if variance.size == 0:
        return
    extra = variance.max(axis=0) - variance  # (T, axes)
    for t in range(len(voxel_maps)):
        if not (extra[t] > 1e-3).any():
            continue
        frame = np.ascontiguousarray(data[..., t])
        for axis, e in zip(axes, extra[t], strict=True):
            if e > 1e-3:
                w = e / 2.0
                frame = ndimage.correlate1d(frame, [w, 1.0 - 2.0 * w, w], axis=axis, mode="nearest")
        data[..., t] = frame


def motion_correct(
    data4d: np.ndarray,
    affine: np.ndarray,
    reference: int | str = 0,
    *,
    times: np.ndarray | None = None,
    fine_voxel_mm: float = FINE_VOXEL_MM,
    apply: bool = True,
    cval: float | None = None,
    checks: bool = True,
) -> MotionResult:
    """Estimate and correct rigid head motion (see the module docstring), never making a frame
    less similar to the reference than leaving it alone.

    After the registration every frame's estimated pose is checked on a smoothed ~2 mm grid
    (:func:`accept_poses`), with the normalised gradient correlation (NGC) with the reference
    over the head (insensitive to the contrast bolus, which changes intensities, not edges):

    - rejected beyond physical bounds: translation > :data:`MAX_TRANSLATION_MM` or rotation >
      :data:`MAX_ROTATION_DEG` from the reference;
    - rejected when the corrected frame shares too little edge structure with the reference
      (NGC < :data:`MIN_SIMILARITY`: nothing anatomical to register, e.g. a pre-contrast
      concentration map), or is less similar to it than the uncorrected frame (NGC lower by more
      than :data:`SIMILARITY_TOLERANCE`, which covers the blur of the resampling itself);
    - rejected when it jumps more than :data:`JUMP_MM` (head displacement, 80 mm sphere) away from
      both accepted neighbours while those agree, unless the images favour it over the pose
      between them (a lone spike is a failed registration far more often than a head that moves
      5 mm and back within two frames).

    A rejected frame gets the pose interpolated in time between its nearest accepted frames (heads
    move continuously, and leaving one frame uncorrected among corrected ones puts a step into
    every edge voxel's curve), unless that too is less similar than no correction: then the
    identity. Frames that no rigid pose aligns (:func:`unalignable_frames`) are listed in
    ``excluded_frames``; the voxels filled from outside the imaged volume in ``outside``. The
    resampled frames all carry the same in-plane interpolation blur (:func:`equalise_blur`).

    Args:
        data4d: (X, Y, Z, T) series.
        affine: 4×4 voxel → world (NIfTI RAS, mm).
        reference: the frame every frame is registered to, or "mean" (the temporal mean).
        times: frame times (s) for the interpolation of poses and the verdict on excluded frames
            (default: the frame indices).
        fine_voxel_mm: voxel size of the finest registration level.
        apply: resample the frames (else ``data`` is the input; only the poses are estimated).
        cval: value of points moved in from outside the field of view (default: the reference's
            1st percentile, i.e. air).
        checks: run the per-frame checks, the unalignable-frame detection, ``outside`` and the
            blur equalisation (else every estimate is applied, as before these checks existed).
    """
    started = time.perf_counter()
    data4d = np.asarray(data4d)
    affine = np.asarray(affine, dtype=np.float64)
    if data4d.ndim != 4:
        raise ValueError(f"expected a 4D array (X, Y, Z, T), got shape {data4d.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError("affine must be a finite 4×4 matrix")
    n_frames = data4d.shape[3]
    if isinstance(reference, str):
        if reference != "mean":
            raise ValueError(f"reference must be a frame index or 'mean', got {reference!r}")
    elif not 0 <= int(reference) < n_frames:
        raise ValueError(f"reference frame {reference} outside 0…{n_frames - 1}")
    times = np.arange(n_frames, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if times.shape != (n_frames,):
        raise ValueError(f"times must hold one value per frame ({n_frames}), got shape {times.shape}")
    centre = volume_centre(affine, data4d.shape)
    ref_index = None if reference == "mean" else int(reference)
    with _torch_threads(1):
        estimated, pyramid = _register(data4d, affine, reference, fine_voxel_mm)
    result = MotionResult(
        data=data4d,
        parameters=estimated,
        displacement_mm=sphere_displacement(estimated),
        centre=centre,
        reference=reference if reference == "mean" else int(reference),
        seconds=0.0,
        estimated=estimated,
    )
    if checks:
        grid = _EvaluationGrid.of(pyramid, affine, reference)
        del pyramid
        consistency = grid.consecutive_similarity()
        stable = consistency >= MIN_SIMILARITY
        applied, status, rejected, s_identity, s_applied, corrected_grid = accept_poses(
            grid, estimated, centre, times, reference, stable
        )
        mismatch, excluded = np.zeros(n_frames), np.zeros(0, dtype=int)
        if stable:  # without a stable anatomy a frame's mismatch says nothing about its alignment
            smooth = _smooth(corrected_grid, grid.spacing, MISMATCH_SMOOTH_MM / grid.spacing[:2].min())
            mismatch, excluded = unalignable_frames(smooth, grid.spacing, grid.head, ref_index)
            del smooth
        curve = corrected_grid[grid.head].mean(axis=0)
        keep = np.ones(n_frames, dtype=bool)
        keep[excluded] = False
        curve = np.interp(times, times[keep], curve[keep]) if keep.any() else curve
        del corrected_grid
        result.parameters = applied
        result.displacement_mm = sphere_displacement(applied)
        result.status, result.rejected = status, rejected
        trusted = np.isin(status, TRUSTED_STATUSES)
        result.head_displacement_mm = np.where(
            trusted, sphere_displacement(estimated), result.displacement_mm
        )
        result.consecutive_similarity = consistency
        result.similarity_uncorrected, result.similarity = s_identity, s_applied
        result.mismatch, result.excluded_frames = mismatch, excluded
        result.unrecoverable = replacement_verdict(times, excluded, bolus_passage(curve, times))
    maps = np.stack([voxel_map(np.linalg.inv(rigid_matrix(p, centre)), affine) for p in result.parameters])
    if checks:
        # (a) corrected voxels sampled beyond the frame's slab; (b) where a through-plane part was
        # estimated but not applied, voxels whose anatomy (by that estimate) lay beyond the slab,
        # e.g. bone moving into the top slice
        residual = [
            np.linalg.inv(rigid_matrix(applied_pose, centre)) @ rigid_matrix(estimate, centre)
            if state == "in_plane"
            else np.eye(4)
            for applied_pose, estimate, state in zip(result.parameters, estimated, result.status, strict=True)
        ]
        both = np.stack([maps, np.stack([voxel_map(r, affine) for r in residual])], axis=1)
        ref_frame = data4d.mean(axis=3) if reference == "mean" else data4d[..., ref_index]
        kept = np.setdiff1d(np.arange(n_frames), result.excluded_frames)
        head = head_mask(ref_frame)
        result.outside, result.outside_fraction = outside_voxels(
            both, data4d.shape[:3], head, kept, (OUTSIDE_TOLERANCE_VOXELS, UNAPPLIED_TOLERANCE_VOXELS)
        )
        # (c) corrected voxels drawing on frame voxels whose anatomy (by the estimated pose) lay
        # beyond the slab: the reverse of (a), at the opposite edge of a through-plane move
        trusted = np.isin(result.status, TRUSTED_STATUSES)[:, None]
        poses = np.where(trusted, estimated, result.parameters)  # a rejected estimate says nothing
        origins = np.stack([voxel_map(rigid_matrix(p, centre), affine) for p in poses])
        # a through-plane estimate left unapplied is uncertain (the bolus alone moves tz by up to
        # ~1 mm on thick slices): those frames count only beyond UNAPPLIED_TOLERANCE_VOXELS
        unapplied = np.asarray(result.status)[kept] == "in_plane"
        result.outside_content = np.zeros(data4d.shape[:3], dtype=bool)
        for frames, least in (
            (kept[~unapplied], CONTENT_OUTSIDE_FRACTION),
            (kept[unapplied], UNAPPLIED_TOLERANCE_VOXELS),
        ):
            if frames.size:
                drawn = content_from_outside(maps, origins, data4d.shape[:3], frames)
                result.outside_content |= drawn > least
        result.outside |= result.outside_content
    if apply:
        if cval is None:
            cval = float(np.percentile(data4d[..., 0 if reference == "mean" else int(reference)], 1.0))
        result.data = resample_with_edges(data4d, maps, cval)
        if checks:
            equalise_blur(result.data, maps, np.linalg.norm(affine[:3, :3], axis=0))
    result.data = np.asarray(result.data, dtype=np.float32) if apply else result.data
    result.seconds = time.perf_counter() - started
    return result
