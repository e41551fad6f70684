"""Automatic AIF/VOF selection on phantoms (known vessels) and on real OSIPI DSC data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perfnet.conventional.aif import arterial_input, venous_checks
from perfnet.conventional.curves import CurveFeatures
from perfnet.conventional.pipeline import AnalysisOptions, analyze
from perfnet.errors import PerfnetInputError
from perfnet.phantom.anatomy import CSF
from phantoms import small_study

PATIENT = Path(__file__).resolve().parent.parent / "data" / "osipi-dsc-patient"


def _concentration(study) -> np.ndarray:
    data, times = study.series.data, study.series.times
    n_base = max(1, int(np.searchsorted(times, study.config.arrival_s)))
    if study.series.modality == "CT":
        return data - data[..., :n_base].mean(-1, keepdims=True)
    s0 = data[..., :n_base].mean(-1, keepdims=True)
    return -np.log(np.clip(data, 1e-3, None) / np.clip(s0, 1e-3, None)) / study.series.echo_time


@pytest.mark.parametrize("seed", range(40, 52))
def test_ct_aif_lies_in_open_arteries_and_vof_in_sinus(seed: int) -> None:
    study = small_study(seed, "CT", matrix=128, slices=8, motion=False)
    anatomy = study.anatomy
    conc = _concentration(study)
    result = arterial_input(conc, study.series.times, anatomy.labels >= CSF, study.config.voxel_size)
    idx = tuple(result.aif_voxels.T)
    assert np.all(anatomy.artery_pv[idx] > 0.1), anatomy.artery_pv[idx]
    assert not anatomy.artery_occluded[idx].any()
    assert np.all(anatomy.vein_pv[tuple(result.vof_voxels.T)] > 0.5)
    # partial-volume scaling by the VOF brings the AIF area to the truth
    ratio = np.trapezoid(result.aif, study.series.times) / np.trapezoid(study.truth.aif, study.series.times)
    assert 0.8 < ratio < 1.25


@pytest.mark.parametrize("seed", range(60, 64))
def test_mr_aif_avoids_saturated_voxels(seed: int) -> None:
    study = small_study(seed, "MR", matrix=96, slices=6, motion=False)
    data = study.series.data
    n_base = max(1, int(np.searchsorted(study.series.times, study.config.arrival_s)))
    valid = data.min(-1) > 0.15 * data[..., :n_base].mean(-1)
    conc = _concentration(study)
    result = arterial_input(
        conc, study.series.times, study.anatomy.labels >= CSF, study.config.voxel_size, valid=valid
    )
    idx = tuple(result.aif_voxels.T)
    assert np.all(study.anatomy.artery_pv[idx] > 0.03) and valid[idx].all()
    # the AIF peaks before the tissue: its time to peak precedes the mean tissue curve's
    tissue = conc[study.truth.masks["brain"]].mean(axis=0)
    assert study.series.times[np.argmax(result.aif)] < study.series.times[np.argmax(tissue)]


def test_user_mask_is_averaged() -> None:
    study = small_study(41, "CT", matrix=96, slices=6, motion=False)
    conc = _concentration(study)
    mask = np.zeros(conc.shape[:3], dtype=bool)
    mask[40:42, 50, 2] = True
    result = arterial_input(
        conc, study.series.times, study.truth.masks["brain"], study.config.voxel_size, aif_mask=mask
    )
    assert result.source == "mask" and len(result.aif_voxels) == 2
    np.testing.assert_allclose(result.aif_raw, conc[mask].mean(axis=0), rtol=1e-5)


def test_real_dsc_data_picks_early_high_peaks() -> None:
    """OSIPI's real DSC crop around an MCA: the chosen voxels peak high and early."""
    conc = np.asarray(nib.load(PATIENT / "test_concentration.nii").dataobj, dtype=np.float32)
    times = np.arange(conc.shape[-1], dtype=float)
    mask = np.ones(conc.shape[:3], dtype=bool)
    result = arterial_input(conc, times, mask, (1.0, 1.0, 1.0))
    feats = CurveFeatures.of(conc.reshape(-1, conc.shape[-1]), times)
    chosen = np.ravel_multi_index(tuple(result.aif_voxels.T), conc.shape[:3])
    assert np.all(feats.peak[chosen] >= np.quantile(feats.peak, 0.9))
    assert np.median(feats.first_moment[chosen]) <= np.quantile(feats.first_moment, 0.1)
    assert feats.width[chosen].mean() < np.median(feats.width)


