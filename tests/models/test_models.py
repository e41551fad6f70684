"""Network shapes for odd sizes and the losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from perfnet.models import TemporalNet, UNet, build_model, importance_weights, laplace_nll, masked_mse


@pytest.mark.parametrize(("h", "w", "t"), [(37, 53, 11), (16, 16, 40), (5, 70, 7)])
def test_unet_keeps_any_in_plane_size(h: int, w: int, t: int) -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=t, out_channels=3, width=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, t, h, w))
    assert out.shape == (2, 3, h, w) and torch.isfinite(out).all()


def test_unet_uses_2x2_kernels_average_pooling_and_four_stages() -> None:
    model = UNet(in_channels=8, out_channels=1, width=4)
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kernels <= {(2, 2), (1, 1)} and (2, 2) in kernels
    assert isinstance(model.pool, torch.nn.AvgPool2d)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert len(model.down) == 4 and model.down[-1][0].conv.out_channels == 4 * 16


@pytest.mark.parametrize(("h", "w", "t"), [(7, 9, 23), (12, 5, 60)])
def test_temporal_net_outputs_value_and_positive_scale(h: int, w: int, t: int) -> None:
    torch.manual_seed(0)
    model = TemporalNet(out_maps=2, code=16, width=8, bolus_code=4).eval()
    x, times = torch.randn(3, t, h, w), torch.linspace(0, 1, t)
    bolus = torch.randn(3, t, 4, 6, 6)
    with torch.no_grad():
        value, scale = model(x, times, bolus)
    assert value.shape == scale.shape == (3, 2, h, w)
    assert (scale > 0).all()
    with pytest.raises(ValueError, match="bolus"):
        model(x, times)
    no_branch = TemporalNet(out_maps=1, code=8, width=4, bolus_code=0).eval()
    assert no_branch(x, times)[0].shape == (3, 1, h, w)


def test_temporal_net_codes_depend_on_the_frame_times() -> None:
    torch.manual_seed(0)
    model = TemporalNet(out_maps=1, code=8, width=4, bolus_code=0).eval()
    x = torch.randn(1, 20, 4, 4)
    with torch.no_grad():
        a = model(x, torch.linspace(0, 1, 20))[0]
        b = model(x, torch.linspace(0, 2, 20))[0]
    assert not torch.allclose(a, b)


def test_build_model_registry() -> None:
    assert isinstance(build_model("unet", in_channels=4, out_channels=1, width=2), UNet)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")


def test_masked_mse_by_hand() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[[True, False], [True, True]]]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 9 + 16) / 3)


def test_importance_weights_by_hand() -> None:
    # Tmax window [0, 40] s: a pair (50, 45) lies wholly above it, (50, 30) straddles its edge
    pred = torch.tensor([[[[50.0, 30.0, -5.0, 10.0]]]])
    target = torch.tensor([[[[45.0, 50.0, -1.0, 12.0]]]])
    w = importance_weights(pred, target, [(0.0, 40.0)])
    assert w.flatten().tolist() == pytest.approx([0.1, 1.0, 0.1, 1.0])


def test_weighted_laplace_nll_by_hand() -> None:
    pred = torch.tensor([[[[50.0, 30.0, 10.0]]]])
    target = torch.tensor([[[[45.0, 50.0, 12.0]]]])
    scale = torch.tensor([[[[2.0, 4.0, 1.0]]]])
    mask = torch.tensor([[[[True, True, False]]]])
    # per voxel log b + |p − p̂|/b; weights 0.1 (outside the window), 1, and 0 (masked out)
    terms = [math.log(2.0) + 5.0 / 2.0, math.log(4.0) + 20.0 / 4.0]
    expected = (0.1 * terms[0] + 1.0 * terms[1]) / 1.1
    got = laplace_nll(pred, scale, target, mask, windows=[(0.0, 40.0)])
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unweighted = laplace_nll(pred, scale, target, mask)
    assert unweighted.item() == pytest.approx(sum(terms) / 2, rel=1e-6)


def test_laplace_nll_is_minimised_at_b_equal_to_the_error() -> None:
    error = torch.tensor(3.0)
    scales = torch.linspace(0.5, 10, 200)
    losses = torch.log(scales) + error / scales
    assert scales[losses.argmin()].item() == pytest.approx(3.0, abs=0.05)
    pred, target = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 3.0)
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    at_3 = laplace_nll(pred, torch.full_like(pred, 3.0), target, mask)
    assert at_3.item() == pytest.approx(math.log(3.0) + 1.0)


def test_beta_nll_trains_every_value_as_l1_and_keeps_the_scale_optimum() -> None:
    """β-NLL (Seitzer et al. 2022): under Hess's NLL a voxel's value gets the gradient
    sign(error) / b, so the voxels with a large scale (hard ones: hypoperfused tissue, where the
    MR network's scales are ~7x its healthy ones) barely train; at β = 1 every value
    gets sign(error), as under L1, and the scale's optimum stays at the absolute error."""
    target = torch.tensor([[[[0.0, 0.0]]]])
    scale = torch.tensor([[[[0.1, 5.0]]]])
    mask = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    grads = {}
    for beta in (0.0, 1.0):
        pred = torch.tensor([[[[1.0, -1.0]]]], requires_grad=True)
        laplace_nll(pred, scale, target, mask, beta=beta).backward()
        grads[beta] = pred.grad.flatten().tolist()
    assert grads[0.0] == pytest.approx([1 / 0.1 / 2, -1 / 5.0 / 2])  # 50x apart
    assert grads[1.0] == pytest.approx([1 / 2, -1 / 2])  # L1: equal
    error = torch.tensor(3.0)
    scales = torch.linspace(0.5, 10, 400, requires_grad=True)
    loss = ((torch.log(scales) + error / scales) * scales.detach()).sum()
    (g,) = torch.autograd.grad(loss, scales)
    crossing = scales[:-1][(g[:-1] < 0) & (g[1:] >= 0)]
    assert crossing.item() == pytest.approx(3.0, abs=0.05)  # the scale still goes to the error


def test_temporal_dropout_is_evaluated_as_its_training_expectation() -> None:
    """The temporal network's alpha dropout (p = 0.5) scales a given activation by 0.443 on average
    in training; evaluated as the identity (nn.AlphaDropout's eval mode) the last layer saw
    activations 2.26x larger than those it was trained on. Its eval mode is now that expectation,
    the mean of many training-mode passes."""
    from perfnet.models.temporal import ExpectedAlphaDropout

    torch.manual_seed(0)
    x = torch.linspace(-3.0, 3.0, 13)
    drop = ExpectedAlphaDropout(0.5)
    sampled = drop.train()(x.repeat(100_000, 1)).mean(0)
    expected = drop.eval()(x)
    assert torch.allclose(expected, sampled, atol=0.02)
    assert expected[-1].item() == pytest.approx(0.4432 * 3.0, abs=1e-3)
    # no parameters: weights trained with nn.AlphaDropout load unchanged
    model = TemporalNet(out_maps=2, code=8, width=4, bolus_code=0)
    assert not list(drop.parameters()) and any(isinstance(m, ExpectedAlphaDropout) for m in model.modules())
