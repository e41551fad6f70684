"""Phantom style B ("mni"): truth invariants, determinism, anatomy, CT noise spectrum, MR leakage
and non-steady-state frames, offline template, cohort and CLI."""

from __future__ import annotations

import dataclasses
import functools
import json
import socket

import numpy as np
import pytest
from scipy import signal, stats

from perfnet.constants import HEMATOCRIT_FACTOR, TISSUE_DENSITY
from perfnet.errors import PerfnetInputError
from perfnet.phantom.anatomy import ARTERY, BONE, CSF, DEEP_GREY, GREY_MATTER, VEIN, WHITE_MATTER
from perfnet.phantom.mni import MniConfig, MniStudy, simulate_mni_study
from perfnet.phantom.mni.acquisition import nps_filter, steady_state_factors
from perfnet.phantom.mni.config import T1_SECONDS
from perfnet.phantom.mni.physiology import DT, residue, residue_parameters, tissue_table
from perfnet.phantom.mni.template import TEMPLATE_FILES, TERRITORY_CODES, load_template, template_folder

pytest.importorskip("nilearn")


@functools.lru_cache(maxsize=24)
def mni_study(seed: int, modality: str = "CT", noise: bool = True, **overrides) -> MniStudy:
    """A small style-B study (64×64×4, no motion unless overridden), cached by its arguments."""
    overrides = {"matrix": 64, "slices": 4, "coverage_mm": 48.0, "motion": False, **overrides}
    return simulate_mni_study(MniConfig.draw(seed, modality, **overrides), noise=noise)


# --- truth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "modality"), [(1, "CT"), (2, "MR"), (3, "CT"), (4, "MR")])
def test_truth_invariants(seed: int, modality: str) -> None:
    study = mni_study(seed, modality, lesion="core", territory="MCA", slab_center_mm=5.0)
    truth = study.truth
    brain, core, hypo, pen = (truth.masks[k] for k in ("brain", "core", "hypoperfused", "penumbra"))
    maps = truth.maps
    assert brain.sum() > 2000 and hypo.sum() > 0
    np.testing.assert_allclose(maps["cbv"][brain], maps["cbf"][brain] * maps["mtt"][brain] / 60.0, rtol=1e-5)
    assert not (core & ~hypo).any() and not (hypo & ~brain).any()
    assert np.array_equal(pen, hypo & ~core)
    assert np.array_equal(hypo, brain & (maps["tmax"] > 6.0))
    for name in maps:
        assert (maps[name][~brain] == 0).all()
    # core: CBF below 30 % of the same voxel's healthy CBF (ties at the threshold aside)
    relative = maps["cbf"][hypo] / study.healthy_cbf[hypo]
    decided = np.abs(relative - 0.3) > 1e-5
    assert np.array_equal(core[hypo][decided], (relative < 0.3)[decided])
    # plausible flows: voxel averages of grey (40–80) and white matter (15–30) mL/100 g/min
    assert 15 < np.median(maps["cbf"][brain & ~hypo]) < 75
    assert 1.0 < np.median(maps["cbv"][brain & ~hypo]) < 6.0
    assert (maps["ttp"][brain] > 0).all() and (maps["tmax"][brain] > 0).all()
    assert truth.parameters["style"] == "mni"


@pytest.mark.parametrize("residue_family", ["exponential", "gamma", "lagged-normal", "two-compartment"])
def test_area_ratio_reproduces_cbv(residue_family: str) -> None:
    """CT, noise-free, a bolus wholly inside the acquisition: ∫C_t/∫C_a = (CBV/100)·ρ/kH."""
    study = mni_study(
        11,
        "CT",
        noise=False,
        residue=residue_family,
        frames=100,
        frame_interval_s=2.0,
        timing="uniform",
        truncated=False,
        arrival_s=4.0,
        washout_factor=0.0,
        aif_stretch=1.0,
        lesion="core",
        lesion_delay_s=8.0,
    )
    truth, mni = study.truth, study.mni
    clean = truth.masks["brain"] & (study.anatomy.artery_pv == 0) & (study.anatomy.vein_pv == 0)
    clean &= mni.fraction(BONE) == 0
    assert clean.sum() > 300 and truth.maps["tmax"][clean].max() > 6
    ratio = np.trapezoid(truth.concentration[clean], truth.times, axis=1) / np.trapezoid(
        truth.aif, truth.times
    )
    expected = truth.maps["cbv"][clean] / 100.0 * TISSUE_DENSITY / HEMATOCRIT_FACTOR
    np.testing.assert_allclose(ratio, expected, rtol=0.01)


