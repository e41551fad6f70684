"""The preprocessing every method shares, run once before the method branch.

    acquired series ─► non-steady-state leading frames removed ─► rigid motion correction (frames
    no pose aligns replaced in time) ─► brain mask ─► bolus timing ─► signal steps of through-plane
    motion levelled (:mod:`perfnet.preprocess.levels`; then mask and timing again) ─► input QC
    (:mod:`perfnet.qc`)

:func:`preprocess` returns one :class:`Preprocessed` that the conventional pipeline
(:func:`perfnet.conventional.pipeline.analyze`) and the CNN (:func:`perfnet.inference.cnn.analyze_cnn`)
both consume; :func:`perfnet.analyze` runs it before calling the method, so every method — a newly
registered one too — gets the same frames, mask, bolus timing and QC flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from perfnet.errors import PerfnetInputError
from perfnet.io.types import PerfusionSeries

if TYPE_CHECKING:  # torch is imported only when an analysis runs, not when the CLI starts
    from perfnet.preprocess.bolus import BolusTiming
    from perfnet.preprocess.motion import MotionResult
    from perfnet.preprocess.nonsteady import NonSteadyState

Progress = Callable[[str, float], None]
#: A brain mask smaller than this (voxels) is not a head perfusion series.
MIN_BRAIN_VOXELS = 10


class Steps:
    """Times each step and reports progress (``progress(name, 0.0)`` before, ``1.0`` after)."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.progress:
            self.progress(name, 0.0)
        start = time.perf_counter()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if self.progress:
            self.progress(name, 1.0)
        return out


def motion_provenance(moved: MotionResult) -> dict[str, Any]:
    """provenance.json's ``motion``: the per-frame pose (columns named) and displacement."""
    return moved.to_dict() | {
        "reference_frame": moved.reference,
        "columns": ["tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg"],
    }


@dataclass
class Preprocessed:
    """What the shared preprocessing produced (see the module docstring).

    Attributes:
        acquired: the series as given (its clock is the maps' clock: TTP from its first frame).
        steady: the non-steady-state frames removed, before motion correction (times from 0 at the
            first kept frame); the input QC measures the noise on it.
        corrected: ``steady`` motion corrected, unalignable frames replaced in time: what methods
            analyse (read it as ``series``; None once :meth:`release_frames` dropped it).
        non_steady_state: the record of the removed frames (``offset_s`` = time of the first kept one).
        brain: (X, Y, Z) bool brain mask (the user's or automatic).
        brain_source: ``"user"`` or ``"automatic"``.
        bolus: bolus arrival, baseline frames and peak on ``series`` (unfiltered).
        motion: the motion summary for provenance.json (None without motion correction).
        outside: voxels filled from outside the slab in some frame (motion correction), or None.
        late: (X, Y, Z) bool, brain tissue still enhancing at the last frame
            (:func:`perfnet.qc.late_tissue`; ``late_bolus``): no method measures it.
        qc_measures: the numbers the input checks judged (:func:`perfnet.qc.input_measures`).
        qc_flags: the input checks' flags (:func:`perfnet.qc.input_flags`).
        seconds: wall time of each step.
    """

    acquired: PerfusionSeries
    steady: PerfusionSeries
    corrected: PerfusionSeries | None
    non_steady_state: NonSteadyState
    brain: np.ndarray
    brain_source: str
    bolus: BolusTiming
    motion: dict[str, Any] | None = None
    outside: np.ndarray | None = None
    late: np.ndarray | None = None
    qc_measures: dict[str, Any] = field(default_factory=dict)
    qc_flags: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def series(self) -> PerfusionSeries:
        """The series every method analyses (non-steady-state frames removed, motion corrected)."""
        if self.corrected is None:
            raise RuntimeError("the corrected frames were released by the method that consumed them")
        return self.corrected

    def release_frames(self) -> None:
        """Drop the corrected frames once a method holds its own copy of them (the conventional
        pipeline after its filter): a 512² × 16 × 89 series is 1.5 GB. ``series`` then raises."""
        self.corrected = None

    @property
    def offset_s(self) -> float:
        """Time of the first kept frame on the acquisition's clock."""
        return float(self.non_steady_state.offset_s)

    def provenance(self) -> dict[str, Any]:
        """The shared part of provenance.json (every method records it the same way)."""
        from perfnet import qc

        return {
            "input": {k: v for k, v in self.acquired.summary().items() if k != "frame_times"},
            "non_steady_state_frames": self.non_steady_state.to_dict(),
            "motion": self.motion,
            "brain_mask": self.brain_source,
            "brain_voxels": int(self.brain.sum()),
            "input_qc": qc.summary(self.qc_flags, self.qc_measures)
            | {
                "bolus": {  # the shared timing the input checks used (the acquisition's clock)
                    "arrival_s": round(float(self.bolus.arrival_s) + self.offset_s, 3),
                    "baseline_frames": int(self.bolus.baseline_end),
                    "no_baseline": bool(self.bolus.no_baseline),
                }
            },
        }


