"""Box-NLR (Bennink 2016): recovery of box residues, convergence on noisy curves, bounds."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from perfnet.conventional.boxnlr import _box_shape, _CumulativeAif, boxnlr_fit
from perfnet.conventional.deconvolution import deconvolve

FINE_DT = 0.001  # s
FLOW = 0.01  # 1/s


def gamma_variate(t: np.ndarray, t0: float = 4.0, alpha: float = 3.0, beta: float = 1.5) -> np.ndarray:
    """AIF shape: peak 1 at t0 + αβ, FWHM ≈ 6 s (Thompson 1964)."""
    s = np.clip(t - t0, 0.0, None)
    return (s / (alpha * beta)) ** alpha * np.exp(alpha - s / beta)


def box_tissue(times: np.ndarray, aif_fine: np.ndarray, mtt: float, delay: float, flow: float = FLOW):
    """C_t(t) = F·∫_{t−d−MTT}^{t−d} C_a, by convolution on the 1 ms grid of ``aif_fine``."""
    fine = np.arange(aif_fine.size) * FINE_DT
    curve = fftconvolve(aif_fine, (fine < mtt).astype(float))[: fine.size] * FINE_DT * flow
    return np.interp(times - delay, fine, curve, left=0.0)


BOXES = [(mtt, delay) for mtt in (2.0, 3.0, 5.0, 8.0, 12.0) for delay in (0.0, 0.7, 1.5, 3.0, 4.2)]


def test_exact_model_recovers_box_parameters():
    """With an AIF linear between frames (the model's own assumption) the fit is exact."""
    times = np.arange(60) * 1.0
    aif = gamma_variate(times)
    aif_fine = np.interp(np.arange(0.0, 61.0, FINE_DT), times, aif)
    curves = np.array([box_tissue(times, aif_fine, m, d) for m, d in BOXES])
    fit = boxnlr_fit(curves, aif, 1.0)
    truth = np.array(BOXES)
    np.testing.assert_allclose(fit.flow, FLOW, rtol=0.01)
    np.testing.assert_allclose(fit.mtt, truth[:, 0], rtol=0.01)
    np.testing.assert_allclose(fit.delay, truth[:, 1], atol=0.02)
    assert np.all(fit.residual <= fit.grid_residual)


def test_smooth_aif_recovers_box_parameters_within_5_percent():
    """A gamma-variate AIF sampled every 0.5 s: the model's linear interpolation is close enough."""
    dt = 0.5
    times = np.arange(120) * dt
    aif_fine = gamma_variate(np.arange(0.0, 61.0, FINE_DT))
    rows = [(m, d) for m, d in BOXES if m >= 3.0]
    curves = np.array([box_tissue(times, aif_fine, m, d) for m, d in rows])
    result = deconvolve(curves, gamma_variate(times), dt, "boxnlr")
    truth = np.array(rows)
    np.testing.assert_allclose(result.flow, FLOW, rtol=0.05)
    np.testing.assert_allclose(result.mtt, truth[:, 0], rtol=0.05)
    np.testing.assert_allclose(result.delay, truth[:, 1], atol=0.1)
    np.testing.assert_array_equal(result.tmax, result.delay)  # the box is maximal from its start


@pytest.fixture(scope="module")
def noisy():
    rng = np.random.default_rng(11)
    times = np.arange(60) * 1.0
    aif = gamma_variate(times)
    aif_fine = gamma_variate(np.arange(0.0, 61.0, FINE_DT))
    n = 300
    mtt, delay = rng.uniform(2.0, 12.0, n), rng.uniform(0.0, 6.0, n)
    clean = np.array([box_tissue(times, aif_fine, m, d) for m, d in zip(mtt, delay, strict=True)])
    snr = rng.uniform(20.0, 50.0, n)  # noise SD = peak / SNR
    curves = clean + rng.normal(0.0, 1.0, clean.shape) * (clean.max(axis=1) / snr)[:, None]
    return SimpleNamespace(times=times, aif=aif, curves=curves, mtt=mtt, delay=delay)


def test_noisy_fits_converge_within_bounds(noisy):
    fit = boxnlr_fit(noisy.curves, noisy.aif, 1.0, max_delay=10.0, mtt_range=(0.5, 20.0))
    assert np.all(fit.residual <= fit.grid_residual)
    assert np.median(fit.residual / fit.grid_residual) < 0.98  # LM improves on the grid start
    assert np.all(fit.iterations > 0)
    assert np.all(fit.flow >= 0)
    assert np.all((fit.delay >= 0) & (fit.delay <= 10.0))
    assert np.all((fit.mtt >= 0.5 - 1e-6) & (fit.mtt <= 20.0 + 1e-5))
    np.testing.assert_allclose(np.median(fit.flow), FLOW, rtol=0.1)
    assert np.median(np.abs(fit.delay - noisy.delay)) < 0.5
    np.testing.assert_allclose(np.median(fit.mtt / noisy.mtt), 1.0, atol=0.1)


def test_noisy_fits_reach_the_global_least_squares_minimum(noisy):
    """LM from the coarse grid ends at (or below) the best residual of a 0.05 s brute-force grid."""
    times, curves = noisy.times, noisy.curves[:60]
    fit = boxnlr_fit(curves, noisy.aif, 1.0, max_delay=10.0, mtt_range=(0.5, 20.0))
    model = _CumulativeAif(noisy.aif, 1.0, torch.device("cpu"), torch.float64)
    d, m = np.meshgrid(np.arange(0.0, 10.0001, 0.05), np.arange(0.5, 20.0001, 0.05), indexing="ij")
    shape, _, _ = _box_shape(
        model, torch.as_tensor(times), torch.as_tensor(d.ravel()), torch.as_tensor(m.ravel())
    )
    g = shape.numpy()
    gg = (g * g).sum(axis=1)
    projection = np.clip(curves @ g.T, 0.0, None) ** 2 / gg
    brute = np.sqrt(((curves**2).sum(axis=1) - projection.max(axis=1)) / times.size)
    assert np.all(fit.residual <= brute * 1.001 + 1e-9), np.max(fit.residual / brute)


def test_no_iterations_returns_the_grid_start(noisy):
    fit = boxnlr_fit(noisy.curves[:20], noisy.aif, 1.0, iterations=0)
    np.testing.assert_array_equal(fit.residual, fit.grid_residual)
    np.testing.assert_array_equal(fit.iterations, 0)


def test_bounds_are_clipped_to_the_acquisition_and_empty_curves_give_zero_flow():
    times = np.arange(12) * 1.0
    aif = gamma_variate(times, t0=1.0, beta=1.0)
    curves = np.stack((np.zeros(12), -np.ones(12), 0.01 * aif))
    fit = boxnlr_fit(curves, aif, 1.0, max_delay=50.0, mtt_range=(0.5, 100.0))
    assert np.all(fit.delay <= 11.0) and np.all(fit.mtt <= 11.0)
    np.testing.assert_array_equal(fit.flow[:2], 0.0)
    assert np.all(np.isfinite(fit.residual))


def test_bad_arguments_raise_value_error():
    aif = np.ones(10)
    with pytest.raises(ValueError):
        boxnlr_fit(np.zeros((3, 9)), aif, 1.0)
    with pytest.raises(ValueError):
        boxnlr_fit(np.zeros((3, 10)), aif, -1.0)
    with pytest.raises(ValueError):
        boxnlr_fit(np.zeros((3, 10)), aif, 1.0, mtt_range=(5.0, 1.0))
    with pytest.raises(TypeError):
        deconvolve(np.zeros((3, 10)), aif, 1.0, "boxnlr", no_such_option=1)


def test_200k_voxels_in_one_call(noisy):
    rng = np.random.default_rng(2)
    batch = noisy.curves.astype(np.float32)[rng.integers(0, noisy.curves.shape[0], 200_000)]
    started = time.perf_counter()
    result = deconvolve(batch, noisy.aif, 1.0, "boxnlr")
    print(f"box-NLR 200 000 × 60: {time.perf_counter() - started:.2f} s")
    assert result.flow.shape == (200_000,) and np.all(np.isfinite(result.flow))
    assert np.all(result.extra["residual"] <= result.extra["grid_residual"])
