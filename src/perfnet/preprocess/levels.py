"""Signal steps left by through-plane head motion on thick slices, levelled voxel by voxel.

On thick slices (≥ 5 mm) rigid motion correction applies only the in-plane part of a pose
(:mod:`perfnet.preprocess.motion`): resampling across 5–12 mm slices blurs more than it aligns.
When the head moves through the slab, each voxel then holds a new partial-volume mix of the
tissue above and below it, and its signal steps at that frame and stays there. A step down in
DSC signal reads as contrast, a step up as negative contrast; a CT voxel at the skull steps by
hundreds of HU. On the moving studies of ``benchmarks/generalisation.py`` such steps put a bolus
on a skull-edge voxel that the arterial search took for an artery, and made oSVD call 100 mL of
core on a study without a lesion.

What this module does, where the motion estimate says the head moved through the slab:

1. the *events*: frames where the unapplied through-plane part of the estimated pose (its
   displacement along the slice normal, the largest over a cube of ±80 mm about the volume centre)
   jumps by more than :data:`EVENT_MM` from the frame before. A slow drift, and the bias the DSC
   bolus gives the through-plane estimate (≤ 0.7 mm per frame on the benchmark studies), stay
   below it;
2. at each event, every voxel's step: a straight line shared by the :data:`WINDOW_FRAMES` frames
   either side of the event (fewer at a neighbouring event), plus a step at the event, fitted by
   least squares — on the log signal for MR (a partial-volume change scales the signal), on the
   HU for CT (it adds). An event before the bolus arrives is fitted on baseline frames only, with
   no slope. Steps smaller than :data:`STEP_Z` standard errors (from the voxel's own noise: robust
   SD of its second differences) are left alone;
3. the frames after the event are moved back by the step, so that the whole series keeps the
   level of the reference frame's anatomy (the frame the maps and the motion correction refer to).

The voxels levelled are returned: the arterial search leaves out those whose step was large
against their own bolus (:data:`ARTERIAL_STEP_FRACTION`): a step fitted across an artery's peak
is the least certain, and a voxel whose anatomy changed may only look like an artery once levelled.
What moved *into* the slab (anatomy beyond its edge slices) is not recovered: the motion module's
``outside`` mask keeps those voxels out of the arterial search already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from perfnet.preprocess.bolus import noise_sd_per_curve
from perfnet.spatial import rigid_matrix

#: Jump (mm) of the unapplied through-plane displacement between consecutive frames that makes an
#: event.
EVENT_MM = 1.0
#: Frames fitted on each side of an event (fewer where another event is nearer).
WINDOW_FRAMES = 4
#: A voxel's step is levelled when it exceeds this many of its standard errors.
STEP_Z = 3.0
#: Half-side (mm) of the cube whose largest through-plane displacement times an event.
RADIUS_MM = 80.0
#: Levelled voxels whose largest step exceeds this fraction of their bolus (after levelling) are
#: left out of the arterial search.
ARTERIAL_STEP_FRACTION = 0.25
#: MR signal floor (fraction of the voxel's median) below which the log is not taken.
_MR_FLOOR = 1e-3


@dataclass
class Levelling:
    """What :func:`level_steps` did: the event frames, the through-plane jump (mm) at each, the
    voxels whose signal was levelled at some event and those left out of the arterial search."""

    events: np.ndarray
    jump_mm: np.ndarray
    levelled: np.ndarray  # bool (X, Y, Z)
    unsure: np.ndarray  # bool (X, Y, Z): levelled by more than ARTERIAL_STEP_FRACTION of the bolus

    def to_dict(self, times: np.ndarray, brain: np.ndarray | None = None) -> dict[str, Any]:
        """provenance.json's ``motion.through_plane_steps``."""
        out: dict[str, Any] = {
            "frames": [int(k) for k in self.events],
            "times_s": [round(float(times[k]), 3) for k in self.events],
            "jump_mm": [round(float(j), 3) for j in self.jump_mm],
            "levelled_voxels": int(np.count_nonzero(self.levelled)),
            "left_out_of_aif_search": int(np.count_nonzero(self.unsure)),
            "rule": f"through-plane jump > {EVENT_MM:g} mm between frames; per voxel a line shared by "
            f"≤ {WINDOW_FRAMES} frames each side plus a step, levelled above {STEP_Z:g} standard errors",
        }
        if brain is not None and brain.any():
            out["levelled_brain_fraction"] = round(
                float(np.count_nonzero(self.levelled & brain) / brain.sum()), 4
            )
        return out