def preprocess(
    series: PerfusionSeries,
    *,
    skip_frames: int | None = None,
    motion_correction: bool = True,
    brain_mask: np.ndarray | None = None,
    progress: Progress | None = None,
    steps: Steps | None = None,
) -> Preprocessed:
    """Non-steady-state frames, motion correction, brain mask, bolus timing and input QC of a series
    (see the module docstring). ``skip_frames``: None detects the non-steady-state frames, N drops
    N, 0 none. ``brain_mask``: a bool mask on the series' grid, else computed on the corrected
    frames. Bad input raises :class:`perfnet.errors.PerfnetInputError`."""
    from perfnet import qc
    from perfnet.preprocess.bolus import detect_bolus
    from perfnet.preprocess.levels import level_steps, through_plane_displacement, through_plane_events
    from perfnet.preprocess.mask import brain_mask as auto_brain_mask
    from perfnet.preprocess.motion import TRUSTED_STATUSES, interpolate_frames, motion_correct
    from perfnet.preprocess.nonsteady import remove_non_steady_state

    steps = steps or Steps(progress)
    shape = series.spatial_shape
    if brain_mask is not None:
        brain_mask = np.asarray(brain_mask, dtype=bool)
        if brain_mask.shape != shape:
            raise PerfnetInputError(
                "--brain-mask", f"mask shape {brain_mask.shape} differs from the series grid {shape}"
            )
    acquired = series
    steady, record = steps.run(
        "non-steady-state frames", lambda: remove_non_steady_state(acquired, skip_frames, brain_mask)
    )
    data, times = steady.data, steady.times
    motion: dict[str, Any] | None = None
    outside = None
    events, jumps = np.zeros(0, dtype=int), np.zeros(0)
    if motion_correction:
        moved = steps.run(
            "motion correction", lambda: motion_correct(data, steady.affine, reference=0, times=times)
        )
        # frames no rigid pose aligns (through-plane motion on thick slices): replaced in time
        data = interpolate_frames(moved.data, times, moved.excluded_frames, in_place=moved.data is not data)
        motion = motion_provenance(moved)
        outside = getattr(moved, "outside", None)  # voxels filled from outside the slab in some frame
        if moved.status:  # the checks ran: which estimates are trusted is known
            trusted = np.isin(moved.status, TRUSTED_STATUSES)
            track = through_plane_displacement(
                moved.estimated, moved.parameters, trusted, steady.affine, moved.centre
            )
            events, jumps = through_plane_events(track)
        del moved  # `data` holds the corrected frames; nothing else may keep them alive
    corrected = steady if data is steady.data else steady.with_data(data)

    def masked(name: str) -> np.ndarray:
        found = brain_mask
        if found is None:
            found = np.asarray(steps.run(name, lambda: auto_brain_mask(corrected)), dtype=bool)
        if found.sum() < MIN_BRAIN_VOXELS:
            raise PerfnetInputError(
                series.meta.get("source"), "brain mask is empty: is this a head perfusion series?"
            )
        return found

    def timing(name: str) -> BolusTiming:
        return steps.run(
            name,
            lambda: detect_bolus(
                corrected.data, corrected.times, mask, corrected.modality, corrected.voxel_size
            ),
        )

    mask = masked("brain mask")
    bolus = timing("bolus timing (shared)")
    if events.size and motion is not None:
        # the frames are the motion correction's copy: levelled in place
        levelled = steps.run(
            "through-plane steps",
            lambda: level_steps(
                corrected.data, corrected.times, events, jumps, bolus.arrival_index, corrected.modality
            ),
        )
        # the mask and timing of the levelled series, the one every method sees
        mask = masked("brain mask (levelled series)")
        bolus = timing("bolus timing (levelled series)")
        outside = levelled.unsure if outside is None else outside | levelled.unsure
        motion["through_plane_steps"] = levelled.to_dict(corrected.times, mask)
    late = steps.run("late tissue", lambda: qc.late_tissue(corrected, mask, bolus.baseline_end))
    measures = steps.run(
        "input QC",
        lambda: qc.input_measures(corrected, mask, bolus.baseline_end, acquired_data=steady.data, late=late),
    )
    flags = qc.input_flags(measures, bolus.no_baseline, motion, record.to_dict())
    return Preprocessed(
        acquired=acquired,
        steady=steady,
        corrected=corrected,
        non_steady_state=record,
        brain=mask,
        brain_source="user" if brain_mask is not None else "automatic",
        bolus=bolus,
        motion=motion,
        outside=outside,
        late=late,
        qc_measures=measures,
        qc_flags=flags,
        seconds=steps.seconds,
    )
