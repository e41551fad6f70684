"""Temporal-shift augmentation: how a delayed series is padded (``perfnet train --shift-pad``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perfnet.errors import PerfnetInputError
from perfnet.training.data import StudySlices
from perfnet.training.dataset import Augmentation, Normalisation, SliceDataset, edge_index
from perfnet.training.run import TrainConfig

FRAMES = 80


def _bolus() -> np.ndarray:
    """A gamma-variate first pass arriving at frame 6 (the grid starts 6 s before the arrival)."""
    t = np.clip(np.arange(FRAMES) - 6.0, 0, None)
    return 100.0 * (t / 5.0) ** 2 * np.exp(2.0 - 2.0 * t / 5.0)


def _delayed(pad: str, shift: int) -> np.ndarray:
    curve = torch.from_numpy(_bolus().astype(np.float32))
    study = StudySlices(
        "sub-0001_ses-01",
        "sub-0001",
        curve[None, :, None, None].expand(1, FRAMES, 4, 4).half(),
        torch.zeros(1, 1, 4, 4),
        torch.ones(1, 4, 4, dtype=torch.bool),
        torch.zeros(FRAMES, 1, 2, 2),
        np.arange(FRAMES, dtype=np.float64),
    )
    augment = Augmentation(
        shift=(shift, shift), flips=False, rotation_deg=0.0, noise=0.0, enabled=True, shift_pad=pad
    )
    norm = Normalisation(1.0, {"tmax": 0.0}, {"tmax": 1.0})
    ds = SliceDataset([study], ["tmax"], norm, 1.0, augment=augment)
    return ds[0]["x"][:, 0, 0].numpy()


def test_reflect_padding_mirrors_the_bolus_into_a_delayed_start() -> None:
    """A delay of 20 frames with the bolus at frame 6: reflect padding puts a time-reversed copy of
    the first pass before the real one (the bundled networks' training); edge padding holds the
    baseline there. The real bolus moves by 20 frames under both."""
    bolus = _bolus()
    reflect, edge = _delayed("reflect", 20), _delayed("edge", 20)
    for x in (reflect, edge):
        np.testing.assert_allclose(x[20:], bolus[:-20], rtol=1e-3, atol=0.05)
    assert reflect[:20].max() > 0.8 * bolus.max()  # a second, mirrored bolus
    assert np.all(edge[:20] == bolus[0])  # baseline only
    # advancing: the end is padded with the last frame instead of the mirrored tail
    np.testing.assert_array_equal(edge_index(10, -3), [3, 4, 5, 6, 7, 8, 9, 9, 9, 9])


def test_shift_pad_is_checked() -> None:
    with pytest.raises(PerfnetInputError, match="shift-pad"):
        TrainConfig(shift_pad="wrap").resolved()
    assert TrainConfig().resolved().shift_pad == "reflect"  # the bundled weights' training
