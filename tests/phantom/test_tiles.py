"""Kudo-style tile phantom: layout and truth."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.constants import HEMATOCRIT_FACTOR, TISSUE_DENSITY
from perfnet.phantom.tiles import TILE_CBV, TILE_DELAYS, TILE_MTT, cumulative_tile_residue, tile_phantom


@pytest.fixture(scope="module")
def phantom():
    return tile_phantom(tile=2, residues=("exponential", "gamma"))


def test_layout_and_truth_grid(phantom) -> None:
    n = len(TILE_CBV) * len(TILE_MTT) * len(TILE_DELAYS)
    assert phantom.cbv.shape == (2 * n,)
    assert phantom.series.data.shape == (35 * 2, 8 * 2, 2, 80)
    assert np.allclose(phantom.series.times, np.arange(80.0))
    assert sorted(set(np.round(phantom.mtt, 2))) == [3.43, 4.0, 4.8, 6.0, 8.0, 12.0, 24.0]
    assert sorted(set(phantom.delay)) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    np.testing.assert_allclose(phantom.cbf, 60.0 * phantom.cbv / phantom.mtt)
    assert phantom.cbf.min() == pytest.approx(2.5) and phantom.cbf.max() == pytest.approx(87.5)
    # every tile has tile² voxels, the AIF tile sits outside the tissue tiles
    assert np.all(np.bincount(phantom.tile_index[phantom.tile_index >= 0]) == 4)
    assert not (phantom.aif_mask & phantom.brain_mask).any()
    aif_voxels = phantom.series.data[phantom.aif_mask] - 40.0
    np.testing.assert_allclose(aif_voxels, np.broadcast_to(phantom.aif, aif_voxels.shape), atol=1e-3)
    assert phantom.aif.max() == pytest.approx(400.0, rel=0.02)


def test_tissue_area_gives_cbv_and_delay_shifts_the_curve(phantom) -> None:
    times = phantom.series.times
    ratio = np.trapezoid(phantom.curves, times, axis=1) / np.trapezoid(phantom.aif, times)
    cbv = 100.0 * (HEMATOCRIT_FACTOR / TISSUE_DENSITY) * ratio
    # the AIF's steady state (5 % of its peak) lasts past the last frame, so every tissue curve
    # misses a little of its tail at 79 s: 1–2.5 % at MTT 3.4 s, up to 15 % at MTT 24 s
    short = phantom.mtt <= 8.0
    np.testing.assert_allclose(cbv[short], phantom.cbv[short], rtol=0.05)
    assert np.all(cbv <= phantom.cbv) and np.all(cbv >= 0.85 * phantom.cbv)
    # a tile's curve is 0 until the AIF's arrival plus its delay
    arrival = 5.0
    for k in (0, 6, 20):
        first = np.flatnonzero(phantom.curves[k] > 1e-6)[0]
        assert times[first - 1] <= arrival + phantom.delay[k] <= times[first]
    # tiles in one row differ only by their delay
    np.testing.assert_allclose(phantom.curves[3, 10:60], phantom.curves[1, 9:59], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["exponential", "gamma", "box", "linear"])
def test_residues_integrate_to_mtt(family: str) -> None:
    mtt = np.array([3.4, 12.0])
    t = np.array([0.0, 1e-3, 400.0])
    cumulative = cumulative_tile_residue(family, t[None, :], mtt[:, None])
    np.testing.assert_allclose(cumulative[:, 0], 0.0)
    np.testing.assert_allclose(cumulative[:, 1], 1e-3, rtol=1e-2)  # R(0) = 1
    np.testing.assert_allclose(cumulative[:, 2], mtt, rtol=1e-6)  # ∫R = MTT


def test_noise_is_reproducible() -> None:
    a = tile_phantom(tile=1, residues=("box",), noise_hu=10.0, seed=4).series.data
    b = tile_phantom(tile=1, residues=("box",), noise_hu=10.0, seed=4).series.data
    clean = tile_phantom(tile=1, residues=("box",)).series.data
    np.testing.assert_array_equal(a, b)
    assert np.std(a - clean) == pytest.approx(10.0, rel=0.02)
