"""The checks of estimated head poses (the judging half of :mod:`perfnet.preprocess.motion`,
whose :func:`~perfnet.preprocess.motion.motion_correct` runs them): per-frame acceptance by the
normalised gradient correlation with the reference on a coarse grid, frames no rigid pose aligns,
the voxels filled from outside the slab, whether excluded frames can be replaced in time, and the
equal in-plane blur of the resampled frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from perfnet.preprocess.registration import (
    RESAMPLE_CHUNK,
    SMOOTH_VOXELS,
    _pose,
    _smooth,
    level_affine,
    resample_with_edges,
    sphere_displacement,
)
from perfnet.spatial import rigid_matrix, voxel_map

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
