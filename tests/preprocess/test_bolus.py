"""Bolus timing on phantoms: arrival near the truth, baseline frames before the tissue bolus."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.phantom.anatomy import ARTERY, CSF, VEIN
from perfnet.preprocess.bolus import detect_bolus, fitted_onset, noise_sd
from phantoms import small_study


def _head_mask(study) -> np.ndarray:
    """The truth brain plus CSF and vessels (what brain_mask returns)."""
    return study.truth.masks["brain"] | np.isin(study.anatomy.labels, (CSF, ARTERY, VEIN))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_arrival_and_baseline_on_noisy_phantoms(seed: int, modality: str) -> None:
    study = small_study(seed, modality, motion=False)
    series, cfg = study.series, study.config
    timing = detect_bolus(series.data, series.times, _head_mask(study), modality, series.voxel_size)
    tissue_arrival = cfg.arrival_s + cfg.baseline_delay_s
    frame = float(np.median(np.diff(series.times)))
    assert abs(timing.arrival_s - tissue_arrival) <= max(2 * frame, 2.0)
    assert timing.baseline_end >= 1 and not timing.no_baseline
    assert series.times[timing.baseline_end - 1] < tissue_arrival  # every baseline frame is pre-bolus
    assert timing.arrival_index == int(np.searchsorted(series.times, timing.arrival_s))
    assert timing.peak_s > timing.arrival_s
    assert timing.curve.shape == series.times.shape
    summary = timing.to_dict()
    assert summary["baseline_end"] == timing.baseline_end and len(summary["curve"]) == series.n_frames


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_bolus_at_the_first_frame_is_flagged(modality: str) -> None:
    study = small_study(7, modality, motion=False, arrival_s=0.0)
    series = study.series
    timing = detect_bolus(series.data, series.times, _head_mask(study), modality, series.voxel_size)
    assert timing.no_baseline
    assert timing.baseline_end == 1
    assert timing.arrival_s <= 2.0


def test_noise_sd_and_onset_fit_on_a_synthetic_curve() -> None:
    times = np.arange(40) * 1.0
    onset = 9.3
    curve = 5.0 + 2.0 * np.clip(times - onset, 0, None) ** 2
    curve[times > 14] = curve[times <= 14][-1]
    rng = np.random.default_rng(0)
    noisy = curve + rng.normal(0, 0.5, times.size)
    assert 0.3 < noise_sd(noisy) < 0.8
    assert abs(fitted_onset(times, curve, 5.0, 9) - onset) < 0.1
    assert abs(fitted_onset(times, noisy, 5.0, 9) - onset) < 1.0


def test_invalid_inputs() -> None:
    data = np.ones((4, 4, 2, 10), dtype=np.float32)
    times = np.arange(10.0)
    mask = np.ones((4, 4, 2), dtype=bool)
    with pytest.raises(ValueError, match="4D"):
        detect_bolus(data[..., 0], times, mask, "CT")
    with pytest.raises(ValueError, match="frame times"):
        detect_bolus(data, times[:-1], mask, "CT")
    with pytest.raises(ValueError, match="mask shape"):
        detect_bolus(data, times, mask[:3], "CT")
    with pytest.raises(ValueError, match="modality"):
        detect_bolus(data, times, mask, "US")
    with pytest.raises(ValueError, match="empty"):
        detect_bolus(data, times, np.zeros_like(mask), "CT")
    with pytest.raises(ValueError, match="increasing"):
        detect_bolus(data, times[::-1].copy(), mask, "CT")


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_a_drifting_edge_is_not_an_early_bolus(modality: str) -> None:
    # Issue 11 (nuisance motion_mr): voxels at a moving edge (here 4 % of the brain) drift from
    # the first frame to the bolus peak and snap back; they enhance most while the brain rises, so
    # the arterial curve was made of them, passed as a clear "earlier bolus" and put the arrival at
    # 0 s with a one-frame baseline (no_baseline). An arterial curve rising far earlier or slower
    # than the tissue is not the bolus: the brain's timing is kept.
    study = small_study(2, modality, motion=False)
    series, cfg = study.series, study.config
    mask = _head_mask(study)
    data = series.data.astype(np.float32, copy=True)
    times = series.times
    peak = int(np.argmin(np.abs(times - np.median(study.truth.maps["ttp"][study.truth.masks["brain"]]))))
    ramp = np.clip(times / times[peak], 0.0, 1.0)
    ramp[peak + 1 :] = 0.0
    edge = mask & (np.random.default_rng(0).uniform(size=mask.shape) < 0.04)  # 4 % of the brain
    base = data[edge][:, :2].mean(axis=1, keepdims=True)
    sign = 1.0 if modality == "CT" else -1.0
    data[edge] = base * (1.0 + sign * 0.8 * ramp)[None, :]
    timing = detect_bolus(data, times, mask, modality, series.voxel_size)
    tissue_arrival = cfg.arrival_s + cfg.baseline_delay_s
    assert not timing.no_baseline
    assert abs(timing.arrival_s - tissue_arrival) <= max(2 * float(np.median(np.diff(times))), 2.0)
