"""The shift-invariant U-Net (perfnet.models.shiftnet): its flow maps cannot read a voxel's delay,
by construction (random weights: no training needed for it to hold)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from perfnet.inference import predict
from perfnet.models import build_model
from perfnet.models.shiftnet import TemporalFront
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.cohort import write_study
from perfnet.training.run import TrainConfig, train

MAPS = ["cbf", "cbv", "mtt", "ttp", "tmax"]
T = 80


def _curve(start: float, width: float = 4.0, amplitude: float = 3.0) -> torch.Tensor:
    """A first pass starting at ``start`` frames: a skewed bump lasting 6·``width`` frames, exactly
    zero outside it (so shifting it inside the grid loses nothing at the grid's ends)."""
    s = ((torch.arange(T, dtype=torch.float64) - start) / (6 * width)).clamp(0, 1)
    return (amplitude * torch.sin(np.pi * s**0.6) ** 2).float()


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = TrainConfig(model="shiftnet", maps=MAPS, width=8, frames=T).build_kwargs()
    return build_model("shiftnet", **kwargs).eval()


def _study(lesion_start: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = _curve(10)[None, :, None, None].repeat(1, 1, 32, 32)
    x[0, :, 8:16, 8:16] = _curve(lesion_start, width=6.0, amplitude=1.0)[:, None, None]
    bolus = (8 * _curve(6, width=2.0))[None, :, None, None, None].repeat(1, 1, 3, 9, 9)
    return x, bolus


def test_the_maps_know_which_outputs_are_times() -> None:
    kwargs = TrainConfig(model="shiftnet", maps=MAPS, width=8, frames=T).build_kwargs()
    assert kwargs["time_maps"] == [3, 4] and kwargs["out_channels"] == 5 and kwargs["frames"] == T
    model = build_model("shiftnet", **kwargs)
    assert model.flow_maps == [0, 1, 2] and model.timing.inc[0].conv.in_channels == T
    assert TrainConfig(model="shiftnet", maps=["cbf", "cbv"]).build_kwargs()["time_maps"] == []
    with pytest.raises(ValueError, match="time_maps"):
        build_model("shiftnet", frames=T, out_channels=5, time_maps=[3, 5])


@pytest.mark.parametrize("delay", [4, 10, 16])
def test_a_delayed_lesion_reads_the_same_flow(delay: int) -> None:
    """The same lesion curve arriving ``delay`` frames later (even: the front reads 2-frame
    means): CBF, CBV and MTT identical to float precision everywhere, in the lesion and around it
    (the time maps come from the frames and are free to move)."""
    model = _model()
    with torch.no_grad():
        early, _ = model(*_study(12))
        late, _ = model(*_study(12 + delay))
    np.testing.assert_allclose(late[:, :3].numpy(), early[:, :3].numpy(), atol=1e-5)


def test_a_whole_study_shifted_keeps_the_flow() -> None:
    """Everything (tissue and artery) 6 frames later: the flow maps do not change."""
    model = _model(1)
    x, bolus = _study(14)
    with torch.no_grad():
        before, _ = model(x, bolus)
        after, _ = model(torch.roll(x, 6, dims=1), torch.roll(bolus, 6, dims=1))
    np.testing.assert_allclose(after[:, :3].numpy(), before[:, :3].numpy(), atol=1e-5)


def test_the_front_ignores_when_a_curve_comes_and_reads_its_size() -> None:
    """The front's pooled features: the same for a curve at any start, proportional to its
    amplitude (bias-free, ReLU), zero for a flat zero curve."""
    torch.manual_seed(2)
    front = TemporalFront(8)
    curves = torch.stack([_curve(s) for s in (5.0, 13.0, 25.0)] + [2 * _curve(5.0), torch.zeros(T)])
    with torch.no_grad():
        f = front(curves)
    np.testing.assert_allclose(f[1].numpy(), f[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(f[2].numpy(), f[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(f[3].numpy(), 2 * f[0].numpy(), rtol=1e-5)
    assert (f[4] == 0).all() and (f[0] > 0).any()


def test_shiftnet_trains_and_predicts_by_name(tmp_path: Path) -> None:
    """Registered like the others: a tiny run trains (loss falls), its weights load by name and
    give finite maps on a study."""
    root = tmp_path / "cohort"
    tiny = {"matrix": 32, "slices": 2, "frames": 30, "coverage_mm": 20.0, "motion": False}
    for i in range(2):
        study = simulate_study(PhantomConfig.draw(760 + i, "CT", **tiny))
        write_study(study, root / f"sub-{i:04d}" / "ses-01", f"sub-{i:04d}")
    cfg = TrainConfig(
        model="shiftnet",
        width=4,
        frames=24,
        epochs=4,
        pretrain_epochs=1,
        pretrain_size=32,
        crop=32,
        batch_size=2,
        lr=3e-3,
        lr_step_epochs=20,
        folds=2,
        fold=0,
        seed=3,
        accelerator="cpu",
        devices=1,
        progress=False,
    )
    run = tmp_path / "run"
    train(root, run, cfg, resume=False)
    with (run / "fold-0" / "metrics.csv").open() as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert losses[-1] < losses[0], losses
    series = simulate_study(PhantomConfig.draw(762, "CT", **tiny)).series
    maps = predict(series, run / "weights.pt", device="cpu")
    for m in MAPS:
        assert np.isfinite(maps[m]).all() and maps[m].shape == series.spatial_shape