def test_vof_must_be_bolus_shaped_not_a_motion_step() -> None:
    """A late, large-area step (residual motion at the skull) loses to a smaller bolus-shaped sinus."""
    times = np.arange(60.0)
    aif = np.where(times > 8, (times - 8) ** 3 * np.exp(-(times - 8) / 1.5), 0.0)
    aif *= 300.0 / aif.max()
    sinus = np.interp(times - 4.0, times, aif) * 1.3
    step = np.where(times > 15, 500.0, 0.0)
    conc = np.zeros((6, 6, 1, times.size))
    conc[1, 1, 0] = conc[1, 2, 0] = aif  # arteries
    conc[4, 4, 0] = sinus
    conc[5, 5, 0] = step
    conc[2:4, 2:4, 0] = 0.05 * np.interp(times - 2.0, times, aif)  # tissue
    brain = np.ones((6, 6, 1), dtype=bool)
    aif_mask = np.zeros_like(brain)
    aif_mask[1, 1:3, 0] = True
    result = arterial_input(conc, times, brain, (1.0, 1.0, 1.0), aif_mask=aif_mask, n_voxels=1)
    assert [tuple(v) for v in result.vof_voxels] == [(4, 4, 0)]
    assert result.scale == pytest.approx(1.3, rel=0.01)


# --- plausibility ------------------------------------------------------------------------------


def _gamma(times: np.ndarray, onset: float, alpha: float, beta: float, peak: float) -> np.ndarray:
    x = np.clip(times - onset, 0.0, None)
    curve = x**alpha * np.exp(-x / beta)
    return peak * curve / curve.max()


def _synthetic(arteries: bool = True, veins: bool = True, edges: bool = False, seed: int = 0):
    """A 14×14×1 slice of tissue (bolus from 9 s, peak 16.5 s) with arteries (from 8 s, peak
    12.5 s), a sinus (from 12 s, peak 20.8 s, broader) and moving edges (a bright bump peaking at
    3 s, before the bolus reaches the brain), 1 s frames."""
    times = np.arange(60.0)
    rng = np.random.default_rng(seed)
    conc = _gamma(times, 9.0, 3.0, 2.5, 15.0) + rng.normal(0.0, 0.5, (14, 14, 1, times.size))
    regions = {
        "arteries": (slice(2, 4), slice(2, 5)),
        "veins": (slice(10, 12), slice(9, 12)),
        "edges": (slice(6, 8), slice(0, 3)),
    }
    curves = {
        "arteries": _gamma(times, 8.0, 3.0, 1.5, 300.0),
        "veins": _gamma(times, 12.0, 4.0, 2.2, 250.0),
        "edges": _gamma(times, 1.0, 2.0, 1.0, 500.0),
    }
    masks = {}
    for name, present in (("arteries", arteries), ("veins", veins), ("edges", edges)):
        mask = np.zeros((14, 14, 1), dtype=bool)
        if present:
            mask[regions[name]] = True
            conc[mask] = curves[name] + rng.normal(0.0, 2.0, (int(mask.sum()), times.size))
        masks[name] = mask
    return conc, times, masks


def _chosen(result) -> np.ndarray:
    shape = (14, 14, 1)
    chosen = np.zeros(shape, dtype=bool)
    chosen[tuple(result.aif_voxels.T)] = True
    return chosen


