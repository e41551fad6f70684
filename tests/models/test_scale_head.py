"""The U-Net's Laplace scale head: it never changes the maps, it is fitted on a frozen backbone, and
a fitted head gives calibrated 90 % intervals on held-out data of its own distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perfnet.evaluation.metrics import interval_coverage, laplace_half_width
from perfnet.models import UNet, network_spec
from perfnet.models.losses import masked_mse
from perfnet.training.scale import ScaleSamples, collect, coverage, fit_scale_head, head_scale, temperature


def _backbone(scale_head: bool, seed: int = 0) -> UNet:
    """A random U-Net whose batch-norm statistics are set on random inputs, so that its decoder
    features are O(1) and vary with the input (as a trained network's do)."""
    torch.manual_seed(seed)
    model = UNet(in_channels=6, out_channels=2, width=8, stages=2, scale_head=scale_head)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(4, 6, 24, 24))
    return model.eval()


def test_scale_head_leaves_the_maps_bit_identical_and_old_state_dicts_load() -> None:
    plain = _backbone(False)
    headed = UNet(in_channels=6, out_channels=2, width=8, stages=2, scale_head=True).eval()
    missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("scale_head.", "scale_temperature")) for k in missing)
    x = torch.randn(3, 6, 21, 19)  # not a multiple of the stride: padded and cropped back
    with torch.no_grad():
        value, scale = network_spec("unet").forward(headed, x, torch.zeros(6), None)
        old_value, old_scale = network_spec("unet").forward(plain, x, torch.zeros(6), None)
    assert old_scale is None and scale is not None
    assert torch.equal(value, old_value) and torch.equal(value, plain(x))
    assert scale.shape == value.shape and bool((scale > 0).all())
    with torch.no_grad():  # the vector form used by the post-hoc fit is the same head
        features = headed.decode(x)[..., :21, :19]
        vectors = headed.scale_of_vectors(features.permute(0, 2, 3, 1).reshape(-1, 8))
    assert torch.allclose(vectors, scale.permute(0, 2, 3, 1).reshape(-1, 2), rtol=1e-5, atol=1e-6)


def test_joint_loss_trains_the_maps_exactly_as_mse_alone() -> None:
    """MSE(μ) + NLL(detach(μ), b): the backbone's gradients are the MSE's, bit for bit."""
    from perfnet.training.task import PerfusionTask

    kwargs = {"in_channels": 6, "out_channels": 2, "width": 4, "stages": 2, "scale_head": True}
    task = PerfusionTask(
        "unet", kwargs, ["cbf", "tmax"], {"cbf": 0.0, "tmax": 0.0}, {"cbf": 1.0, "tmax": 1.0}, list(range(6))
    )
    torch.manual_seed(1)
    batch = {
        "x": torch.randn(2, 6, 16, 16),
        "y": torch.randn(2, 2, 16, 16),
        "mask": torch.rand(2, 16, 16) > 0.3,
    }
    loss, _ = task._loss(batch)
    loss.backward()
    joint = {n: p.grad.clone() for n, p in task.model.named_parameters() if not n.startswith("scale_head")}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.scale_head.parameters())
    task.zero_grad()
    masked_mse(task.model(batch["x"]), batch["y"], batch["mask"][:, None]).backward()
    for name, grad in joint.items():
        assert torch.equal(grad, task.model.get_parameter(name).grad), name


#: Where the noise of the synthetic targets switches (about the median of the first map).
THRESHOLD = 0.27


def _noisy_study(model: UNet, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets = the backbone's flip-averaged maps + Laplace noise of known, input-dependent
    scale (1.0 where the first map is above THRESHOLD, else 0.1), brain mask (all)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 24, 24, generator=gen)
    with torch.no_grad():
        views = [(), (-1,), (-2,), (-2, -1)]
        mean = torch.stack([model(x.flip(d)).flip(d) if d else model(x) for d in views]).mean(dim=0)
    true_scale = torch.where(mean[:, :1] > THRESHOLD, 1.0, 0.1).expand_as(mean)
    u = torch.rand(mean.shape, generator=gen) - 0.5
    noise = -true_scale * torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, b) by inversion
    mask = torch.ones(4, 24, 24, dtype=torch.bool)
    return x, mean + noise, mask