def through_plane_displacement(
    estimated: np.ndarray,
    applied: np.ndarray,
    trusted: np.ndarray,
    affine: np.ndarray,
    centre: np.ndarray,
    radius: float = RADIUS_MM,
) -> np.ndarray:
    """(T, 27) displacement (mm) along the slice normal of the 27 points of a cube of half-side
    ``radius`` about ``centre`` (its corners, edge and face centres and centre) by the part of each
    frame's estimated pose that was not applied. Frames whose estimate is not ``trusted``
    (rejected by the motion checks) repeat the frame before."""
    normal = np.asarray(affine, dtype=np.float64)[:3, 2]
    normal = normal / np.linalg.norm(normal)
    axis = (-radius, 0.0, radius)
    points = np.array([[x, y, z] for x in axis for y in axis for z in axis]) + np.asarray(centre)
    track = np.zeros((len(estimated), points.shape[0]))
    for t, (estimate, pose) in enumerate(zip(estimated, applied, strict=True)):
        if t and not trusted[t]:
            track[t] = track[t - 1]
            continue
        residual = np.linalg.inv(rigid_matrix(pose, centre)) @ rigid_matrix(estimate, centre)
        track[t] = (points @ residual[:3, :3].T + residual[:3, 3] - points) @ normal
    return track


def through_plane_events(track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Event frames (where the largest through-plane jump from the frame before exceeds
    :data:`EVENT_MM`) and their jumps (mm), from :func:`through_plane_displacement`."""
    if len(track) < 2:
        return np.zeros(0, dtype=int), np.zeros(0)
    jump = np.abs(np.diff(track, axis=0)).max(axis=1)
    events = np.flatnonzero(jump > EVENT_MM) + 1
    return events, jump[events - 1]


def _windows(events: np.ndarray, n: int, arrival: int) -> list[tuple[int, np.ndarray, bool]]:
    """Per event: the event frame, the frames fitted and whether they are all baseline."""
    out = []
    for j, k in enumerate(events):
        lo = max(int(events[j - 1]) if j else 0, k - WINDOW_FRAMES)
        hi = min(int(events[j + 1]) if j + 1 < len(events) else n, k + WINDOW_FRAMES)
        if k < arrival and arrival - k >= 2:  # a baseline event: fit baseline frames only
            hi = min(hi, arrival)
        frames = np.arange(lo, hi)
        out.append((int(k), frames, bool(frames[-1] < arrival)))
    return out


def _step_filter(times: np.ndarray, frames: np.ndarray, k: int, baseline: bool) -> np.ndarray:
    """Weights over ``frames`` whose dot product with a curve is its least-squares step at ``k``."""
    t = times[frames]
    tau = (t - 0.5 * (times[k - 1] + times[k])) / max(float(t[-1] - t[0]), 1e-6)
    after = (frames >= k).astype(np.float64)
    columns = [np.ones_like(tau)] if baseline or frames.size < 3 else [np.ones_like(tau), tau]
    design = np.stack([*columns, after], axis=1)
    return np.linalg.pinv(design)[-1]


def level_steps(
    data: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    jump_mm: np.ndarray,
    arrival_index: int,
    modality: str,
) -> Levelling:
    """Level, in place, every voxel's signal step at each event frame of ``data`` (X, Y, Z, T)
    (see the module docstring); ``arrival_index``: the first frame of the bolus. Slice by slice,
    so that the float64 work holds one slice at a time."""
    times = np.asarray(times, dtype=np.float64)
    shape = data.shape[:3]
    events = np.asarray(events, dtype=int)
    levelled = np.zeros(shape, dtype=bool)
    unsure = np.zeros(shape, dtype=bool)
    windows = _windows(events, data.shape[3], arrival_index)
    filters = [(k, frames, _step_filter(times, frames, k, base)) for k, frames, base in windows]
    base_end = max(1, min(arrival_index, data.shape[3]))
    for z in range(shape[2]):
        block = data[:, :, z, :].astype(np.float64)
        if modality == "MR":
            floor = _MR_FLOOR * np.maximum(np.median(block, axis=-1, keepdims=True), 1e-12)
            usable = (block > floor).all(axis=-1)
            curve = np.log(np.where(usable[..., None], block, 1.0))
        else:
            usable = np.ones(block.shape[:2], dtype=bool)
            curve = block
        noise = noise_sd_per_curve(curve)
        largest = np.zeros(block.shape[:2])
        for k, frames, weights in filters:
            step = curve[..., frames] @ weights
            keep = usable & (np.abs(step) > STEP_Z * noise * np.linalg.norm(weights))
            step = np.where(keep, step, 0.0)
            curve[..., k:] -= step[..., None]
            levelled[:, :, z] |= keep
            largest = np.maximum(largest, np.abs(step))
        if not levelled[:, :, z].any():
            continue
        # the bolus of the levelled curve: its largest departure from the baseline level
        level = curve[..., :base_end].mean(axis=-1, keepdims=True)
        bolus = (level - curve if modality == "MR" else curve - level).max(axis=-1)
        unsure[:, :, z] = levelled[:, :, z] & (largest > ARTERIAL_STEP_FRACTION * np.maximum(bolus, 0.0))
        out = np.exp(curve) if modality == "MR" else curve
        fixed = levelled[:, :, z]
        data[:, :, z, :][fixed] = out[fixed].astype(data.dtype)
    return Levelling(
        events=events, jump_mm=np.asarray(jump_mm, dtype=np.float64), levelled=levelled, unsure=unsure
    )