@pytest.mark.parametrize("family", ["exponential", "gamma", "lagged-normal", "two-compartment"])
def test_tmax_is_argmax_of_dispersed_residue(family: str) -> None:
    """The table's Tmax against an independent fine-grid evaluation of D ⊗ R (gamma kernel)."""
    params = residue_parameters(family, (0.4, 0.6))
    mtt, mean, shape = np.array([4.0, 7.0]), np.array([0.8, 2.5]), 2.5
    aif = np.zeros(1200)
    aif[5] = 1.0 / DT
    table = tissue_table(aif, family, params, shape, mtt, mean)
    step = 0.002
    t = np.arange(0.0, 60.0, step)
    for u in range(2):
        d = stats.gamma.pdf(t, shape, scale=mean[u] / shape)
        r = residue(family, params, t, np.float64(mtt[u]))
        h = signal.fftconvolve(d, r)[: t.size] * step
        assert table.tmax[u] == pytest.approx(t[np.argmax(h)], abs=0.06)
        assert h.sum() * step == pytest.approx(mtt[u], rel=0.02)  # ∫ D ⊗ R = MTT


def test_lesion_kinds() -> None:
    for seed in range(30, 36):  # healthy tissue never reaches Tmax 6 s, whatever the residue family
        none = mni_study(seed, "CT", noise=False, lesion="none", matrix=48, slices=3).truth
        assert none.masks["hypoperfused"].sum() == 0
        assert np.percentile(none.maps["tmax"][none.masks["brain"]], 99) < 5.0
    pen = mni_study(31, "CT", noise=False, lesion="penumbra", territory="MCA", slab_center_mm=5.0).truth
    assert pen.masks["core"].sum() == 0 and pen.masks["penumbra"].sum() > 100
    core = mni_study(
        32,
        "CT",
        noise=False,
        lesion="core",
        territory="MCA",
        occlusion="proximal",
        slab_center_mm=5.0,
        core_onset=0.8,
    ).truth
    assert core.masks["core"].sum() > 20 and core.masks["penumbra"].sum() > 20


@pytest.mark.parametrize(("territory", "hemisphere"), [("MCA", "left"), ("ACA", "right"), ("PCA", "right")])
def test_lesion_stays_in_its_territory(territory: str, hemisphere: str) -> None:
    study = mni_study(
        40,
        "CT",
        noise=False,
        lesion="penumbra",
        territory=territory,
        hemisphere=hemisphere,
        occlusion="proximal",
        slab_center_mm=12.0,
        coverage_mm=60.0,
        head_rotation_deg=(0.0, 0.0, 0.0),
    )
    hypo = study.truth.masks["hypoperfused"]
    assert hypo.sum() > 50
    codes = study.anatomy.territory[hypo]
    assert np.mean(codes == TERRITORY_CODES[territory]) > 0.9
    x = study.mni.template_points[0].reshape(hypo.shape)[hypo]
    assert np.all(np.sign(x) == (1 if hemisphere == "right" else -1))


# --- determinism ---------------------------------------------------------------------------------


def test_seed_reproduces_bit_exactly() -> None:
    cfg = MniConfig.draw(42, "MR", matrix=48, slices=3, motion=True, non_steady_state=True)
    a = simulate_mni_study(cfg)
    b = simulate_mni_study(MniConfig.draw(42, "MR", matrix=48, slices=3, motion=True, non_steady_state=True))
    assert np.array_equal(a.series.data, b.series.data) and np.array_equal(a.series.times, b.series.times)
    for name in a.truth.maps:
        assert np.array_equal(a.truth.maps[name], b.truth.maps[name])
    c = simulate_mni_study(MniConfig.draw(43, "MR", matrix=48, slices=3))
    assert a.series.shape != c.series.shape or not np.array_equal(a.truth.maps["cbf"], c.truth.maps["cbf"])


