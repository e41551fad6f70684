"""Joint bilateral filter and temporal smoothing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from perfnet.phantom.anatomy import GREY_MATTER, WHITE_MATTER
from perfnet.preprocess.concentration import to_concentration
from perfnet.preprocess.filters import bilateral_filter, temporal_kernel, temporal_smooth
from phantoms import small_study


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bilateral_filter_halves_noise_and_keeps_grey_white_contrast(seed: int) -> None:
    noisy = small_study(seed, "CT", motion=False)
    clean = small_study(seed, "CT", noise=False, motion=False).series.data
    data, labels = noisy.series.data, noisy.anatomy.labels
    # range σ 5 HU: grey and white matter differ by only ~10 HU in the temporal-mean guide; with the
    # default 20 HU the filter blurs the cortex into the white matter (contrast −30…−60 % here)
    filtered = bilateral_filter(data, data.mean(axis=3), noisy.series.voxel_size, 3.0, range_sigma=5.0)
    assert filtered.dtype == np.float32 and filtered.shape == data.shape
    white = ndimage.binary_erosion(labels == WHITE_MATTER, iterations=2)
    noise_before = np.std((data - clean)[white])
    noise_after = np.std((filtered - clean)[white])
    assert noise_after < noise_before / 2.0

    baseline_end = int(np.sum(noisy.series.times < noisy.config.arrival_s))
    brain_curve = to_concentration(clean, baseline_end, "CT")[noisy.truth.masks["brain"]].mean(axis=0)
    peak = int(np.argmax(brain_curve))
    frames = slice(max(peak - 2, 0), peak + 3)

    def contrast(frames4d: np.ndarray) -> float:
        conc = to_concentration(frames4d, baseline_end, "CT")[..., frames]
        return float(conc[labels == GREY_MATTER].mean() - conc[labels == WHITE_MATTER].mean())

    assert contrast(filtered) == pytest.approx(contrast(data), rel=0.15)


def test_default_filter_reduces_noise() -> None:
    noisy = small_study(1, "CT", motion=False)
    clean = small_study(1, "CT", noise=False, motion=False).series.data
    data = noisy.series.data
    filtered = bilateral_filter(data, data.mean(axis=3), noisy.series.voxel_size)
    white = ndimage.binary_erosion(noisy.anatomy.labels == WHITE_MATTER, iterations=2)
    assert np.std((filtered - clean)[white]) < np.std((data - clean)[white]) / 2.0


def test_step_edge_in_the_guide_is_not_blurred() -> None:
    guide = np.zeros((40, 30, 3), dtype=np.float32)
    guide[20:] = 100.0
    rng = np.random.default_rng(1)
    data = guide[..., None] + rng.normal(0, 5, (40, 30, 3, 4)).astype(np.float32)
    out = bilateral_filter(data, guide, (0.5, 0.5, 5.0), spatial_sigma_mm=3.0, range_sigma=20.0)
    # the columns next to the edge keep their side's level, their noise is reduced
    assert abs(out[19, 5:25].mean()) < 1.0 and abs(out[20, 5:25].mean() - 100.0) < 1.0
    assert out[5:15].std() < 5.0 / 3.0
    # a plain Gaussian would mix the two sides over ~3 mm
    blurred = ndimage.gaussian_filter1d(data, 6.0, axis=0)
    assert blurred[19, 5:25].mean() > 20.0


def test_constant_stays_constant_and_frames_are_filtered_alike() -> None:
    rng = np.random.default_rng(2)
    guide = rng.normal(30, 10, (12, 10, 4)).astype(np.float32)
    constant = np.full((12, 10, 4, 3), 7.5, dtype=np.float32)
    np.testing.assert_allclose(bilateral_filter(constant, guide, (1.0, 1.0, 2.0)), 7.5, rtol=1e-5)
    a = rng.normal(0, 1, (12, 10, 4, 1)).astype(np.float32)
    b = rng.normal(0, 1, (12, 10, 4, 1)).astype(np.float32)
    both = bilateral_filter(np.concatenate([a, b, 2 * a - b], axis=3), guide, (1.0, 1.0, 2.0))
    np.testing.assert_allclose(both[..., 2], 2 * both[..., 0] - both[..., 1], atol=1e-4)


def test_voxels_outside_the_mask_are_untouched_and_ignored() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(0, 1, (16, 16, 2, 2)).astype(np.float32)
    mask = np.zeros((16, 16, 2), dtype=bool)
    mask[4:12, 4:12] = True
    guide = np.zeros((16, 16, 2), dtype=np.float32)
    out = bilateral_filter(data, guide, (1.0, 1.0, 1.0), mask=mask)
    np.testing.assert_array_equal(out[~mask], data[~mask])
    loud = data.copy()
    loud[~mask] = 1e6
    np.testing.assert_allclose(bilateral_filter(loud, guide, (1.0, 1.0, 1.0), mask=mask)[mask], out[mask])


def test_bilateral_invalid_inputs() -> None:
    data = np.zeros((4, 4, 2, 3), dtype=np.float32)
    guide = np.zeros((4, 4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="4D"):
        bilateral_filter(guide, guide, (1, 1, 1))
    with pytest.raises(ValueError, match="guide shape"):
        bilateral_filter(data, guide[:3], (1, 1, 1))
    with pytest.raises(ValueError, match="mask shape"):
        bilateral_filter(data, guide, (1, 1, 1), mask=np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="voxel_size"):
        bilateral_filter(data, guide, (1, 1))
    with pytest.raises(ValueError, match="positive"):
        bilateral_filter(data, guide, (1, 1, 1), range_sigma=0.0)


def _nonuniform_times() -> np.ndarray:
    return np.r_[np.arange(0.0, 30.0, 1.0), np.arange(30.0, 80.0, 2.5)]


def test_temporal_smooth_preserves_the_integral_of_a_bolus() -> None:
    times = _nonuniform_times()
    s = np.clip(times - 8.0, 0, None)
    curve = 40.0 * (s / 6.0) ** 3 * np.exp(3.0 - s / 2.0)
    smoothed = temporal_smooth(curve[None, None, None, :], times, 2.0)[0, 0, 0]
    assert np.trapezoid(smoothed, times) == pytest.approx(np.trapezoid(curve, times), rel=0.01)
    assert smoothed.max() < curve.max()


def test_temporal_smooth_reduces_white_noise_and_keeps_constants() -> None:
    times = _nonuniform_times()
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 1, (20, 20, 2, times.size)).astype(np.float32)
    smoothed = temporal_smooth(noise, times, 2.0)
    assert smoothed.shape == noise.shape and smoothed.dtype == np.float32
    assert smoothed.std() < 0.6 * noise.std()
    np.testing.assert_allclose(temporal_smooth(np.full((2, times.size), 3.0), times, 1.5), 3.0, rtol=1e-6)
    kernel = temporal_kernel(times, 2.0)
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0)
    # a straight line is kept away from the ends (to the quadrature's accuracy), although the
    # sampling interval changes from 1 to 2.5 s: a plain row-normalised kernel would bend it
    line = temporal_smooth(times[None], times, 2.0)[0]
    np.testing.assert_allclose(line[6:-6], times[6:-6], atol=0.15)
    plain = np.exp(-((times[:, None] - times[None, :]) ** 2) / 8.0)
    plain /= plain.sum(axis=1, keepdims=True)
    assert np.abs(plain @ times - times)[6:-6].max() > 0.3


def test_temporal_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="frame times"):
        temporal_smooth(np.zeros((2, 5)), np.arange(4.0), 1.0)
    with pytest.raises(ValueError, match="increasing"):
        temporal_kernel(np.array([0.0, 1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        temporal_kernel(np.arange(3.0), 0.0)
