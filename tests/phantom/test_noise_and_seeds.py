"""Noise levels, determinism and domain randomisation of the phantom."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.errors import PerfnetInputError
from perfnet.phantom import PhantomConfig, ct_noise_sd, simulate_study
from phantoms import small_study


@pytest.mark.parametrize("dose", [60.0, 150.0, 380.0])
def test_ct_noise_sd_follows_dose(dose: float) -> None:
    noisy = small_study(7, "CT", dose_mas=dose, motion=False)
    clean = small_study(7, "CT", noise=False, dose_mas=dose, motion=False)
    measured = float(np.std(noisy.series.data - clean.series.data))
    requested = ct_noise_sd(dose)
    assert measured == pytest.approx(requested, rel=0.05)
    assert requested == pytest.approx(15.0 * np.sqrt(100.0 / dose))


def test_ct_noise_sd_override() -> None:
    noisy = small_study(7, "CT", noise_sd=4.0, motion=False)
    clean = small_study(7, "CT", noise=False, noise_sd=4.0, motion=False)
    assert np.std(noisy.series.data - clean.series.data) == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("snr", [20.0, 100.0])
def test_mr_rician_noise_sd(snr: float) -> None:
    noisy = small_study(8, "MR", snr=snr, motion=False)
    clean = small_study(8, "MR", noise=False, snr=snr, motion=False)
    sigma = noisy.config.s0 / snr
    bright = clean.series.data > 8 * sigma  # Rician ≈ Gaussian at high signal
    assert bright.sum() > 10000
    measured = float(np.std((noisy.series.data - clean.series.data)[bright]))
    assert measured == pytest.approx(sigma, rel=0.05)
    assert noisy.series.data.min() >= 0  # magnitude images


def test_seed_reproduces_bit_exactly() -> None:
    cfg = PhantomConfig.draw(42, "CT", matrix=64, slices=4, motion=True)
    a, b = simulate_study(cfg), simulate_study(PhantomConfig.draw(42, "CT", matrix=64, slices=4, motion=True))
    assert np.array_equal(a.series.data, b.series.data)
    assert np.array_equal(a.series.times, b.series.times)
    for name in a.truth.maps:
        assert np.array_equal(a.truth.maps[name], b.truth.maps[name])
    c = simulate_study(PhantomConfig.draw(43, "CT", matrix=64, slices=4, motion=True))
    assert not np.array_equal(a.truth.maps["cbf"], c.truth.maps["cbf"]) or a.series.shape != c.series.shape


def test_override_keeps_other_draws() -> None:
    base = PhantomConfig.draw(9, "MR")
    other = PhantomConfig.draw(9, "MR", matrix=64, frames=40)
    assert (other.matrix, other.frames) == (64, 40)
    for name in ("arrival_s", "cbf_gm", "lesion", "territory", "aif_peak", "snr", "anatomy_seed"):
        assert getattr(base, name) == getattr(other, name)


def test_a_lesion_delay_drawn_apart_keeps_every_other_draw() -> None:
    """``delay_power`` / ``delay_mix`` draw γ (log-uniform) and m from a stream of their own: every
    other parameter is the plain draw's, and each range alone gives the same value."""
    import dataclasses

    apart = [PhantomConfig.draw(s, "CT", delay_power=(0.3, 2.0), delay_mix=(0.0, 0.8)) for s in range(9, 109)]
    plain = PhantomConfig.draw(9, "CT")
    assert (plain.lesion_delay_power, plain.lesion_delay_mix) == (1.0, 0.0)
    assert dataclasses.replace(apart[0], lesion_delay_power=1.0, lesion_delay_mix=0.0) == plain
    alone = PhantomConfig.draw(9, "CT", delay_power=(0.3, 2.0))
    assert alone.lesion_delay_power == apart[0].lesion_delay_power and alone.lesion_delay_mix == 0.0
    gamma = np.array([c.lesion_delay_power for c in apart])
    mix = np.array([c.lesion_delay_mix for c in apart])
    assert 0.3 <= gamma.min() < 0.36 and 1.7 < gamma.max() <= 2.0
    assert 0.6 < np.median(gamma) < 1.0  # log-uniform: √(0.3 · 2) = 0.77
    assert 0.0 <= mix.min() < 0.05 and 0.75 < mix.max() <= 0.8
    with pytest.raises(PerfnetInputError, match="delay-mix"):
        PhantomConfig.draw(9, "CT", delay_mix=(0.5, 1.5))


