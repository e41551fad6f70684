"""The phantom's truth is self-consistent and its curves obey the indicator-dilution theory."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.constants import HEMATOCRIT_FACTOR, TISSUE_DENSITY
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.physiology import FINE_DT, build_curve_table, dispersion_weights
from phantoms import small_study


@pytest.mark.parametrize(("seed", "modality"), [(1, "CT"), (2, "MR"), (3, "CT"), (4, "MR")])
def test_cbv_equals_cbf_times_mtt(seed: int, modality: str) -> None:
    study = small_study(seed, modality)
    brain = study.truth.masks["brain"]
    maps = study.truth.maps
    assert brain.sum() > 1000
    expected = maps["cbf"][brain] * maps["mtt"][brain] / 60.0
    np.testing.assert_allclose(maps["cbv"][brain], expected, rtol=0.01)
    # plausible physiology in healthy tissue: grey ≈ 45–75, white ≈ 18–30 mL/100 g/min
    assert 10 < np.median(maps["cbf"][brain]) < 80
    assert 1.0 < np.median(maps["cbv"][brain]) < 6.0


def _clean_concentration(study) -> np.ndarray:
    """Concentration recovered from the noise-free signal itself (CT: HU − baseline; MR: ΔR2*)."""
    data = study.series.data
    if study.series.modality == "CT":
        return data - data[..., :1]
    return -np.log(np.maximum(data, 1e-6) / np.maximum(data[..., :1], 1e-6)) / study.series.echo_time


@pytest.mark.parametrize("residue", ["exponential", "box", "gamma", "lognormal"])
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_area_ratio_reproduces_cbv(residue: str, modality: str) -> None:
    """∫C_t / ∫C_a = (CBV/100)·ρ/kH on a noise-free study long enough for the whole bolus."""
    cfg = PhantomConfig.draw(
        11,
        modality,
        matrix=64,
        slices=4,
        coverage_mm=40.0,
        residue=residue,
        frames=90,
        frame_interval_s=2.0,
        timing="uniform",
        arrival_s=4.0,
        steady_state_fraction=0.0,
        motion=False,
        lesion="core",
        lesion_delay_s=8.0,
    )
    study = simulate_study(cfg, noise=False)
    truth = study.truth
    # voxels without vessel partial volume (those carry arterial/venous blood on top of tissue)
    clean = truth.masks["brain"] & (study.anatomy.artery_pv == 0) & (study.anatomy.vein_pv == 0)
    assert clean.sum() > 500 and truth.maps["tmax"][clean].max() > 6
    conc = _clean_concentration(study)[clean]
    ratio = np.trapezoid(conc, truth.times, axis=1) / np.trapezoid(truth.aif, truth.times)
    expected = truth.maps["cbv"][clean] / 100.0 * TISSUE_DENSITY / HEMATOCRIT_FACTOR
    np.testing.assert_allclose(ratio, expected, rtol=0.01)


def test_truth_masks_follow_definitions() -> None:
    for seed in range(20, 26):
        truth = small_study(seed, "CT", noise=False).truth
        brain, core, hypo, pen = (truth.masks[k] for k in ("brain", "core", "hypoperfused", "penumbra"))
        assert not (core & ~hypo).any()
        assert np.array_equal(pen, hypo & ~core)
        assert np.array_equal(hypo, brain & (truth.maps["tmax"] > 6.0))
        assert (truth.maps["cbf"][~brain] == 0).all()


def test_lesion_kinds_produce_their_regions() -> None:
    core = small_study(30, "CT", noise=False, lesion="core", lesion_radius_mm=40.0, territory="MCA").truth
    assert core.masks["core"].sum() > 0 and core.masks["penumbra"].sum() > 0
    none = small_study(30, "CT", noise=False, lesion="none").truth
    assert none.masks["hypoperfused"].sum() == 0
    pen = small_study(31, "CT", noise=False, lesion="penumbra", lesion_radius_mm=40.0).truth
    assert pen.masks["core"].sum() == 0 and pen.masks["penumbra"].sum() > 0


def test_lesion_in_requested_hemisphere() -> None:
    for hemisphere, sign in (("left", -1), ("right", 1)):
        study = small_study(
            32, "CT", noise=False, lesion="core", hemisphere=hemisphere, lesion_radius_mm=35.0
        )
        hypo = study.truth.masks["hypoperfused"].ravel()
        x_head = study.anatomy.grid.points[0][hypo]
        assert hypo.sum() > 0 and np.all(np.sign(x_head) == sign)


def test_tmax_truth_is_argmax_of_effective_residue() -> None:
    """Exponential residue with exponential dispersion: the peak of D_β ⊗ R is analytic."""
    aif = np.zeros(2000)
    aif[10] = 1.0
    mtt = np.array([4.0, 6.0, 3.0, 5.0])
    beta = np.array([0.0, 1.0, 2.0, 0.5])
    table = build_curve_table(aif, "exponential", 0.0, mtt, beta)
    expected = np.where(beta > 0, np.log(mtt / np.maximum(beta, 1e-9)) * beta * mtt / (mtt - beta), 0.0)
    np.testing.assert_allclose(table.tmax, expected, atol=FINE_DT)


def test_a_gamma_dispersion_kernel_moves_tmax_not_the_curve() -> None:
    """``dispersion_shape`` k: a gamma kernel of the same mean β (rows sum to 1, mean β); at k = 1
    the exponential kernel bit for bit. Tmax (the effective residue's argmax) depends on the
    kernel's shape while the tissue curve hardly does: for an exponential residue (MTT 6 s) behind a
    Gaussian arterial bolus of 5 s FWHM, β = 0.3 s, k 1 → 6 moves the true Tmax from 0.90 to 0.61 s and the
    curve's peak by < 0.02 s. A simulator's truth convention that the curves do not settle."""
    n = 2000
    t = np.arange(n) * FINE_DT
    beta = np.array([0.0, 0.3, 2.0])
    np.testing.assert_array_equal(dispersion_weights(beta, n, 1.0), dispersion_weights(beta, n))
    for k in (1.0, 2.5, 6.0):
        w = dispersion_weights(beta, n, k)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
        np.testing.assert_allclose((w * t).sum(axis=1), beta, atol=0.01)
    aif = np.exp(-(((t - 10.0) / 3.0) ** 2))
    tmax, peak = [], []
    for k in (1.0, 2.0, 3.0, 6.0):
        table = build_curve_table(
            aif, "exponential", 0.0, np.array([6.0]), np.array([0.3]), dispersion_shape=k
        )
        tmax.append(float(table.tmax[0]))
        peak.append(float(table.peak_time[0]))
    assert abs(tmax[0] - 0.90) < 0.03 and abs(tmax[-1] - 0.61) < 0.03
    assert all(np.diff(tmax) < 0)  # the later the kernel's mode, the earlier this argmax
    assert max(peak) - min(peak) < 0.02


def test_a_wide_dispersion_study_keeps_its_truth_definitions() -> None:
    """A study drawn with ``wide_dispersion``: Tmax = delay + the argmax of its own kernel's
    effective residue; the healthy tissue's Tmax differs from the exponential kernel's, CBF, CBV
    and MTT do not."""
    cfg = PhantomConfig.draw(31, "CT", wide_dispersion=True, matrix=64, slices=3, coverage_mm=30.0)
    cfg = cfg.replace(dispersion_shape=4.0, residue="exponential", baseline_dispersion_s=0.5)
    wide, plain = (
        simulate_study(cfg, noise=False),
        simulate_study(cfg.replace(dispersion_shape=1.0), noise=False),
    )
    for name in ("cbf", "cbv", "mtt"):
        np.testing.assert_array_equal(wide.truth.maps[name], plain.truth.maps[name])
    brain = wide.truth.masks["brain"] & ~wide.truth.masks["hypoperfused"]
    shift = np.median(wide.truth.maps["tmax"][brain] - plain.truth.maps["tmax"][brain])
    assert -0.6 < shift < -0.1, shift  # shape 4 at β ≈ 0.35–0.8 s: an earlier argmax


def test_a_narrow_transit_time_distribution_peaks_its_effective_residue_later() -> None:
    """The truth Tmax of a gamma residue (``wide_residue`` draws shapes up to 16) is the argmax of
    the dispersed residue: near the delay for a broad distribution, later for a narrow one, whose
    residue stays near 1 for a good part of the MTT; the tissue curve's peak moves far less."""
    t = np.arange(1600) * 0.1
    aif = np.exp(-0.5 * ((t - 20.0) / (5.0 / 2.3548)) ** 2)
    tmax, peak = [], []
    for shape in (1.5, 4.0, 16.0):
        table = build_curve_table(aif, "gamma", shape, np.array([5.0]), np.array([0.3]))
        tmax.append(float(table.tmax[0]))
        peak.append(float(table.peak_time[0]))
    assert tmax[0] < 1.0 < tmax[1] < tmax[2], tmax
    assert tmax[2] - tmax[0] > 2 * (peak[2] - peak[0]) > 0, (tmax, peak)


def test_aif_shape() -> None:
    study = small_study(5, "CT", noise=False)
    cfg, aif, times = study.config, study.truth.aif, study.truth.times
    assert aif.max() == pytest.approx(cfg.aif_peak, rel=0.03)
    assert np.all(aif[times < cfg.arrival_s - 1e-6] == 0)
    assert times[np.argmax(aif)] > cfg.arrival_s
    # the venous output comes later and has the same area (no partial volume in the truth)
    vof = study.truth.vof
    assert times[np.argmax(vof)] > times[np.argmax(aif)]


def test_a_lesion_delay_drawn_apart_from_its_flow() -> None:
    """delay = δ₀ + D·((1 − m)·w^γ + m·w₂): γ and m change the delay alone. By default (γ = 1,
    m = 0) the core sits at the lesion's longest delay; at γ = 0.3 the full delay spreads over
    twice the lesion; at m = 1 (a second weight centred elsewhere) the core sits at 40 % of it."""
    from perfnet.phantom.anatomy import build_anatomy
    from perfnet.phantom.perfusion import perfusion_parameters

    base = {"matrix": 64, "slices": 4, "coverage_mm": 40.0, "lesion": "core", "lesion_radius_mm": 40.0}
    base |= {"territory": "MCA", "motion": False, "lesion_delay_s": 10.0}
    params = {}
    for gamma, mix in ((1.0, 0.0), (0.3, 0.0), (1.0, 1.0)):
        cfg = PhantomConfig.draw(34, "CT", lesion_delay_power=gamma, lesion_delay_mix=mix, **base)
        params[gamma, mix] = perfusion_parameters(cfg, build_anatomy(cfg))
    ref = params[1.0, 0.0]
    lesion, core = ref.lesion_weight > 0.05, ref.cbf / ref.cbf_healthy < 0.3
    assert core.sum() > 40
    for p in params.values():  # the same lesion's flow and transit time
        np.testing.assert_array_equal(p.cbf, ref.cbf)
        np.testing.assert_array_equal(p.mtt, ref.mtt)

    def added(p):  # delay above the healthy tissue's: the core's median / the lesion's longest; spread
        extra = p.delay - np.median(p.delay[~lesion])
        top = extra[lesion].max()
        return np.median(extra[core]) / top, float((extra[lesion] > 0.8 * top).mean())

    coupled, spread, elsewhere = added(ref), added(params[0.3, 0.0]), added(params[1.0, 1.0])
    assert coupled[0] > 0.95 and spread[0] > 0.95
    assert spread[1] > 2 * coupled[1]
    assert elsewhere[0] < 0.5
