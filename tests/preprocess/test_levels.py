"""Signal steps of through-plane motion on thick slices: events from the poses, steps levelled
voxel by voxel (known steps on synthetic curves), and the whole preprocessing on a phantom whose
head settles twice through its 6 mm slices."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.preprocess import levels
from perfnet.preprocess.levels import level_steps, through_plane_displacement, through_plane_events
from phantoms import jerked_study, moving_score


def _bolus(times: np.ndarray, onset: float, peak: float, width: float = 3.0) -> np.ndarray:
    x = np.clip(times - onset, 0.0, None)
    curve = x**3 * np.exp(-x / width)
    return peak * curve / curve.max()


def test_events_are_through_plane_jumps_of_the_unapplied_pose() -> None:
    affine = np.diag([2.0, 2.0, 6.0, 1.0])
    centre = np.zeros(3)
    n = 30
    estimated = np.zeros((n, 6))
    estimated[8:, 2] = 2.0  # the head settles 2 mm through the slab at frame 8 ...
    estimated[20:, 3] = 1.5  # ... and tilts 1.5° about x at frame 20 (2.1 mm at 80 mm)
    estimated[:, 0] = np.linspace(0.0, 5.0, n)  # an in-plane drift is the registration's business
    estimated[:, 2] += np.linspace(0.0, 3.0, n)  # a through-plane drift of 0.1 mm per frame is no event
    applied = estimated * np.array([1, 1, 0, 0, 0, 1])  # thick slices: in-plane part applied
    trusted = np.ones(n, dtype=bool)
    track = through_plane_displacement(estimated, applied, trusted, affine, centre)
    events, jumps = through_plane_events(track)
    assert events.tolist() == [8, 20]
    assert jumps[0] == pytest.approx(2.0 + 3.0 / 29, abs=1e-6)
    # the cube corner (y, z) = (80, 80) moves furthest along z: 80·sin θ + 80·(1 − cos θ)
    tilt = 80 * np.sin(np.radians(1.5)) + 80 * (1 - np.cos(np.radians(1.5)))
    assert jumps[1] == pytest.approx(tilt + 3.0 / 29, rel=1e-6)
    # applied in full (thin slices, the resampling moved the anatomy back): nothing left to level
    track = through_plane_displacement(estimated, estimated, trusted, affine, centre)
    assert through_plane_events(track)[0].size == 0
    # an untrusted estimate (rejected by the motion checks) repeats the frame before
    untrusted = trusted.copy()
    untrusted[8] = False
    track = through_plane_displacement(estimated, applied, untrusted, affine, centre)
    assert through_plane_events(track)[0].tolist() == [9, 20]


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_known_steps_are_levelled_and_steady_voxels_left_alone(modality: str) -> None:
    rng = np.random.default_rng(3)
    times = np.arange(50) * 1.5
    shape = (20, 20, 2)
    # tissue bolus from 12 s (frame 8); an early baseline event (frame 4) and one after the peak (30)
    tissue = _bolus(times, 12.0, 1.0, 4.0)
    if modality == "CT":
        clean = 40.0 + 30.0 * tissue
        step_before, step_after = 25.0, -40.0  # HU: a voxel at the skull gains / loses bone
        noise = 2.0
    else:
        clean = 1000.0 * np.exp(-0.2 * tissue)  # an 18 % signal drop at the peak
        step_before, step_after = 0.06, -0.08  # log signal: partial-volume change of 6–8 %
        noise = 4.0
    data = np.broadcast_to(clean, (*shape, times.size)).astype(np.float64).copy()
    stepped = np.zeros(shape, dtype=bool)
    stepped[5:15, 5:15, :] = True
    artery = np.zeros(shape, dtype=bool)
    artery[8:10, 8:10, :] = True  # inside the stepped square: a vessel whose step is small for it
    vessel = _bolus(times, 10.0, 1.0, 1.5)
    data[artery] = 40.0 + 500.0 * vessel if modality == "CT" else 1000.0 * np.exp(-2.0 * vessel)
    for k, size in ((4, step_before), (30, step_after)):
        if modality == "CT":
            data[stepped, k:] += size
        else:
            data[stepped, k:] *= np.exp(size)
    data += rng.normal(0.0, noise, data.shape)
    data = data.astype(np.float32)
    truth = np.broadcast_to(clean, data.shape).copy()
    truth[artery] = 40.0 + 500.0 * vessel if modality == "CT" else 1000.0 * np.exp(-2.0 * vessel)
    tissue_voxels = stepped & ~artery
    events = np.array([4, 30])
    result = level_steps(data, times, events, np.array([2.0, 2.0]), arrival_index=8, modality=modality)
    assert result.levelled[stepped].mean() > 0.99
    assert result.levelled[~stepped].mean() < 0.02  # 3 standard errors: a few noise voxels at most
    err = np.abs(data[tissue_voxels] - truth[tissue_voxels]).mean()
    assert err < 2.0 * noise, err  # back at the reference frame's level, to about the noise
    # the bolus is untouched: the levelled curves' mean is the clean curve within 5 % of its bolus
    scale = 30.0 if modality == "CT" else 1000.0 * (1 - np.exp(-0.2))
    assert np.abs(data[tissue_voxels].mean(axis=0) - clean).max() < 0.05 * scale
    # a step as large as the tissue's bolus keeps the voxel out of the arterial search; the same
    # step on a vessel does not
    assert result.unsure[tissue_voxels].mean() > 0.9 and not result.unsure[artery].any()
    record = result.to_dict(times, np.ones(shape, dtype=bool))
    assert record["frames"] == [4, 30] and record["times_s"] == [6.0, 45.0]
    assert 0.24 < record["levelled_brain_fraction"] < 0.27  # the stepped quarter of the slab


def test_without_events_nothing_changes() -> None:
    data = np.random.default_rng(0).normal(100.0, 5.0, (4, 4, 2, 20)).astype(np.float32)
    before = data.copy()
    result = level_steps(data, np.arange(20.0), np.zeros(0, dtype=int), np.zeros(0), 5, "CT")
    assert np.array_equal(data, before) and not result.levelled.any()


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_settling_head_on_thick_slices_is_levelled_in_the_pipeline(
    modality: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lesion study whose head settles twice through its 6 mm slices (2 mm down in the baseline,
    a 2° tilt after the peak) and stays there: the steps are found at those frames, levelled and
    flagged, and oSVD's hypoperfused region is at least as good as without the levelling."""
    from perfnet.conventional.pipeline import AnalysisOptions, analyze

    frames = 36
    poses = {
        tuple(range(3, 20)): [0.5, 0.0, -2.0, 0.0, 0.0, 0.5],
        tuple(range(20, frames)): [0.5, 0.0, -2.0, 2.0, 0.0, 0.5],
    }
    study = jerked_study(modality, poses)
    result = analyze(study.series, AnalysisOptions(method="osvd"))
    steps = result.provenance["motion"]["through_plane_steps"]
    assert steps["frames"] == [3, 20], steps
    codes = {f["code"] for f in result.provenance["qc_flags"]}
    assert "through_plane_steps" in codes
    monkeypatch.setattr(levels, "EVENT_MM", np.inf)
    plain = analyze(study.series, AnalysisOptions(method="osvd"))
    assert "through_plane_steps" not in plain.provenance["motion"]
    (dice_plain, maec_plain), (dice_levelled, maec_levelled) = (
        moving_score(study, plain),
        moving_score(study, result),
    )
    assert dice_levelled >= dice_plain - 0.03, (dice_plain, dice_levelled)
    assert maec_levelled <= maec_plain + 0.4, (maec_plain, maec_levelled)