def test_override_keeps_other_draws() -> None:
    base, other = MniConfig.draw(9, "CT"), MniConfig.draw(9, "CT", matrix=64, slices=5)
    for name in (
        "arrival_s",
        "cbf_gm",
        "lesion",
        "territory",
        "aif_peak",
        "anatomy_seed",
        "residue",
        "head_scale",
    ):
        assert getattr(base, name) == getattr(other, name)
    with pytest.raises(PerfnetInputError, match="residue"):
        MniConfig.draw(9, "CT", residue="box")  # a style-A family
    with pytest.raises(PerfnetInputError, match="unknown"):
        MniConfig.draw(9, "CT", brain_semi_axes_mm=(1, 2, 3, 4))


def test_draws_cover_documented_ranges() -> None:
    cfgs = [MniConfig.draw(s, "CT") for s in range(200)] + [MniConfig.draw(s, "MR") for s in range(200)]
    assert {c.residue for c in cfgs} == {"exponential", "gamma", "lagged-normal", "two-compartment"}
    assert {c.lesion for c in cfgs} == {"none", "oligaemia", "penumbra", "core"}
    assert {c.occlusion for c in cfgs} == {"proximal", "distal"}
    assert 0.05 < np.mean([c.truncated for c in cfgs]) < 0.2
    assert 0.2 < np.mean([c.motion for c in cfgs]) < 0.4
    mr = [c for c in cfgs if c.modality == "MR"]
    assert 0.2 < np.mean([c.non_steady_state for c in mr]) < 0.5
    assert 0.3 < np.mean([c.leakage_k2_per_s != 0 for c in mr]) < 0.7
    assert all(c.leakage_k2_per_s == 0 for c in cfgs if c.modality == "CT")
    assert min(c.dose_mas for c in cfgs) < 40 and max(c.slices for c in cfgs) == 32
    assert all(20 <= c.frames <= 100 for c in cfgs)
    pitch = np.array([c.head_rotation_deg[0] for c in cfgs])
    assert pitch.min() < -15 and pitch.max() > 15


# --- anatomy --------------------------------------------------------------------------------------


def test_anatomy_is_a_plausible_brain() -> None:
    """A slab over the whole brain: tissue volumes, grey/white ratio, every class present."""
    study = mni_study(
        5,
        "CT",
        noise=False,
        matrix=96,
        slices=16,
        coverage_mm=150.0,
        slab_center_mm=5.0,
        head_rotation_deg=(0.0, 0.0, 0.0),
        lesion="none",
    )
    ml = study.truth.parameters["anatomy"]["tissue_ml"]
    gm = ml["grey matter"] + ml["deep grey nuclei"]
    assert 0.5 < gm / (gm + ml["white matter"]) < 0.7  # MNI152 2009a: ≈ 0.6
    assert 800 < gm + ml["white matter"] < 1800
    assert 60 < ml["CSF"] < 600
    labels = study.anatomy.labels
    for label in (BONE, CSF, GREY_MATTER, WHITE_MATTER, DEEP_GREY, ARTERY, VEIN):
        assert (labels == label).any(), label
    assert 0 < study.anatomy.artery_pv.max() <= 1 and 0 < study.anatomy.vein_pv.max() <= 1
    fractions = study.mni.fractions
    np.testing.assert_allclose(fractions.sum(axis=0), 1.0, atol=1e-4)
    # both hemispheres hold all three territories
    x = study.mni.template_points[0].reshape(labels.shape)
    for code in TERRITORY_CODES.values():
        for side in (1, -1):
            assert ((study.anatomy.territory == code) & (np.sign(x) == side)).sum() > 100


