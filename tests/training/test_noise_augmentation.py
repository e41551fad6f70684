"""The noise augmentation's reach (``perfnet train --noise-max F``): with probability ½ a training
sample gets Gaussian noise whose SD is drawn up to F times the input scale (another dose or SNR)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perfnet.cli.parser import build_parser
from perfnet.errors import PerfnetInputError
from perfnet.training.data import StudySlices
from perfnet.training.dataset import Augmentation, Normalisation, SliceDataset
from perfnet.training.run import TrainConfig

FRAMES, SIZE, SCALE = 40, 32, 8.0
MAPS = ["cbf", "tmax"]


def _flat(noise: float) -> SliceDataset:
    """One study whose curves are zero everywhere: what a sample holds is the added noise alone."""
    study = StudySlices(
        "sub-0001_ses-01",
        "sub-0001",
        torch.zeros(1, FRAMES, SIZE, SIZE).half(),
        torch.ones(1, len(MAPS), SIZE, SIZE),
        torch.ones(1, SIZE, SIZE, dtype=torch.bool),
        torch.zeros(FRAMES, 1, 2, 2),
        np.arange(FRAMES, dtype=np.float64),
    )
    augment = Augmentation(shift=(0, 0), flips=False, rotation_deg=0.0, noise=noise, enabled=True)
    norm = Normalisation(SCALE, {m: 0.0 for m in MAPS}, {m: 1.0 for m in MAPS})
    return SliceDataset([study], MAPS, norm, 1.0, augment=augment)


def test_the_added_noise_reaches_the_set_fraction_of_the_input_scale() -> None:
    """Each sample's added SD (in input units) is the draw's fraction × the input scale; the draws
    cover [0, F] and about half the samples get none."""
    for noise_max in (0.5, 1.5):
        data = _flat(noise_max)
        drawn = [data.draw(0, epoch)["noise"] for epoch in range(400)]
        assert 150 <= sum(d == 0.0 for d in drawn) <= 250
        assert max(drawn) <= noise_max and max(drawn) > 0.9 * noise_max
        for epoch in range(6):
            p = data.draw(0, epoch)
            x = data[(epoch, 0)]["x"] * SCALE  # back to input units
            assert float(x.std()) == pytest.approx(p["noise"] * SCALE, rel=0.02, abs=1e-6)


def test_the_option_sets_the_training_config_and_is_checked() -> None:
    """``--noise-max`` defaults to the 0.5 every bundled recipe trained with; out-of-range values are
    refused with the option named."""
    parser = build_parser()
    assert parser.parse_args(["train", "cohort", "--out", "run"]).noise_max == 0.5
    assert parser.parse_args(["train", "cohort", "--out", "run", "--noise-max", "1.5"]).noise_max == 1.5
    assert TrainConfig().resolved().noise == 0.5
    assert TrainConfig(noise=1.5).resolved().noise == 1.5
    for bad in (-0.1, 11.0):
        with pytest.raises(PerfnetInputError, match="noise-max"):
            TrainConfig(noise=bad).resolved()
