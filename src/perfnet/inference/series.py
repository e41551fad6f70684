"""The series a CNN sees: the preprocessing shared by inference (``analyze --method cnn``) and
training (:mod:`perfnet.training.data`), so that a network is trained on exactly what it is given.

1. non-steady-state leading frames dropped (:func:`perfnet.preprocess.nonsteady.remove_non_steady_state`;
   the kept series' clock restarts at its first frame, ``steady.offset_s`` puts TTP back on the
   acquisition's clock);
2. rigid motion correction to the first kept frame (:func:`perfnet.preprocess.motion.motion_correct`),
   frames no rigid pose aligns replaced by linear interpolation in time
   (:func:`perfnet.preprocess.motion.interpolate_frames`), as in the conventional pipeline;
3. then :func:`perfnet.inference.inputs.prepare_input` (concentration on the model's time grid and
   pixel size), which :func:`model_input` applies with a weights file's settings.

``model_input`` is the whole chain: a series → the network's input. Both training (cached per study
in the run folder) and inference call it, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from perfnet.inference.inputs import ModelInput, prepare_input
from perfnet.io.types import PerfusionSeries

Progress = Callable[[str, float], None]


@dataclass
class PreparedSeries:
    """A series after the CNN's preprocessing.

    Attributes:
        series: the kept frames, motion corrected, unalignable frames interpolated in time; its
            times start at 0 at the first kept frame.
        steady: the :class:`~perfnet.preprocess.nonsteady.NonSteadyState` record (``offset_s``:
            acquisition time of the first kept frame).
        motion: provenance.json's ``motion`` (None without motion correction).
    """

    series: PerfusionSeries
    steady: Any
    motion: dict[str, Any] | None
    shared: Any = None  # the full perfnet.preprocess.shared.Preprocessed (brain, bolus timing, QC)


def prepare_series(
    series: PerfusionSeries,
    *,
    skip_frames: int | None = None,
    brain: np.ndarray | None = None,
    motion_correction: bool = True,
    progress: Progress | None = None,
) -> PreparedSeries:
    """Steps 1–2 of the module docstring: :func:`perfnet.preprocess.shared.preprocess`, the
    preprocessing every method of ``perfnet.analyze`` shares (what ``analyze_cnn`` runs)."""
    from perfnet.preprocess.shared import preprocess

    pre = preprocess(
        series,
        skip_frames=skip_frames,
        motion_correction=motion_correction,
        brain_mask=brain,
        progress=progress,
    )
    return PreparedSeries(pre.series, pre.non_steady_state, pre.motion, pre)


@dataclass
class CnnInput:
    """The network's input of a series and the preprocessing that led to it.

    ``offset_s``: TTP on the network's grid + ``offset_s`` = TTP from the first *acquired* frame
    (the grid's start after the first kept frame plus the dropped leading frames' duration)."""

    prepared: PreparedSeries
    input: ModelInput

    @property
    def offset_s(self) -> float:
        return float(self.input.offset_s) + float(self.prepared.steady.offset_s)


def model_input(
    series: PerfusionSeries,
    config: dict[str, Any],
    *,
    skip_frames: int | None = None,
    brain: np.ndarray | None = None,
    motion_correction: bool = True,
    progress: Progress | None = None,
) -> CnnInput:
    """A series as acquired → the network's input for weights with ``config`` (``frame_interval``,
    ``frames``, ``align_lead_s``, ``pixel_mm``): :func:`prepare_series` then
    :func:`~perfnet.inference.inputs.prepare_input` with the automatic brain mask of the prepared
    series unless ``brain`` is given."""
    prepared = prepare_series(
        series, skip_frames=skip_frames, brain=brain, motion_correction=motion_correction, progress=progress
    )
    inp = prepare_input(
        prepared.series,
        config["frame_interval"],
        config["frames"],
        prepared.shared.brain,
        config.get("align_lead_s"),
        config.get("pixel_mm"),
        bolus=prepared.shared.bolus,
    )
    return CnnInput(prepared, inp)
