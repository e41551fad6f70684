"""Signal → concentration against the phantom's noise-free truth."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.preprocess.concentration import to_concentration
from phantoms import small_study


@pytest.mark.parametrize(("seed", "modality"), [(1, "CT"), (2, "CT"), (1, "MR"), (3, "MR")])
def test_noise_free_concentration_matches_truth(seed: int, modality: str) -> None:
    study = small_study(seed, modality, noise=False, motion=False)
    series = study.series
    baseline_end = int(np.sum(series.times < study.config.arrival_s))
    conc = to_concentration(series.data, baseline_end, modality, series.echo_time)
    assert conc.dtype == np.float32 and conc.shape == series.data.shape
    brain = study.truth.masks["brain"]
    truth = study.truth.concentration[brain]
    estimate = conc[brain]
    scale = np.abs(truth).max()
    assert scale > 1.0
    np.testing.assert_array_less(np.abs(estimate - truth), 1e-3 * (np.abs(truth) + scale))


def test_ct_subtracts_the_baseline_mean() -> None:
    data = np.zeros((2, 2, 1, 5), dtype=np.float32)
    data[..., :] = [10.0, 12.0, 30.0, 50.0, 20.0]
    conc = to_concentration(data, 2, "CT")
    np.testing.assert_allclose(conc[0, 0, 0], [-1.0, 1.0, 19.0, 39.0, 9.0])


def test_mr_delta_r2_star_with_and_without_echo_time() -> None:
    te, s0 = 0.03, 800.0
    delta = np.array([0.0, 0.0, 10.0, 40.0, 5.0])
    data = np.broadcast_to(s0 * np.exp(-te * delta), (2, 1, 1, 5)).astype(np.float32).copy()
    np.testing.assert_allclose(to_concentration(data, 2, "MR", te)[0, 0, 0], delta, atol=1e-3)
    # unknown echo time: TE = 1 s, the same curve scaled by TE
    np.testing.assert_allclose(to_concentration(data, 2, "MR")[0, 0, 0], delta * te, atol=1e-5)


def test_mr_floor_and_empty_voxels() -> None:
    data = np.zeros((3, 1, 1, 4), dtype=np.float32)
    data[0] = 100.0
    data[0, 0, 0, 3] = 0.0  # signal lost: clipped at 1e-3·S0
    data[1] = -5.0  # S0 ≤ 0 (background): zero
    conc = to_concentration(data, 2, "MR", 0.05)
    assert np.isfinite(conc).all()
    np.testing.assert_allclose(conc[0, 0, 0, 3], np.log(1000.0) / 0.05, rtol=1e-5)
    assert np.all(conc[1:] == 0.0)


def test_invalid_arguments() -> None:
    data = np.ones((2, 2, 2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="4D"):
        to_concentration(data[..., 0], 1, "CT")
    with pytest.raises(ValueError, match="baseline_end"):
        to_concentration(data, 0, "CT")
    with pytest.raises(ValueError, match="baseline_end"):
        to_concentration(data, 5, "CT")
    with pytest.raises(ValueError, match="modality"):
        to_concentration(data, 1, "PET")
    with pytest.raises(ValueError, match="echo time"):
        to_concentration(data, 1, "MR", -0.01)
