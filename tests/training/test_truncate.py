"""The truncated-acquisition augmentation (``perfnet train --truncate LO,HI``): the training input
cut after a drawn frame and reflect-padded there exactly as inference pads a short acquisition,
the targets left at the truth; and the training domain that records it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from perfnet.errors import PerfnetInputError
from perfnet.inference import domain
from perfnet.inference.inputs import reflect_times
from perfnet.training.data import StudySlices
from perfnet.training.dataset import Augmentation, Normalisation, SliceDataset, cut_index
from perfnet.training.run import TrainConfig, training_domain, truncate_frames

FRAMES, SIZE = 60, 16
MAPS = ["cbf", "tmax", "ttp"]


def _dataset(truncate: tuple[int, int], delay: tuple[int, int] = (0, 0)) -> tuple[SliceDataset, np.ndarray]:
    rng = np.random.default_rng(0)
    curves = rng.normal(0, 1, (FRAMES, SIZE, SIZE)).astype(np.float32) + np.arange(FRAMES)[:, None, None]
    targets = torch.stack([torch.full((SIZE, SIZE), v) for v in (50.0, 9.0, 30.0)])
    study = StudySlices(
        "sub-0001_ses-01",
        "sub-0001",
        torch.from_numpy(curves)[None].half(),
        targets[None],
        torch.ones(1, SIZE, SIZE, dtype=torch.bool),
        torch.arange(FRAMES, dtype=torch.float32)[:, None, None, None].expand(FRAMES, 1, 2, 2).clone(),
        np.arange(FRAMES, dtype=np.float64),
    )
    augment = Augmentation(
        shift=(0, 0),
        flips=False,
        rotation_deg=0.0,
        noise=0.0,
        enabled=True,
        regional_delay=delay,
        truncate=truncate,
    )
    norm = Normalisation(1.0, {m: 0.0 for m in MAPS}, {m: 1.0 for m in MAPS})
    return SliceDataset([study], MAPS, norm, 1.0, augment=augment), torch.from_numpy(
        curves
    ).half().float().numpy()


def test_cut_index_pads_as_inference_pads_a_short_acquisition() -> None:
    for n, cut in ((80, 30), (12, 5), (80, 79), (80, 1)):
        expected = reflect_times(np.arange(n, dtype=float), float(cut)).astype(int)
        np.testing.assert_array_equal(cut_index(n, cut), expected if cut < n - 1 else np.arange(n))
    np.testing.assert_array_equal(cut_index(10, 0), np.arange(10))  # 0: not applied


def test_a_cut_sample_is_mirrored_after_the_cut_and_keeps_its_true_targets() -> None:
    ds, curves = _dataset((20, 40))
    ds.epoch = next(e for e in range(100) if ds.draw(0, e)["cut"] > 0)
    p, sample = ds.draw(0), ds[0]
    cut = p["cut"]
    assert 20 <= cut <= 40
    x, y = sample["x"].numpy(), sample["y"].numpy()
    np.testing.assert_array_equal(x[: cut + 1], curves[: cut + 1])  # the acquisition up to the cut
    np.testing.assert_array_equal(x[cut + 1 : 2 * cut], curves[cut - 1 : 0 : -1])  # mirrored after it
    np.testing.assert_array_equal(
        sample["bolus"][:, 0, 0, 0].numpy(), cut_index(FRAMES, cut)
    )  # the patch too
    np.testing.assert_array_equal(y, np.stack([np.full((SIZE, SIZE), v) for v in (50.0, 9.0, 30.0)]))


def test_off_by_default_and_other_draws_unchanged() -> None:
    """Off, no draw names a cut and a run planned before the option draws as it did; on, about half
    of the samples are cut, at every frame of the range; drawn after the regional delay's draws."""
    off, _ = _dataset((0, 0))
    on, _ = _dataset((20, 23))
    for item in range(5):
        a, b = off.draw(item), on.draw(item)
        assert "cut" not in a and {k: v for k, v in b.items() if k != "cut"} == a
    cuts = [on.draw(0, e)["cut"] for e in range(200)]
    assert sum(c > 0 for c in cuts) in range(70, 131) and set(cuts) == {0, 20, 21, 22, 23}
    delayed, _ = _dataset((0, 0), (1, 4))
    both, _ = _dataset((20, 23), (1, 4))
    assert {k: v for k, v in both.draw(3).items() if k != "cut"} == delayed.draw(3)


def test_truncate_option_in_seconds_after_the_arrival_and_its_errors() -> None:
    cfg = TrainConfig(truncate=(12.0, 40.0)).resolved()
    assert cfg.truncate == (12.0, 40.0) and truncate_frames(cfg) == (18, 46)  # 6 s lead on a 1 s grid
    assert truncate_frames(TrainConfig().resolved()) == (0, 0)
    for bad, words in (((0.0, 5.0), "0 < LO"), ((9.0, 5.0), "0 < LO"), ((80.0, 90.0), "past the end")):
        with pytest.raises(PerfnetInputError, match=words):
            TrainConfig(truncate=bad).resolved()
    with pytest.raises(PerfnetInputError, match="align-lead"):
        TrainConfig(truncate=(12.0, 40.0), align_lead_s=None).resolved()


def test_the_domain_records_the_shortest_cut() -> None:
    """Trained with cuts from 12 s after the arrival, a network's domain reaches acquisitions that
    short (flagged below 12 / 1.5 = 8 s); without cuts the studies' own shortest stays."""
    studies = [
        SimpleNamespace(descriptors={"after_arrival_s": v, "max_frame_interval_s": 1.0}) for v in (35, 90)
    ]
    plain = training_domain(studies, None)
    assert plain["after_arrival_s"] == [35.0, 90.0]
    cut = training_domain(studies, None, cut_after_s=12.0)
    assert cut["after_arrival_s"] == [12.0, 90.0] and domain.limit("after_arrival_s", cut) == 8.0
    assert "acquisitions cut from 12 s after the arrival (--truncate)" in cut["source"]
    assert domain.truncated(plain, 40.0) is plain and domain.truncated(None, 12.0) is None