def test_a_wide_bolus_draw_keeps_every_other_draw() -> None:
    """``wide_bolus`` draws the arterial first pass's FWHM (4–16 s) and gamma-variate shape (2–16,
    log-uniform) from that own stream: every other parameter is the plain draw's, and the bolus can
    be slower and more symmetric than the plain draw's 4–10 s at shape 2–5."""
    import dataclasses

    wide = [PhantomConfig.draw(s, "MR", wide_bolus=True) for s in range(9, 209)]
    plain = PhantomConfig.draw(9, "MR")
    assert dataclasses.replace(wide[0], aif_fwhm_s=plain.aif_fwhm_s, aif_alpha=plain.aif_alpha) == plain
    apart = PhantomConfig.draw(9, "MR", delay_power=(0.3, 2.0), wide_bolus=True)
    assert (apart.aif_fwhm_s, apart.aif_alpha) == (wide[0].aif_fwhm_s, wide[0].aif_alpha)
    fwhm = np.array([c.aif_fwhm_s for c in wide])
    alpha = np.array([c.aif_alpha for c in wide])
    assert 4.0 <= fwhm.min() < 4.5 and 15.5 < fwhm.max() <= 16.0
    assert 2.0 <= alpha.min() < 2.2 and 14.0 < alpha.max() <= 16.0
    assert 4.5 < np.median(alpha) < 7.0  # log-uniform: √(2 · 16) = 5.7
    assert (fwhm > 10).mean() > 0.4 and (alpha > 5).mean() > 0.4  # beyond the plain draw's ranges
    # the simulated first pass has the drawn width (FWHM of the AIF's first pass, recirculation off)
    from perfnet.phantom.physiology import ArterialInput

    slow = max(wide, key=lambda c: c.aif_fwhm_s * c.aif_alpha)
    aif = ArterialInput.from_config(slow.replace(recirculation_fraction=0.0, steady_state_fraction=0.0))
    t = np.arange(0.0, 120.0, 0.01)
    above = t[aif(t) >= 0.5 * aif(t).max()]
    assert abs((above[-1] - above[0]) - slow.aif_fwhm_s) < 0.05 * slow.aif_fwhm_s


def test_a_wide_dispersion_draw_keeps_every_other_draw() -> None:
    """``wide_dispersion`` draws the tissue dispersion kernel's gamma shape (1–6, log-uniform) from
    that own stream: every other parameter is the plain draw's (shape 1: the exponential kernel),
    and with ``wide_bolus`` both keep their own draws."""
    import dataclasses

    wide = [PhantomConfig.draw(s, "CT", wide_dispersion=True) for s in range(9, 209)]
    plain = PhantomConfig.draw(9, "CT")
    assert plain.dispersion_shape == 1.0
    assert dataclasses.replace(wide[0], dispersion_shape=1.0) == plain
    both = PhantomConfig.draw(9, "CT", wide_bolus=True, wide_dispersion=True)
    assert both.dispersion_shape == wide[0].dispersion_shape
    assert both.aif_fwhm_s == PhantomConfig.draw(9, "CT", wide_bolus=True).aif_fwhm_s
    shape = np.array([c.dispersion_shape for c in wide])
    assert 1.0 <= shape.min() < 1.1 and 5.5 < shape.max() <= 6.0
    assert 2.0 < np.median(shape) < 3.0  # log-uniform: √6 = 2.45
    with pytest.raises(PerfnetInputError, match="dispersion_shape"):
        PhantomConfig.draw(9, "CT", dispersion_shape=0.5)


def test_a_wide_residue_draw_keeps_every_other_draw() -> None:
    """``wide_residue`` draws the gamma residue's shape (1.5–16, log-uniform) and the log-normal
    residue's σ (0.15–0.8) from that own stream: every other parameter is the plain draw's, and
    with ``wide_dispersion`` both keep their own draws."""
    import dataclasses

    wide = [PhantomConfig.draw(s, "CT", wide_residue=True) for s in range(9, 209)]
    plain = PhantomConfig.draw(9, "CT")
    assert (
        dataclasses.replace(wide[0], gamma_shape=plain.gamma_shape, lognormal_sigma=plain.lognormal_sigma)
        == plain
    )
    both = PhantomConfig.draw(9, "CT", wide_dispersion=True, wide_residue=True)
    assert both.gamma_shape == wide[0].gamma_shape
    assert both.dispersion_shape == PhantomConfig.draw(9, "CT", wide_dispersion=True).dispersion_shape
    shape = np.array([c.gamma_shape for c in wide])
    sigma = np.array([c.lognormal_sigma for c in wide])
    assert 1.5 <= shape.min() < 1.7 and 14 < shape.max() <= 16.0
    assert 4.0 < np.median(shape) < 6.0  # log-uniform: √24 = 4.9
    assert 0.15 <= sigma.min() < 0.2 and 0.75 < sigma.max() <= 0.8
    assert [c.residue for c in wide] == [PhantomConfig.draw(s, "CT").residue for s in range(9, 209)]


