"""The series a CNN sees: the preprocessing shared by inference (``analyze --method cnn``) and
training (:mod:`perfnet.training.data`), so that a network is trained on exactly what it is given.

1. non-steady-state leading frames dropped (:func:`perfnet.preprocess.nonsteady.remove_non_steady_state`;
   the kept series' clock restarts at its first frame, ``offset_s`` puts TTP back on the
   acquisition's clock);
2. rigid motion correction to the first kept frame (:func:`perfnet.preprocess.motion.motion_correct`),
   frames no rigid pose aligns replaced by linear interpolation in time
   (:func:`perfnet.preprocess.motion.interpolate_frames`), as in the conventional pipeline;
3. then :func:`perfnet.inference.inputs.prepare_input` (concentration on the model's time grid and
   pixel size), which :func:`model_input` applies with a weights file's settings.

``model_input`` is the whole chain: a series → the network's input; training calls it (cached per
study in the run folder). Inference runs the same two steps (``analyze_cnn``: the shared
preprocessing, then ``predict``'s :func:`input_of`, the function ``model_input`` ends with);
``tests/training/test_data.py`` checks that the two inputs are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from perfnet.inference.inputs import ModelInput, bolus_rule_of, prepare_input
from perfnet.io.types import PerfusionSeries

if TYPE_CHECKING:
    from perfnet.preprocess.shared import Preprocessed

Progress = Callable[[str, float], None]


def prepare_series(
    series: PerfusionSeries,
    *,
    skip_frames: int | None = None,
    brain: np.ndarray | None = None,
    motion_correction: bool = True,
    progress: Progress | None = None,
) -> Preprocessed:
    """Steps 1–2 of the module docstring: :func:`perfnet.preprocess.shared.preprocess`, the
    preprocessing every method of ``perfnet.analyze`` shares (what ``analyze_cnn`` runs);
    ``.series`` is what the network sees, ``.offset_s`` the acquisition time of its first frame."""
    from perfnet.preprocess.shared import preprocess

    return preprocess(
        series,
        skip_frames=skip_frames,
        motion_correction=motion_correction,
        brain_mask=brain,
        progress=progress,
    )


@dataclass
class CnnInput:
    """The network's input of a series and the preprocessing that led to it.

    ``offset_s``: TTP on the network's grid + ``offset_s`` = TTP from the first *acquired* frame
    (the grid's start after the first kept frame plus the dropped leading frames' duration)."""

    prepared: Preprocessed
    input: ModelInput

    @property
    def offset_s(self) -> float:
        return float(self.input.offset_s) + self.prepared.offset_s


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
    return CnnInput(prepared, input_of(prepared, config))


def input_of(prepared: Preprocessed, config: dict[str, Any]) -> ModelInput:
    """The network's input of a preprocessed series for weights with ``config``
    (:func:`~perfnet.inference.inputs.prepare_input` on its series, brain mask and bolus timing;
    the bolus patch kept off the voxels motion correction filled from outside the slab):
    the one call training (:func:`model_input`) and inference (``predict``) both make."""
    return prepare_input(
        prepared.series,
        config["frame_interval"],
        config["frames"],
        prepared.brain,
        config.get("align_lead_s"),
        config.get("pixel_mm"),
        bolus=prepared.bolus,
        bolus_rule=bolus_rule_of(config),
        exclude=prepared.outside,
    )