def test_random_deformation_changes_the_head() -> None:
    a = mni_study(6, "CT", noise=False, lesion="none")
    b = mni_study(6, "CT", noise=False, lesion="none", warp_amplitude_mm=5.0, anatomy_seed=7)
    assert np.mean(a.anatomy.labels != b.anatomy.labels) > 0.02


def test_template_is_read_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MNI152 maps come from files inside the installed nilearn package: no network."""
    folder = template_folder()
    assert all((folder / name).is_file() for name in TEMPLATE_FILES.values())

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    load_template.cache_clear()
    template = load_template(2)
    assert template.gm.max() > 0.9 and template.intracranial.sum() > 1000


# --- acquisition -------------------------------------------------------------------------------------


def test_ct_noise_has_the_fbp_noise_power_spectrum() -> None:
    """Noise = noisy − clean: the dose-derived SD, correlated in-plane as the NPS says, not between
    slices, and its spectrum vanishing at f → 0 (FBP ramp) and past the window's cut-off."""
    overrides = {"matrix": 128, "slices": 4, "fov_mm": 200.0, "nps_cutoff_lp_mm": 0.35, "dose_mas": 80.0}
    noisy, clean = mni_study(7, "CT", **overrides), mni_study(7, "CT", noise=False, **overrides)
    noise = (noisy.series.data - clean.series.data).astype(np.float64)
    sd = noisy.config.ct_noise_sd
    assert sd == pytest.approx(
        noisy.config.noise_sd_100mas * np.sqrt(100 / 80) * np.sqrt(5 / noisy.config.slice_thickness_mm)
    )
    assert noise.std() == pytest.approx(sd, rel=0.03)
    # lag-1 autocorrelation in x: measured vs the model's (inverse FFT of the NPS)
    rho_x = np.mean(noise[1:] * noise[:-1]) / noise.var()
    model = np.fft.irfft2(nps_filter(128, 200.0 / 128, 0.35) ** 2, s=(128, 128))
    assert rho_x == pytest.approx(model[1, 0] / model[0, 0], abs=0.03)
    assert abs(rho_x) > 0.3  # clearly not white noise
    rho_z = np.mean(noise[:, :, 1:] * noise[:, :, :-1]) / noise.var()
    assert abs(rho_z) < 0.03
    # radial spectrum: low at the lowest and highest frequencies, peaking in between
    power = (np.abs(np.fft.fft2(noise, axes=(0, 1))) ** 2).mean(axis=(2, 3))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij"))
    bands = [power[(f >= lo) & (f < lo + 0.025)].mean() for lo in np.arange(0.0, 0.5, 0.025)]
    peak = int(np.argmax(bands))
    assert 0 < peak < len(bands) - 1 and bands[0] < 0.3 * bands[peak] and bands[-1] < 0.1 * bands[peak]


def test_white_ct_noise_texture_keeps_the_sd_and_loses_the_correlation() -> None:
    """``noise_texture="white"`` (an override, never drawn): the same dose-derived SD, no in-plane
    correlation; every other parameter, and so the clean series, as drawn."""
    overrides = {"matrix": 128, "slices": 4, "fov_mm": 200.0, "nps_cutoff_lp_mm": 0.35, "dose_mas": 80.0}
    assert MniConfig.draw(7, "CT").noise_texture == "fbp"
    white = mni_study(7, "CT", noise_texture="white", **overrides)
    clean = mni_study(7, "CT", noise=False, **overrides)
    noise = (white.series.data - clean.series.data).astype(np.float64)
    assert noise.std() == pytest.approx(white.config.ct_noise_sd, rel=0.03)
    assert abs(np.mean(noise[1:] * noise[:-1]) / noise.var()) < 0.02
    with pytest.raises(PerfnetInputError, match="noise_texture"):
        MniConfig.draw(7, "CT", noise_texture="pink")


