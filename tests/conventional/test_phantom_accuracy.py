"""Deconvolution methods against the phantom's truth.

Noise-free: no regularisation is needed, so the SVD family runs with the classic discretisation
(rectangle rule, Østergaard 1996 / Wu 2003) and minimal truncation, on the exponential residue;
box-NLR on the box residue its model describes. The regularised defaults are judged on noisy
studies (Tmax > 6 s segmentation) and end to end in test_pipeline.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

from perfnet.conventional.deconvolution import deconvolve
from perfnet.conventional.maps import cbf_from_flow, cbv_from_areas
from perfnet.phantom import PhantomConfig, PhantomStudy, simulate_study

NOISE_FREE_OPTIONS = {
    "ssvd": {"threshold": 0.005, "quadrature": "rectangle"},
    "csvd": {"threshold": 0.001, "quadrature": "rectangle"},
    "osvd": {"quadrature": "rectangle"},
    "tikhonov": {"mu": 0.001, "quadrature": "rectangle"},
    "boxnlr": {},
}


@functools.lru_cache(maxsize=4)
def noise_free_study(residue: str) -> PhantomStudy:
    cfg = PhantomConfig.draw(
        3, "CT", matrix=80, slices=4, coverage_mm=48, residue=residue, baseline_delay_s=0.0,
        baseline_dispersion_s=0.0, lesion_dispersion_s=0.0, frames=90, frame_interval_s=1.0,
        timing="uniform", motion=False, lesion="penumbra", lesion_radius_mm=45.0, lesion_delay_s=4.0,
        arrival_s=5.0, steady_state_fraction=0.0, aif_fwhm_s=5.0,
    )  # fmt: skip
    return simulate_study(cfg, noise=False)


@functools.lru_cache(maxsize=8)
def _noise_free_errors(method: str) -> dict[str, np.ndarray]:
    study = noise_free_study("box" if method == "boxnlr" else "exponential")
    return _evaluate(study, method, **NOISE_FREE_OPTIONS[method])


def _evaluate(study: PhantomStudy, method: str, **options) -> dict[str, np.ndarray]:
    truth, anatomy = study.truth, study.anatomy
    clean = truth.masks["brain"] & (anatomy.artery_pv == 0) & (anatomy.vein_pv == 0)
    curves, times = truth.concentration[clean], truth.times
    result = deconvolve(curves, truth.aif, float(times[1] - times[0]), method=method, **options)
    cbf = cbf_from_flow(result.flow)
    if result.mtt is not None:
        cbv = cbf * result.mtt / 60.0
    else:
        cbv = cbv_from_areas(np.trapezoid(curves, times, axis=1), float(np.trapezoid(truth.aif, times)))
    true_tmax = truth.maps["tmax"][clean]
    return {
        "cbf": cbf / truth.maps["cbf"][clean] - 1.0,
        "cbv": cbv / truth.maps["cbv"][clean] - 1.0,
        "tmax": result.tmax - true_tmax,
        "undelayed": true_tmax < 0.05,
        "delayed": true_tmax > 1.5,
    }


@pytest.mark.parametrize("method", ["ssvd", "csvd", "osvd", "tikhonov", "boxnlr"])
def test_noise_free_undelayed_tissue(method: str) -> None:
    err = _noise_free_errors(method)
    sel = err["undelayed"]
    assert sel.sum() > 1000
    assert abs(np.median(err["cbf"][sel])) < 0.10
    assert abs(np.median(err["cbv"][sel])) < 0.10
    assert np.median(np.abs(err["tmax"][sel])) <= 0.5  # half a frame


@pytest.mark.parametrize("method", ["csvd", "osvd", "boxnlr"])
def test_noise_free_delayed_tissue(method: str) -> None:
    err = _noise_free_errors(method)
    sel = err["delayed"]
    assert sel.sum() > 500
    assert abs(np.median(err["cbf"][sel])) < 0.10
    assert abs(np.median(err["cbv"][sel])) < 0.10
    assert np.median(np.abs(err["tmax"][sel])) <= 0.5


def test_ssvd_is_delay_sensitive_on_the_phantom() -> None:
    """sSVD's CBF falls in delayed tissue where the circulant methods hold (same settings)."""
    err_s = _evaluate(noise_free_study("exponential"), "ssvd", threshold=0.2)
    err_c = _evaluate(noise_free_study("exponential"), "csvd", threshold=0.2)
    delayed, undelayed = err_s["delayed"], err_s["undelayed"]
    drop_s = np.median(err_s["cbf"][delayed]) - np.median(err_s["cbf"][undelayed])
    drop_c = np.median(err_c["cbf"][delayed]) - np.median(err_c["cbf"][undelayed])
    assert drop_s < drop_c


@functools.lru_cache(maxsize=1)
def noisy_curves() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lightly smoothed noisy tissue curves, the true AIF and the true Tmax of clean voxels."""
    cfg = PhantomConfig.draw(
        4, "CT", matrix=96, slices=4, coverage_mm=48, frames=80, frame_interval_s=1.0, timing="uniform",
        motion=False, lesion="core", lesion_radius_mm=45.0, noise_sd=10.0,
    )  # fmt: skip
    study = simulate_study(cfg)
    truth, anatomy = study.truth, study.anatomy
    clean = truth.masks["brain"] & (anatomy.artery_pv == 0) & (anatomy.vein_pv == 0)
    data = study.series.data
    n_base = int(np.searchsorted(truth.times, cfg.arrival_s))
    conc = ndimage.gaussian_filter(data - data[..., :n_base].mean(-1, keepdims=True), sigma=(1.5, 1.5, 0, 0))
    return conc[clean], truth.aif, truth.maps["tmax"][clean]


@pytest.mark.parametrize("method", ["ssvd", "csvd", "osvd", "tikhonov", "boxnlr"])
def test_noisy_defaults_segment_hypoperfusion(method: str) -> None:
    """Default settings on noisy (lightly smoothed) curves: Tmax > 6 s agrees with the truth."""
    curves, aif, true_tmax = noisy_curves()
    result = deconvolve(curves, aif, 1.0, method=method)
    est, ref = result.tmax > 6.0, true_tmax > 6.0
    dice = 2 * (est & ref).sum() / (est.sum() + ref.sum())
    assert ref.sum() > 300 and dice > 0.8