def test_motion_edges_peaking_before_the_bolus_are_rejected() -> None:
    """Edges of a moving head give early, bright, returning bumps: the earliest first moment and the
    highest peaks, exactly what the clustering looks for; they peak before the bolus reaches the
    tissue and are rejected."""
    conc, times, masks = _synthetic(edges=True)
    feats = CurveFeatures.of(conc.reshape(-1, times.size), times)
    edge, artery = masks["edges"].ravel(), masks["arteries"].ravel()
    assert feats.peak[edge].min() > feats.peak[artery].max()
    assert feats.first_moment[edge].max() < feats.first_moment[artery].min()
    brain = np.ones((14, 14, 1), dtype=bool)
    result = arterial_input(conc, times, brain, (1.0, 1.0, 1.0))
    assert masks["arteries"][_chosen(result)].all() and "aif_implausible" not in result.flags
    assert result.details["aif_rejected"]["peaks_after_onset"] >= int(masks["edges"].sum())
    reference = result.details["tissue_reference"]
    assert 8.0 < reference["onset_s"] < 11.0 and 15.0 < reference["peak_s"] < 18.0
    assert masks["veins"][tuple(result.vof_voxels.T)].all()


def test_curves_falling_far_below_baseline_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through-plane motion on thick slices steps a voxel's signal: a bright curve whose
    "concentration" then falls far below its baseline (a bolus riding on a partial-volume step) can
    be earlier and higher than any artery. Concentration is never negative, so it is rejected
    (on moving benchmark studies such a voxel made oSVD call the whole brain hypoperfused)."""
    conc, times, masks = _synthetic()
    stepped = np.zeros((14, 14, 1), dtype=bool)
    stepped[6:8, 10:13] = True
    curve = _gamma(times, 7.5, 3.0, 1.5, 450.0) - 200.0 * (times > 20.0)
    rng = np.random.default_rng(5)
    conc[stepped] = curve + rng.normal(0.0, 2.0, (int(stepped.sum()), times.size))
    brain = np.ones((14, 14, 1), dtype=bool)
    result = arterial_input(conc, times, brain, (1.0, 1.0, 1.0))
    assert masks["arteries"][_chosen(result)].all() and "aif_implausible" not in result.flags
    assert result.details["aif_rejected"]["not_negative"] == int(stepped.sum())
    # without the check the stepped voxels win: the test is about the check
    monkeypatch.setattr("perfnet.conventional.aif.MAX_ARTERIAL_DIP", np.inf)
    assert stepped[_chosen(arterial_input(conc, times, brain, (1.0, 1.0, 1.0)))].all()


def test_venous_only_candidates_are_implausible() -> None:
    """A slice with a sinus but no artery (a cerebellar slice): the sinus arrives and peaks after
    the tissue; the AIF is still computed from it but flagged, with the reason."""
    conc, times, masks = _synthetic(arteries=False)
    brain = np.ones((14, 14, 1), dtype=bool)
    result = arterial_input(conc, times, brain, (1.0, 1.0, 1.0))
    assert "aif_implausible" in result.flags
    reason = result.details["aif_implausible_reason"]
    assert "after the tissue" in reason and "no candidate passed" in reason
    assert not all(result.details["aif_checks"].values())
    assert result.aif_voxels.shape[0] >= 1  # maps can still be computed and looked at
    # with arteries present the same veins are passed over
    conc, times, masks = _synthetic()
    result = arterial_input(conc, times, brain, (1.0, 1.0, 1.0))
    assert masks["arteries"][_chosen(result)].all() and "aif_implausible" not in result.flags


def test_exclude_mask_is_honoured() -> None:
    """Voxels that left the imaged volume in some frame are never the AIF or the VOF."""
    conc, times, masks = _synthetic()
    brain = np.ones((14, 14, 1), dtype=bool)
    exclude = np.zeros_like(brain)
    exclude[2:4, 2:4] = True  # four of the six arterial voxels
    exclude[10, 9:12] = True  # half of the sinus
    result = arterial_input(conc, times, brain, (1.0, 1.0, 1.0), exclude=exclude)
    chosen = _chosen(result)
    assert not (chosen & exclude).any() and masks["arteries"][chosen].all()
    vof = np.zeros_like(brain)
    vof[tuple(result.vof_voxels.T)] = True
    assert vof.any() and not (vof & exclude).any()
    assert result.details["aif_rejected"]["inside"] == int(exclude.sum())


def test_exclude_mask_on_a_phantom() -> None:
    study = small_study(44, "CT", matrix=96, slices=6, motion=False)
    conc = _concentration(study)
    brain = study.anatomy.labels >= CSF
    first = arterial_input(conc, study.series.times, brain, study.config.voxel_size)
    exclude = np.zeros(brain.shape, dtype=bool)
    exclude[tuple(first.aif_voxels.T)] = True
    exclude[..., int(first.aif_voxels[0, 2])] = True  # the whole slice of the first choice
    second = arterial_input(conc, study.series.times, brain, study.config.voxel_size, exclude=exclude)
    idx = tuple(second.aif_voxels.T)
    assert not exclude[idx].any() and np.all(study.anatomy.artery_pv[idx] > 0.1)
    assert "aif_implausible" not in second.flags


def test_user_masks_are_checked() -> None:
    conc, times, masks = _synthetic()
    brain = np.ones((14, 14, 1), dtype=bool)
    # a mask on the sinus: computed as asked, flagged implausible
    result = arterial_input(conc, times, brain, (1.0, 1.0, 1.0), aif_mask=masks["veins"])
    assert result.source == "mask" and "aif_implausible" in result.flags
    assert "--aif-mask" in result.details["aif_implausible_reason"]
    # a mask on air (no bolus at all): refused
    air = np.zeros_like(brain)
    air[0, 8:10] = True
    conc_air = conc.copy()
    conc_air[air] = np.random.default_rng(1).normal(0.0, 3.0, (2, times.size))
    with pytest.raises(PerfnetInputError, match="no contrast bolus"):
        arterial_input(conc_air, times, brain, (1.0, 1.0, 1.0), aif_mask=air)
    # a VOF mask on the arteries: peaks with the AIF, not after it: rejected
    result = arterial_input(
        conc, times, brain, (1.0, 1.0, 1.0), aif_mask=masks["arteries"], vof_mask=masks["arteries"]
    )
    assert "no_vof" in result.flags and result.vof is None and result.scale == 1.0
    assert "after the AIF" in result.details["vof_rejected"]
    # a venous curve is the AIF dispersed: a late curve sharper than the AIF is not one
    aif = CurveFeatures.of(_gamma(times, 8.0, 3.0, 1.5, 300.0)[None], times)
    late = CurveFeatures.of(
        np.stack([_gamma(times, 14.0, 3.0, 0.5, 600.0), _gamma(times, 12.0, 4.0, 2.2, 250.0)]), times
    )
    checks = venous_checks(late, times, float(aif.peak_time[0]), float(aif.fwhm[0]))
    assert checks["peaks_after_aif"].all() and checks["broader_than_aif"].tolist() == [False, True]


def test_implausible_aif_marks_the_maps_unreliable() -> None:
    study = small_study(41, "CT", matrix=96, slices=6, motion=False)
    sinus = study.anatomy.vein_pv > 0.9
    options = AnalysisOptions(method="osvd", motion_correction=False, bilateral_filter=False)
    result = analyze(study.series, options, aif_mask=sinus)
    flags = {f["code"]: f for f in result.provenance["qc_flags"]}
    assert "aif_implausible" in flags and result.provenance["reliable"] is False
    assert "after the tissue" in flags["aif_implausible"]["message"]
    assert analyze(study.series, options).provenance["reliable"] is True


def test_curve_timing_features() -> None:
    """Sub-frame peak, arrival and FWHM of sampled curves (non-uniform frames)."""
    times = np.r_[np.arange(0.0, 12.0), np.arange(12.0, 40.0, 2.3)]
    gauss = np.exp(-(((times - 7.3) / 2.0) ** 2))
    step = (times > 10).astype(float)
    feats = CurveFeatures.of(np.stack([gauss, step]), times)
    assert feats.peak_time[0] == pytest.approx(7.3, abs=0.05)
    assert feats.fwhm[0] == pytest.approx(2 * 2.0 * np.sqrt(np.log(2)), abs=0.15)
    assert feats.arrival[0] == pytest.approx(7.3 - 2.0 * np.sqrt(np.log(5)), abs=0.15)
    assert np.isinf(feats.fwhm[1])  # a step never falls back: not a bolus