def test_a_gamma_first_pass_keeps_the_aifs_peak_time_width_and_area() -> None:
    """``aif_model="gamma"`` (an override, never drawn): the first-pass Gaussian becomes a gamma
    variate of the same peak time, FWHM and area, skewed (it rises later and falls slower);
    recirculation and washout, and every drawn parameter, as before."""
    from perfnet.phantom.mni.physiology import PopulationAIF, gamma_first_pass

    dt = np.arange(-30.0, 60.0, 0.001)
    g = gamma_first_pass(dt, 3.4, 3.0)
    above = dt[g >= 0.5 * g.max()]
    assert g.sum() * 0.001 == pytest.approx(1.0, abs=1e-6) and abs(dt[np.argmax(g)]) < 2e-3
    assert above[-1] - above[0] == pytest.approx(2 * np.sqrt(2 * np.log(2)) * 3.4, abs=0.01)
    assert -above[0] < above[-1]  # skewed: a longer fall than rise

    drawn = MniConfig.draw(7, "CT")
    gamma = MniConfig.draw(7, "CT", aif_model="gamma")
    assert drawn.aif_model == "population" and dataclasses.replace(gamma, aif_model="population") == drawn
    t = np.arange(0.0, 120.0, 0.01)
    population, skewed = (PopulationAIF.from_config(c)(t) for c in (drawn, gamma))
    assert skewed.max() == pytest.approx(drawn.aif_peak) == population.max()
    assert abs(t[np.argmax(skewed)] - t[np.argmax(population)]) < 0.05
    assert skewed.sum() == pytest.approx(population.sum(), rel=0.03)
    assert np.abs(skewed - population).max() > 0.1 * drawn.aif_peak
    with pytest.raises(PerfnetInputError, match="aif_model"):
        MniConfig.draw(7, "CT", aif_model="parker")


def test_mr_leakage_changes_the_tail_as_modelled() -> None:
    """Boxerman–Weisskoff: ΔR2*_obs = ΔR2* − K₂∫ΔR2* in the core's pure-tissue voxels."""
    common = {"lesion": "core", "territory": "MCA", "slab_center_mm": 5.0, "non_steady_state": False}
    common |= {"frames": 60, "frame_interval_s": 1.5, "timing": "uniform", "core_onset": 0.75}
    leaky = mni_study(12, "MR", noise=False, leakage_k2_per_s=0.015, **common)
    tight = mni_study(12, "MR", noise=False, leakage_k2_per_s=0.0, **common)
    k2 = leaky.leakage_k2
    pure = (leaky.mni.tissue_fraction > 0.995) & (k2 > 0.01)
    assert pure.sum() > 5
    times = leaky.truth.times
    base = tight.truth.concentration[pure].astype(np.float64)
    steps = np.diff(times, prepend=times[0])
    running = np.cumsum(0.5 * (base + np.c_[base[:, :1], base[:, :-1]]) * steps, axis=1)
    expected = base - k2[pure][:, None] * running
    # (the few ‰ of CSF or vessel in a "pure" voxel mix its magnitude: a few 10⁻³ 1/s off)
    np.testing.assert_allclose(leaky.truth.concentration[pure], expected, rtol=1e-3, atol=5e-3)
    late = times > times[np.argmax(base.mean(axis=0))] + 15
    assert (leaky.truth.concentration[pure][:, late] < base[:, late] - 0.05).all()  # T1-dominant: lower tail
    healthy = leaky.truth.masks["brain"] & (k2 == 0)
    np.testing.assert_allclose(
        leaky.truth.concentration[healthy], tight.truth.concentration[healthy], atol=1e-4
    )