def test_noise_does_not_change_truth() -> None:
    noisy, clean = small_study(12, "CT"), small_study(12, "CT", noise=False)
    for name in noisy.truth.maps:
        assert np.array_equal(noisy.truth.maps[name], clean.truth.maps[name])


def test_domain_randomisation_covers_documented_ranges() -> None:
    cfgs = [PhantomConfig.draw(s, "CT") for s in range(300)]
    arrivals = np.array([c.arrival_s for c in cfgs])
    intervals = np.array([c.frame_interval_s for c in cfgs])
    assert 2 <= arrivals.min() < 3 and 14 < arrivals.max() <= 15
    assert 0.5 <= intervals.min() < 0.6 and 1.9 < intervals.max() <= 2.0
    assert {c.lesion for c in cfgs} == {"none", "oligaemia", "penumbra", "core"}
    assert {c.territory for c in cfgs} == {"MCA", "ACA", "PCA"}
    assert {c.residue for c in cfgs} == {"exponential", "box", "gamma", "lognormal"}
    assert {c.timing for c in cfgs} == {"uniform", "two-phase", "jittered"}
    assert 0.2 < np.mean([c.motion for c in cfgs]) < 0.4
    frames = np.array([c.frames for c in cfgs])
    assert frames.min() >= 30 and frames.max() <= 90 and len(set(frames)) > 30
    slices = {c.slices for c in cfgs}
    assert min(slices) == 4 and max(slices) == 32
    peaks = np.array([c.aif_peak for c in cfgs])
    assert 200 <= peaks.min() < 220 and 580 < peaks.max() <= 600
    mr = [PhantomConfig.draw(s, "MR") for s in range(100)]
    assert min(c.matrix for c in mr) == 64 and all(15 <= c.snr <= 150 for c in mr)


def test_non_uniform_frame_times() -> None:
    two = PhantomConfig.draw(
        3, "CT", timing="two-phase", frames=50, frame_interval_s=1.0, second_interval_s=2.0
    )
    steps = np.diff(two.frame_times())
    assert set(np.round(steps, 6)) == {1.0, 2.0}
    jit = PhantomConfig.draw(3, "CT", timing="jittered", frames=50, frame_interval_s=1.0)
    steps = np.diff(jit.frame_times())
    assert steps.min() >= 0.85 and steps.max() <= 1.15 and steps.std() > 0.03


def test_motion_is_rigid_and_bounded() -> None:
    study = small_study(13, "CT", motion=True, motion_translation_mm=2.0, motion_rotation_deg=2.0)
    motion = study.truth.motion
    assert np.all(motion[0] == 0)
    assert np.abs(motion[:, :3]).max() <= 2.0 + 1e-9 and np.abs(motion[:, 3:]).max() <= 2.0 + 1e-9
    assert np.abs(motion).max() > 0.5
    still = small_study(13, "CT", motion=False)
    assert np.all(still.truth.motion == 0)


def test_cohort_written_by_worker_processes_is_the_one_process_cohort(tmp_path) -> None:
    """``perfnet simulate --jobs 2``: case i still uses seed + i, so the cohort (series, truth,
    participants table) is the one a single process writes."""
    import nibabel as nib

    from perfnet.phantom import write_cohort

    small = {"matrix": 48, "slices": 2, "frames": 30, "coverage_mm": 24.0}
    one = write_cohort(tmp_path / "one", "MR", 3, 4100, overrides=small)
    two = write_cohort(tmp_path / "two", "MR", 3, 4100, overrides=small, jobs=2)
    assert one == two
    assert (tmp_path / "one" / "participants.tsv").read_text() == (
        tmp_path / "two" / "participants.tsv"
    ).read_text()
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.nii.gz"))
    assert len(files) >= 3 * 2
    for rel in files:
        a = np.asarray(nib.load(tmp_path / "one" / rel).dataobj)
        b = np.asarray(nib.load(tmp_path / "two" / rel).dataobj)
        assert np.array_equal(a, b), rel


def test_a_worker_that_dies_is_one_line_naming_the_remedy() -> None:
    """A worker process killed under ``--jobs`` (e.g. by the kernel, out of memory) reaches the user
    as a perfnet error that says to use fewer jobs, not as a process-pool traceback."""
    import os

    from perfnet.errors import PerfnetError
    from perfnet.parallel import result, worker_pool

    with worker_pool(1) as pool:
        assert result(pool.submit(abs, -3)) == 3
        with pytest.raises(PerfnetError, match="fewer --jobs"):
            result(pool.submit(os._exit, 9))
