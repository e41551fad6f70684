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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# the two halves of motion correction, re-exported: perfnet.preprocess.motion stays the one name
from perfnet.preprocess.motion_checks import (
    CONTENT_OUTSIDE_FRACTION,
    EVALUATION_VOXEL_MM,
    JUMP_MM,
    MAX_EXCLUDED_FRACTION,
    MAX_GAP_FRACTION,
    MAX_ROTATION_DEG,
    MAX_TRANSLATION_MM,
    MIN_SIMILARITY,
    MISMATCH_SMOOTH_MM,
    OUTSIDE_TOLERANCE_VOXELS,
    REJECTIONS,
    SIMILARITY_TOLERANCE,
    STATUSES,
    TRUSTED_STATUSES,
    UNAPPLIED_TOLERANCE_VOXELS,
    _EvaluationGrid,
    accept_poses,
    bolus_passage,
    content_from_outside,
    equalise_blur,
    head_mask,
    interpolate_frames,
    interpolation_variance,
    outside_voxels,
    replacement_verdict,
    unalignable_frames,
)
from perfnet.preprocess.registration import (
    DISPLACEMENT_RADIUS_MM,
    FINE_VOXEL_MM,
    _register,
    _smooth,
    _torch_threads,
    block_mean,
    estimate_motion,
    level_affine,
    resample_with_edges,
    sphere_displacement,
    volume_centre,
)
from perfnet.spatial import rigid_matrix, voxel_map


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


__all__ = [
    "CONTENT_OUTSIDE_FRACTION",
    "DISPLACEMENT_RADIUS_MM",
    "EVALUATION_VOXEL_MM",
    "FINE_VOXEL_MM",
    "JUMP_MM",
    "MAX_EXCLUDED_FRACTION",
    "MAX_GAP_FRACTION",
    "MAX_ROTATION_DEG",
    "MAX_TRANSLATION_MM",
    "MIN_SIMILARITY",
    "MISMATCH_SMOOTH_MM",
    "OUTSIDE_TOLERANCE_VOXELS",
    "REJECTIONS",
    "SIMILARITY_TOLERANCE",
    "STATUSES",
    "TRUSTED_STATUSES",
    "UNAPPLIED_TOLERANCE_VOXELS",
    "MotionResult",
    "accept_poses",
    "block_mean",
    "bolus_passage",
    "content_from_outside",
    "equalise_blur",
    "estimate_motion",
    "head_mask",
    "interpolate_frames",
    "interpolation_variance",
    "level_affine",
    "motion_correct",
    "outside_voxels",
    "replacement_verdict",
    "resample_with_edges",
    "sphere_displacement",
    "unalignable_frames",
    "volume_centre",
]
