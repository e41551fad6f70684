"""Automatic AIF/VOF selection on phantoms (known vessels) and on real OSIPI DSC data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perfnet.conventional.aif import CurveFeatures, arterial_input
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
