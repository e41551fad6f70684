"""The regional-delay augmentation (``perfnet train --regional-delay N``): a smooth region of a
training slice delayed by whole frames, its Tmax and TTP targets moved with it, its flow not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perfnet.errors import PerfnetInputError
from perfnet.training.data import StudySlices
from perfnet.training.dataset import BASELINE_S, Augmentation, Normalisation, SliceDataset
from perfnet.training.run import TrainConfig

FRAMES, SIZE = 60, 32
MAPS = ["cbf", "tmax", "ttp"]


def _bolus() -> np.ndarray:
    """A first pass arriving at frame 6 (the grid starts 6 s before the arrival) on a noisy baseline."""
    t = np.clip(np.arange(FRAMES) - 6.0, 0, None)
    noise = np.random.default_rng(0).normal(0, 1.0, FRAMES)
    return 100.0 * (t / 5.0) ** 2 * np.exp(2.0 - 2.0 * t / 5.0) + noise


def _dataset(regional_delay: tuple[int, int], tmax: float = 2.0) -> SliceDataset:
    curve = torch.from_numpy(_bolus().astype(np.float32))
    targets = torch.stack([torch.full((SIZE, SIZE), v) for v in (50.0, tmax, tmax + 10.0)])
    study = StudySlices(
        "sub-0001_ses-01",
        "sub-0001",
        curve[None, :, None, None].expand(1, FRAMES, SIZE, SIZE).half(),
        targets[None],
        torch.ones(1, SIZE, SIZE, dtype=torch.bool),
        torch.zeros(FRAMES, 1, 2, 2),
        np.arange(FRAMES, dtype=np.float64),
    )
    augment = Augmentation(
        shift=(0, 0), flips=False, rotation_deg=0.0, noise=0.0, enabled=True, regional_delay=regional_delay
    )
    norm = Normalisation(1.0, {m: 0.0 for m in MAPS}, {m: 1.0 for m in MAPS})
    return SliceDataset([study], MAPS, norm, 1.0, augment=augment)


def test_a_delayed_region_moves_its_curves_tmax_and_ttp_and_keeps_its_flow() -> None:
    ds = _dataset((0, 8))
    item = next(i for i in range(50) if ds.draw(0, i)["delay_frames"] >= 5)
    ds.epoch = item
    p, sample = ds.draw(0), ds[0]
    x, y = sample["x"].numpy(), sample["y"].numpy()
    curve = torch.from_numpy(_bolus().astype(np.float32)).half().float().numpy()
    d = np.rint(y[1] - 2.0).astype(int)  # each pixel's delay, from its Tmax target
    assert d.max() == p["delay_frames"] and d.min() == 0 and (d == 0).mean() > 0.2  # a region, not all
    np.testing.assert_allclose(y[2] - 12.0, d)  # TTP moves with Tmax
    np.testing.assert_array_equal(y[0], 50.0)  # CBF does not move
    base = int(BASELINE_S)
    for i, j in zip(*np.nonzero(d >= 0), strict=True):
        k = d[i, j]
        np.testing.assert_array_equal(x[k:, i, j], curve[: FRAMES - k])  # whole frames: the same values
        assert set(x[:k, i, j].tolist()) <= set(curve[:base].tolist())  # filled from the baseline
    # smooth: on this 32-pixel slice neighbours differ by at most 2 frames (the bump's steepest slope,
    # frames / (SD · sqrt(e)), is under 1 frame a pixel from 128 pixels up)
    assert np.abs(np.diff(d, axis=0)).max() <= 2 and np.abs(np.diff(d, axis=1)).max() <= 2


def test_an_advanced_region_stops_at_its_arterial_input() -> None:
    """Advanced (negative d): delayed tissue (Tmax 9 s) moves earlier by up to the drawn frames, its
    last frames filled from the grid's last 4 s; healthy tissue (Tmax 2 s) by 2 frames at most."""
    curve = torch.from_numpy(_bolus().astype(np.float32)).half().float().numpy()
    for tmax, limit in ((9.0, 9), (2.0, 2)):
        ds = _dataset((-8, -1), tmax)
        ds.epoch = next(e for e in range(100) if ds.draw(0, e)["delay_frames"] <= -6)
        p, sample = ds.draw(0), ds[0]
        x, y = sample["x"].numpy(), sample["y"].numpy()
        d = np.rint(y[1] - tmax).astype(int)
        assert d.min() == max(p["delay_frames"], -limit) and d.max() == 0
        assert (y[1] >= 0).all() and (y[0] == 50.0).all()
        np.testing.assert_allclose(y[2] - (tmax + 10.0), d)
        for i, j in zip(*np.nonzero(d < 0), strict=True):
            k = -d[i, j]
            np.testing.assert_array_equal(x[: FRAMES - k, i, j], curve[k:])
            assert set(x[FRAMES - k :, i, j].tolist()) <= set(curve[-int(BASELINE_S) :].tolist())


def test_off_by_default_and_other_runs_draws_unchanged() -> None:
    """Off, the draws hold no delay and are those of a run planned before the option existed."""
    off, on = _dataset((0, 0)), _dataset((0, 8))
    for item in range(5):
        a, b = off.draw(item), on.draw(item)
        assert "delay_frames" not in a
        assert {k: v for k, v in b.items() if not k.startswith("delay_")} == a
    assert sum(on.draw(0, e)["delay_frames"] > 0 for e in range(200)) in range(70, 131)  # about half
    both = {_dataset((-3, 3)).draw(0, e)["delay_frames"] for e in range(200)}
    assert both == {-3, -2, -1, 0, 1, 2, 3}  # 0: not applied (half the draws)
    assert TrainConfig().resolved().regional_delay == (0, 0)
    for bad in ((-31, 0), (3, 2)):
        with pytest.raises(PerfnetInputError, match="regional-delay"):
            TrainConfig(regional_delay=bad).resolved()