def test_head_fitted_on_a_frozen_backbone_is_calibrated_on_held_out_data() -> None:
    model = _backbone(True, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("scale_")}
    train = ScaleSamples.cat(collect(model, *_noisy_study(model, s)) for s in range(4))
    history = fit_scale_head(model, train, steps=200, lr=3e-2, batch=8192)
    assert history[-1] < history[0]
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # the backbone is frozen
    x, y, mask = _noisy_study(model, 100)  # held out, same distribution
    held_out = collect(model, x, y, mask)
    cov = coverage(held_out, model)
    assert ((cov > 0.8) & (cov < 0.97)).all(), cov
    with torch.no_grad():
        b = head_scale(model, held_out.features)
    noisy = held_out.mean[:, 0] > THRESHOLD
    ratio = (b[noisy].mean() / b[~noisy].mean()).item()
    assert ratio > 2.0, (ratio, cov)  # it learned where the noise is (true ratio 10; none: 1)
    # the same coverage through the metric used on maps
    err, scale = (held_out.target - held_out.mean).numpy(), b.numpy()
    assert np.isclose(interval_coverage(np.zeros_like(err), scale, err), float(cov.mean()), atol=1e-6)


def test_temperature_puts_the_interval_at_its_level() -> None:
    rng = np.random.default_rng(0)
    b_true = rng.uniform(0.5, 2.0, 50000)
    err = rng.laplace(0.0, b_true)
    assert abs(temperature(err, b_true) - 1.0) < 0.03  # calibrated scale: T ≈ 1
    t = temperature(err, b_true / 2.5)  # a scale 2.5× too small
    assert abs(t - 2.5) < 0.08
    inside = np.mean(np.abs(err) <= t * (b_true / 2.5) * laplace_half_width(0.9))
    assert abs(inside - 0.9) < 1e-3


def test_fit_scale_head_tool_reads_its_cache_back_in_single_precision(tmp_path) -> None:
    """tools/fit_scale_head.py caches each fit study's features in half precision; a rerun read
    them back as half and the head's linear layers (single precision) refused them."""
    from tool_modules import load_tool

    tool = load_tool("fit_scale_head")
    features = torch.randn(5, 4, 16)
    cached = {"features": features.half(), "mean": torch.zeros(5, 2), "target": torch.ones(5, 2)}
    torch.save(cached, tmp_path / "fit-123-5.pt")
    samples = tool.fit_samples(None, {}, [123], 5, tmp_path)
    assert samples.features.dtype == torch.float32
    torch.testing.assert_close(samples.features, features.half().float())


def test_fit_scale_head_calibrates_a_motion_specialist_on_moving_studies(monkeypatch) -> None:
    """``--calibration-motion`` (the recipe of ``ct-moving.pt``): the calibration studies are
    drawn with head motion forced on, the rest of each draw unchanged."""
    from perfnet.phantom import styles
    from tool_modules import load_tool

    tool = load_tool("fit_scale_head")
    drawn = []

    def stop(cfg, *args, **kwargs):
        drawn.append(cfg)
        raise RuntimeError("drawn")

    monkeypatch.setattr(styles, "simulate", stop)
    for motion in (True, None):
        with pytest.raises(RuntimeError, match="drawn"):
            tool.written_errors(Path("unused.pt"), [tool.CALIBRATION_SEED], motion=motion)
    assert drawn[0].motion is True and drawn[0].seed == drawn[1].seed
    assert drawn[0].motion_translation_mm == drawn[1].motion_translation_mm
