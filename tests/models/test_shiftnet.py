"""The delay-invariant U-Net (perfnet.models.shiftnet): its flow maps read every region's curves
aligned on their own bolus, so they cannot read its delay, by construction (random weights: no
training needed for it to hold)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from perfnet.inference import predict
from perfnet.models import build_model
from perfnet.models.shiftnet import Aligner
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.cohort import write_study
from perfnet.training.run import TrainConfig, train
from tiny_training import tiny_config

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


def _study(lesion_start: float, size: int = 32, lesion: slice = slice(8, 16)) -> torch.Tensor:
    x = _curve(10)[None, :, None, None].repeat(1, 1, size, size)
    x[0, :, lesion, lesion] = _curve(lesion_start, width=6.0, amplitude=1.0)[:, None, None]
    return x


def test_the_maps_know_which_outputs_are_times() -> None:
    kwargs = TrainConfig(model="shiftnet", maps=MAPS, width=8, frames=T).build_kwargs()
    assert kwargs["time_maps"] == [3, 4] and kwargs["out_channels"] == 5 and kwargs["frames"] == T
    model = build_model("shiftnet", **kwargs)
    assert model.flow_maps == [0, 1, 2]
    assert model.flow.inc[0].conv.in_channels == 48 and model.timing.inc[0].conv.in_channels == T
    assert TrainConfig(model="shiftnet", maps=["cbf", "cbv"]).build_kwargs()["time_maps"] == []
    with pytest.raises(ValueError, match="time_maps"):
        build_model("shiftnet", frames=T, out_channels=5, time_maps=[3, 5])
    with pytest.raises(ValueError, match="window"):
        build_model("shiftnet", frames=T, out_channels=5, window=12)  # not past the anchor (16)


@pytest.mark.parametrize("delay", [3, 10, 17])
def test_a_delayed_region_is_aligned_where_it_was(delay: int) -> None:
    """A lesion of 24 × 24 pixels whose curves arrive ``delay`` frames later: inside it, farther
    than the smoothing's reach (3 σ = 6 pixels at σ = 2; the default is 6) from its edge, the
    aligned curves are the same to the bit, and the shift is ``delay`` frames larger; outside its
    reach nothing changes."""
    aligner = Aligner(sigma_px=2.0)
    region = slice(12, 36)
    early, early_shift = aligner(_study(12, size=48, lesion=region))
    late, late_shift = aligner(_study(12 + delay, size=48, lesion=region))
    inner = (0, slice(None), slice(18, 30), slice(18, 30))
    assert torch.equal(late[inner], early[inner])
    assert ((early_shift - late_shift)[0, 18:30, 18:30] == delay).all()
    assert torch.equal(late[0, :, :6], early[0, :, :6]) and torch.equal(late_shift[0, :6], early_shift[0, :6])
    assert (early_shift[0, 18:30, 18:30] != early_shift[0, 0, 0]).all()  # the lesion's own anchor


@pytest.mark.parametrize("delay", [6, 20])
def test_a_curve_cut_at_the_grid_end_reaches_the_flow_branch_unchanged(delay: int) -> None:
    """A region whose curve is still raised at the grid's last frame (a delayed core's long tail),
    delayed by ``delay`` frames and cut at the grid's end: the flow U-Net's input (the first 48
    aligned frames) is the same to the bit inside it; the whole aligned series is not (its last
    frames repeat the cut curve's last value for as many frames as it moved: a plateau whose
    length is the shift)."""
    model = build_model("shiftnet", frames=T, out_channels=3, width=4, sigma_px=2.0)
    t = torch.arange(T, dtype=torch.float32)

    def study(start: int) -> torch.Tensor:
        s = (t - start).clamp_min(0)
        tail = 0.2 * (1 - torch.exp(-s / 30))  # still rising at the grid's end
        curve = torch.where(t >= start, torch.sin(np.pi * (s / 12).clamp(0, 1)) ** 2 + tail, t * 0)
        x = torch.zeros(1, T, 48, 48)
        x[0, :, 12:36, 12:36] = curve[:, None, None]
        return x

    early, late = study(14), study(14 + delay)
    inner = (0, slice(None), slice(18, 30), slice(18, 30))
    assert torch.equal(model.flow_input(late)[inner], model.flow_input(early)[inner])
    assert not torch.equal(model.align(late)[0][inner], model.align(early)[0][inner])


def test_a_whole_study_shifted_keeps_the_flow() -> None:
    """Every curve 6 frames later: the flow maps do not change (random weights, batch statistics:
    the network responds to its input, yet not to the shift)."""
    model = _model(1).train()
    x = _study(14)
    with torch.no_grad():
        before, _ = model(x)
        after, _ = model(torch.roll(x, 6, dims=1))
        halved, _ = model(x * torch.linspace(1.0, 0.5, 32).view(1, 1, 1, -1))
    np.testing.assert_allclose(after[:, :3].numpy(), before[:, :3].numpy(), atol=1e-5)
    assert float((halved - before)[:, :3].abs().mean()) > 1e-2  # it does read the curves


def test_the_aligner_ignores_a_flat_curve() -> None:
    """No bolus (a flat zero curve, outside the head): no mass, the curve is left where it is."""
    aligner = Aligner(anchor=16)
    x = torch.zeros(1, T, 20, 20)
    aligned, shift = aligner(x)
    assert torch.equal(aligned, x) and (shift == 0).all()


def test_shiftnet_trains_and_predicts_by_name(tmp_path: Path) -> None:
    """Registered like the others: a tiny run trains (loss falls), its weights load by name and
    give finite maps on a study."""
    root = tmp_path / "cohort"
    tiny = {"matrix": 32, "slices": 2, "frames": 30, "coverage_mm": 20.0, "motion": False}
    for i in range(2):
        study = simulate_study(PhantomConfig.draw(760 + i, "CT", **tiny))
        write_study(study, root / f"sub-{i:04d}" / "ses-01", f"sub-{i:04d}")
    jitter = {"jitter": 2.0}
    cfg = tiny_config(model="shiftnet", epochs=4, pretrain_epochs=1, batch_size=2, model_kwargs=jitter)
    run = tmp_path / "run"
    train(root, run, cfg, resume=False)
    assert torch.load(run / "weights.pt", weights_only=True)["config"]["model_kwargs"]["jitter"] == 2.0
    with (run / "fold-0" / "metrics.csv").open() as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert losses[-1] < losses[0], losses
    series = simulate_study(PhantomConfig.draw(762, "CT", **tiny)).series
    maps = predict(series, run / "weights.pt", device="cpu")
    for m in MAPS:
        assert np.isfinite(maps[m]).all() and maps[m].shape == series.spatial_shape
    again = predict(series, run / "weights.pt", device="cpu")  # the jitter is off at inference
    assert all(np.array_equal(again[m], maps[m]) for m in MAPS)


def test_fractional_alignment_leaves_no_steps_where_the_delay_changes() -> None:
    """A delay rising smoothly across the image (0 → 12 frames over 48 pixels, a lesion's rim):
    aligned by whole frames, the image at the bolus peak steps wherever the rounded shift does
    (seams whose count is the delay's change); aligned by the exact centre (``fractional``) it is
    smooth, and every column's curve is the first column's to within the interpolation's error."""
    t = torch.arange(T, dtype=torch.float64)
    delay = torch.linspace(0, 12, 48, dtype=torch.float64)
    s = ((t[:, None] - 12 - delay[None]) / 24).clamp(0, 1)
    x = (3 * torch.sin(np.pi * s**0.6) ** 2).float()[None, :, None, :].repeat(1, 1, 16, 1)
    whole, whole_shift = Aligner(sigma_px=1.0)(x)
    exact, exact_shift = Aligner(sigma_px=1.0, fractional=True)(x)
    moved = (exact_shift[0, 8] - exact_shift[0, 8, 0]).numpy()
    np.testing.assert_allclose(moved[3:-3], -delay.numpy()[3:-3], atol=0.25)  # the threshold's frames
    assert torch.equal(whole_shift, torch.round(whole_shift))
    rows = (slice(None), slice(4, 12))  # away from the top and bottom edges' padding

    def steps(aligned: torch.Tensor) -> float:
        """The largest jump between neighbouring columns, over frames and rows, in the curves' peak units."""
        return float(aligned[0][rows].diff(dim=-1).abs().amax()) / 3

    assert steps(whole) > 0.12 and steps(exact) < 0.04  # the unaligned curves' own: 0.057
    for aligned, most in ((exact, 0.05), (whole, None)):
        spread = float((aligned[0, :, 8, 3:-3] - aligned[0, :, 8, 3:4]).abs().amax()) / 3
        assert spread < most if most else spread > 0.1


def test_jitter_moves_the_alignment_in_training_only() -> None:
    """``jitter``: in training mode every sample's alignment moves by a smooth random field of
    whole frames within ± jitter (on a study of one curve: neighbouring pixels at most one frame
    apart, not all zero); in eval mode the alignment is the one without it, to the bit."""
    x = _study(14, size=48, lesion=slice(0, 0)).repeat(3, 1, 1, 1)
    plain, plain_shift = Aligner()(x)
    jittered = Aligner(jitter=4.0)
    torch.manual_seed(0)
    _, moved = jittered.train()(x)
    extra = moved - plain_shift
    assert extra.abs().max() <= 4 and extra.abs().max() >= 1 and torch.equal(extra, torch.round(extra))
    assert extra.diff(dim=-1).abs().max() <= 1 and extra.diff(dim=-2).abs().max() <= 1
    assert not torch.equal(extra[0], extra[1])  # drawn per sample
    aligned, shift = jittered.eval()(x)
    assert torch.equal(aligned, plain) and torch.equal(shift, plain_shift)
    with pytest.raises(ValueError, match="jitter"):
        Aligner(jitter=-1.0)


def test_cli_model_option_reaches_the_network_or_stops_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``perfnet train --model-option KEY=VALUE``: a malformed pair or a keyword the network does
    not take is a one-line error naming the option (exit 2) before anything is prepared."""
    from perfnet.cli import main

    base = ["train", str(tmp_path / "cohort"), "--out", str(tmp_path / "run"), "--model", "shiftnet"]
    for option, says in (("jitter", "KEY=VALUE"), ("jiter=2", "jiter"), ("jitter=-1", "jitter")):
        assert main([*base, "--model-option", option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--model-option" in err[0] and says in err[0], err
    assert not (tmp_path / "run").exists()