def test_non_steady_state_frames_are_brighter() -> None:
    common = {"flip_angle_deg": 60.0, "frame_interval_s": 1.5, "timing": "uniform", "arrival_s": 12.0}
    nss = mni_study(13, "MR", noise=False, non_steady_state=True, **common)
    steady = mni_study(13, "MR", noise=False, non_steady_state=False, **common)
    white = nss.mni.fraction(WHITE_MATTER) > 0.995
    assert white.sum() > 20
    with np.errstate(divide="ignore", invalid="ignore"):  # air is 0 in both
        ratio = nss.series.data / steady.series.data
    # before the bolus, each voxel's ratio is its compartments' S0-weighted mean of m_c(k)
    values = {int(k): v for k, v in nss.truth.parameters["baseline_values"].items()}
    fractions = {label: nss.mni.fraction(label) for label in values}
    weights = sum(fractions[c] * values[c] for c in values)
    expected = (
        sum(
            fractions[c][..., None] * values[c] * steady_state_factors(nss.config, c, 6)[None, None, None, :]
            for c in values
        )
        / np.maximum(weights, 1e-9)[..., None]
    )
    head = weights > 0.05 * nss.config.s0
    np.testing.assert_allclose(ratio[head][:, :6], expected[head], rtol=1e-4)
    ratio = ratio[white].mean(axis=0)
    np.testing.assert_allclose(ratio[:6], steady_state_factors(nss.config, WHITE_MATTER, 6), rtol=0.01)
    t1 = T1_SECONDS[nss.config.field_strength_t]["white"]
    e1 = np.exp(-1.5 / t1)
    assert ratio[0] == pytest.approx((1 - 0.5 * e1) / (1 - e1), rel=0.01)  # cos 60° = ½
    assert ratio[0] > 1.05 and ratio[3] < 1.01  # a few leading frames, then steady state
    csf = nss.mni.fraction(CSF) > 0.99
    if csf.any():  # long T1: CSF is brighter for longer
        assert (nss.series.data[csf][:, 1] / steady.series.data[csf][:, 1]).mean() > ratio[1]
    assert np.array_equal(nss.truth.concentration, steady.truth.concentration)


def test_motion_moves_the_head_rigidly() -> None:
    moved = mni_study(14, "CT", noise=False, motion=True, motion_translation_mm=3.0, motion_rotation_deg=2.0)
    motion = moved.truth.motion
    assert np.all(motion[0] == 0) and np.abs(motion[:, :3]).max() <= 3.0 + 1e-9
    assert np.abs(motion).max() > 0.3
    still = mni_study(14, "CT", noise=False, motion=False, motion_translation_mm=3.0, motion_rotation_deg=2.0)
    assert np.all(still.truth.motion == 0)
    assert not np.allclose(moved.series.data[..., -1], still.series.data[..., -1])


def test_truncated_acquisition_ends_after_the_aif_peak() -> None:
    cfg = MniConfig.draw(15, "CT", truncated=True, timing="uniform")
    times = cfg.frame_times()
    first_peak = cfg.arrival_s + 3.5 * 0.0563 * 60 * cfg.aif_stretch
    assert first_peak + 11 < times[-1] < first_peak + 27


# --- cohort and command line ----------------------------------------------------------------------------


def test_cli_simulates_style_mni(tmp_path) -> None:
    from perfnet.cli import main

    out = tmp_path / "cohort"
    code = main(
        [
            "simulate",
            str(out),
            "--style",
            "mni",
            "--modality",
            "mr",
            "--cases",
            "2",
            "--seed",
            "3",
            "--size",
            "48",
            "--slices",
            "3",
            "--frames",
            "30",
            "--no-motion",
            "--lesion",
            "penumbra",
        ]
    )
    assert code == 0
    rows = [line.split("\t") for line in (out / "participants.tsv").read_text().splitlines()]
    header = rows[0]
    assert [r[header.index("style")] for r in rows[1:]] == ["mni", "mni"]
    truth = out / "sub-0002" / "ses-01" / "truth"
    params = json.loads((truth / "parameters.json").read_text())
    assert (
        params["style"] == "mni"
        and params["config"]["seed"] == 4
        and params["config"]["lesion"] == "penumbra"
    )
    assert {p.name for p in truth.iterdir()} >= {
        "cbf.nii.gz",
        "tmax.nii.gz",
        "core.nii.gz",
        "labels.nii.gz",
        "aif.json",
    }
    assert (out / "sub-0001" / "ses-01" / "sub-0001_ses-01_dsc.nii.gz").is_file()
    assert main(["simulate", str(tmp_path / "bad"), "--style", "mni", "--residue", "box"]) == 2
