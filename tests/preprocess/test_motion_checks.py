"""Motion correction never makes a frame worse than leaving it alone, and says what it cannot undo:
per-frame acceptance, unalignable frames, voxels filled from outside the slab, frame replacement."""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom import anatomy as labels
from perfnet.phantom.signal import add_noise, apply_motion
from perfnet.preprocess import motion as motion_module
from perfnet.preprocess.motion import (
    MAX_EXCLUDED_FRACTION,
    OUTSIDE_TOLERANCE_VOXELS,
    STATUSES,
    bolus_passage,
    equalise_blur,
    interpolate_frames,
    interpolation_variance,
    motion_correct,
    outside_voxels,
    replacement_verdict,
    volume_centre,
)
from perfnet.qc import motion_flags
from perfnet.spatial import resample_frames, rigid_matrix, voxel_map
from phantoms import DATA, small_study

GRID = {"matrix": 128, "slices": 8, "coverage_mm": 48.0, "frames": 30}  # as test_motion.py
SMALL = {"matrix": 96, "slices": 6, "coverage_mm": 36.0, "frames": 24}
THICK = {"matrix": 96, "slices": 8, "coverage_mm": 48.0, "frames": 40, "frame_interval_s": 1.0}
THICK |= {"timing": "uniform", "arrival_s": 8.0}
#: isolated through-plane jerks (tz mm, rx/ry deg) on 6 mm slices: frames 14–15 and 30
JERKS = {(14, 15): [0.0, 0.0, 3.0, 2.0, 0.0, 0.0], (30,): [1.0, 0.0, -3.0, 0.0, 1.5, 1.0]}


@functools.lru_cache(maxsize=4)
def jerk_study(modality: str, seed: int = 5) -> tuple[np.ndarray, object]:
    """A motion-free phantom moved by :data:`JERKS` before its noise is added (as the scanner sees
    it: the slices of the moved head, then noise): (moved signal, study)."""
    cfg = PhantomConfig.draw(seed, modality, motion=False, **THICK)
    study = simulate_study(cfg, noise=False)
    params = np.zeros((study.series.n_frames, 6))
    for frames, pose in JERKS.items():
        params[list(frames)] = pose
    centre = np.array([cfg.head_offset_mm[0], cfg.head_offset_mm[1], 0.0])
    moved = apply_motion(study.series.data, params, study.series.affine, centre, study_background(modality))
    add_noise(moved, cfg, np.random.default_rng(seed + 77))
    return moved, study


def study_background(modality: str) -> float:
    return -1000.0 if modality == "CT" else 0.0


def _move(study, params: np.ndarray) -> np.ndarray:
    series = study.series
    centre = volume_centre(series.affine, series.shape)
    maps = np.stack([voxel_map(rigid_matrix(p, centre), series.affine) for p in params])
    return resample_frames(series.data, maps, cval=study_background(series.modality))


def test_field_of_view_without_stable_anatomy_is_left_alone() -> None:
    # OSIPI's 25 × 25 × 1 × 40 concentration crop: no motion, and nothing rigid to register (the
    # structure changes from frame to frame); the registration alone "found" ~200 mm and 175°
    image = nib.load(DATA / "osipi-dsc-patient" / "test_concentration.nii")
    data = np.asarray(image.dataobj, dtype=np.float32)
    result = motion_correct(data, image.affine, reference=0)
    assert result.displacement_mm.max() < 1.0
    assert np.abs(result.parameters[:, 3:]).max() < 1.0
    assert result.status[0] == "reference" and set(result.status[1:]) == {"identity"}
    assert set(result.rejected[1:]) == {"no_anatomy"} and result.consecutive_similarity < 0.5
    np.testing.assert_array_equal(result.data, data)  # identity resampling leaves the frames
    assert result.excluded_frames.size == 0 and result.unrecoverable is None
    summary = result.to_dict()
    assert summary["frame_status"] == result.status and summary["excluded_frames"] == []
    assert summary["rejected"]["1"]["reason"] == "no_anatomy" and summary["motion_unrecoverable"] is False


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "modality"), [(1, "CT"), (2, "MR")])
def test_motion_free_thick_slice_study_stays_at_identity(seed: int, modality: str) -> None:
    study = small_study(seed, modality, motion=False, **GRID)
    result = motion_correct(study.series.data, study.series.affine, times=study.series.times, apply=False)
    assert result.displacement_mm.max() < 0.3
    assert set(result.status) <= set(STATUSES) and result.status[0] == "reference"
    # 6 mm slices: through-plane parameters that do not raise the similarity are dropped (the DSC
    # bolus would otherwise pull tz by up to ~1 mm), so nothing is sampled beyond the slab
    assert np.abs(result.parameters[:, 2:5]).max() < 0.05
    assert result.excluded_frames.size == 0 and result.unrecoverable is None
    assert result.outside is not None and not result.outside.any()
    assert np.all(result.similarity >= result.similarity_uncorrected - motion_module.SIMILARITY_TOLERANCE)


def test_bright_non_steady_state_first_frame_gives_no_spurious_motion() -> None:
    # one 128 × 128 DSC slice whose reference frame is brighter (T1 not yet at steady state:
    # steady-state factors 1 − exp(−TR/T1) of WM, GM, CSF at TR 1.5 s), as in the pediatric study
    # where the registration reported 6.7 mm
    cfg = PhantomConfig.draw(7, "MR", matrix=128, slices=1, coverage_mm=5.0, frames=40)
    cfg = cfg.replace(frame_interval_s=2.0, timing="uniform", motion=False, snr=40.0)
    study = simulate_study(cfg)
    data = study.series.data.copy()
    factor = np.ones(256, dtype=np.float32)
    factor[labels.WHITE_MATTER], factor[[labels.GREY_MATTER, labels.DEEP_GREY]] = 1.18, 1.47
    factor[labels.CSF], factor[[labels.ARTERY, labels.VEIN]] = 3.2, 1.2
    data[..., 0] *= factor[study.truth.labels]
    brain = study.truth.masks["brain"]
    assert data[..., 0][brain].mean() > 1.2 * data[..., 1][brain].mean()
    result = motion_correct(data, study.series.affine, times=study.series.times, apply=False)
    assert result.displacement_mm.max() < 1.0
    assert result.excluded_frames.size == 0


def test_wrong_estimates_are_replaced_by_the_neighbours_pose(monkeypatch: pytest.MonkeyPatch) -> None:
    study = small_study(1, "CT", noise=False, motion=False, **SMALL)
    series = study.series
    n, k = series.n_frames, 6
    truth = np.zeros((n, 6))
    truth[k:] = [2.0, -1.0, 0.0, 0.0, 0.0, 2.0]  # a lasting in-plane jump at frame k
    moved = _move(study, truth)
    register = motion_module._register

    def corrupted(*args, **kwargs):
        poses, pyramid = register(*args, **kwargs)
        poses = poses.copy()
        poses[k + 3] = [30.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # beyond the physical bounds
        poses[k + 6] = poses[k + 6] + [4.0, 3.0, 0.0, 0.0, 0.0, -3.0]  # a wrong pose within them
        poses[k + 12] = poses[k + 12] + [0.0, 0.0, 0.0, 0.0, 0.0, 20.0]  # beyond 15°
        return poses, pyramid

    monkeypatch.setattr(motion_module, "_register", corrupted)
    result = motion_correct(moved, series.affine, times=series.times, apply=False)
    assert result.rejected[k + 3] == "out_of_bounds" and result.rejected[k + 12] == "out_of_bounds"
    assert result.rejected[k + 6] in ("less_similar", "jump")
    for t in (k + 3, k + 6, k + 12):
        assert result.status[t] == "interpolated"
        # the pose between the accepted neighbours: the jump's pose, in-plane within 0.2 mm / 0.1°
        np.testing.assert_allclose(result.parameters[t, [0, 1]], truth[t, [0, 1]], atol=0.2)
        np.testing.assert_allclose(result.parameters[t, 5], truth[t, 5], atol=0.1)
    others = [t for t in range(1, n) if t not in (k + 3, k + 6, k + 12)]
    assert {result.status[t] for t in others} <= {"accepted", "in_plane"}
    # the lasting jump itself is kept: it is no isolated spike
    np.testing.assert_allclose(result.parameters[k:, [0, 1]], truth[k:, [0, 1]], atol=0.2)
    provenance = result.to_dict()["rejected"]
    assert provenance[str(k + 3)]["estimate"][0] == 30.0


def test_large_in_plane_jump_is_still_corrected() -> None:
    study = small_study(1, "CT", noise=False, motion=False, **SMALL)
    series = study.series
    n, k = series.n_frames, series.n_frames // 2
    truth = np.zeros((n, 6))
    truth[k:] = [5.0, -3.0, 0.0, 0.0, 0.0, 4.0]  # 6 mm and 4° at once, lasting
    result = motion_correct(_move(study, truth), series.affine, times=series.times, apply=False)
    assert {result.status[t] for t in range(1, n)} <= {"accepted", "in_plane"}
    np.testing.assert_allclose(result.parameters[:, [0, 1, 5]], truth[:, [0, 1, 5]], atol=0.15)
    assert result.excluded_frames.size == 0


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_through_plane_jerks_on_thick_slices_are_excluded_and_replaced(modality: str) -> None:
    moved, study = jerk_study(modality)
    series = study.series
    result = motion_correct(moved, series.affine, times=series.times)
    assert result.excluded_frames.tolist() == [14, 15, 30]
    assert result.unrecoverable is None  # single frames and a pair, each replaceable
    excluded = set(result.excluded_frames.tolist())
    assert all(result.mismatch[t] > 10 * np.median(result.mismatch) for t in excluded)
    replaced = interpolate_frames(result.data, series.times, result.excluded_frames)
    np.testing.assert_allclose(
        replaced[..., 14], (2 * result.data[..., 13] + result.data[..., 16]) / 3, atol=1e-3
    )
    np.testing.assert_allclose(
        replaced[..., 30], (result.data[..., 29] + result.data[..., 31]) / 2, atol=1e-3
    )
    kept = [t for t in range(series.n_frames) if t not in excluded]
    np.testing.assert_array_equal(replaced[..., kept], result.data[..., kept])
    # the unalignable frames were farther from the motion-free truth than the aligned ones; their
    # replacements are closer (frames 14–15 sit at the bolus peak, which a 3 s gap flattens), and
    # frame 30, after the first pass, is as close as the aligned frames are
    brain = study.truth.masks["brain"]

    def error(frames: np.ndarray, t: int) -> float:
        return float(np.abs(frames[..., t] - series.data[..., t])[brain].mean())

    aligned = np.median([error(result.data, t) for t in kept])
    for t in excluded:
        assert error(result.data, t) > aligned and error(replaced, t) < 0.8 * error(result.data, t), t
    assert error(replaced, 30) < 1.5 * aligned


def test_outside_marks_the_slab_edge_that_moved_out() -> None:
    study = small_study(3, "CT", noise=False, motion=False, **SMALL)
    series = study.series
    n, k = series.n_frames, 6
    truth = np.zeros((n, 6))
    truth[k:] = [0.0, 0.0, 4.0, 0.0, 0.0, 0.0]  # the head rises 4 mm (2/3 slice) for good
    result = motion_correct(_move(study, truth), series.affine, times=series.times, apply=False)
    assert set(result.status[k:]) == {"accepted"}  # the through-plane shift earns its blur
    assert np.all(np.abs(result.parameters[k:, 2] - 4.0) < 1.0)
    outside = result.outside
    # the corrected top slice samples above the slab: outside; the frames' bottom slice holds
    # anatomy from below the slab (2/3 of it), which the corrected bottom slice draws on (1/3 of its
    # value): outside too; the slices between them are not
    assert outside[..., -1].mean() > 0.99 and not outside[4:-4, 4:-4, 1:-1].any()
    assert result.outside_content[4:-4, 4:-4, 0].all() and not result.outside_content[4:-4, 4:-4, 1:].any()
    assert np.all(result.outside_fraction[k:] > 0.05) and np.all(result.outside_fraction[:k] == 0.0)
    assert result.to_dict()["outside_voxels"] == int(outside.sum())
    assert result.to_dict()["outside_content_voxels"] == int(result.outside_content.sum())


def test_outside_voxels_matches_a_direct_evaluation() -> None:
    rng = np.random.default_rng(0)
    shape = (40, 36, 7)
    affine = np.diag([1.8, 1.8, 6.0, 1.0])
    centre = volume_centre(affine, shape)
    poses = rng.normal(size=(6, 6)) * [3, 3, 3, 2, 2, 2]
    poses[2] = 0.0
    maps = np.stack([voxel_map(np.linalg.inv(rigid_matrix(p, centre)), affine) for p in poses])
    head = np.zeros(shape, dtype=bool)
    head[8:30, 8:30] = True
    outside, fraction = outside_voxels(maps, shape, head, frames=np.array([0, 1, 2, 3, 4]))
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    expected = np.zeros(shape, dtype=bool)
    for t, m in enumerate(maps):
        c = index @ m[:3, :3].T + m[:3, 3]
        hit = ((c < -OUTSIDE_TOLERANCE_VOXELS) | (c > np.array(shape) - 1 + OUTSIDE_TOLERANCE_VOXELS)).any(
            axis=1
        )
        hit = hit.reshape(shape)
        if t < 5:  # frame 5 is left out (an excluded frame)
            expected |= hit
        assert fraction[t] == pytest.approx((hit & head).sum() / head.sum())
    np.testing.assert_array_equal(outside, expected)
    assert fraction[2] == 0.0


def test_every_corrected_frame_carries_the_same_interpolation_blur() -> None:
    rng = np.random.default_rng(1)
    shape = (24, 20, 5)
    frames = rng.normal(size=(*shape, 3)).astype(np.float32)
    shift = np.eye(4)
    shift[0, 3] = 0.5  # frame 1 resampled half a voxel along i: blur variance ¼ along i
    whole = np.eye(4)
    whole[1, 3] = 2.0  # frame 2 moved by whole voxels along j: no blur
    maps = np.stack([np.eye(4), shift, whole])
    assert interpolation_variance(shift, shape, 0) == pytest.approx(0.25)
    assert interpolation_variance(whole, shape, 1) == pytest.approx(0.0)
    out = frames.copy()
    equalise_blur(out, maps, np.array([1.0, 1.0, 6.0]))
    kernel = np.array([0.125, 0.75, 0.125])
    expected = ndimage.correlate1d(frames[..., 0], kernel, axis=0, mode="nearest")
    np.testing.assert_allclose(out[..., 0], expected, atol=1e-5)  # i only: no frame blurred along j
    np.testing.assert_array_equal(out[..., 1], frames[..., 1])  # already the blurriest
    np.testing.assert_allclose(out[..., 2], ndimage.correlate1d(frames[..., 2], kernel, axis=0), atol=1e-5)
    # through 6 mm slices nothing is added, and a series left as acquired is left alone
    still = frames.copy()
    equalise_blur(still, np.stack([np.eye(4)] * 3), np.array([1.0, 1.0, 6.0]))
    np.testing.assert_array_equal(still, frames)


def test_interpolate_frames() -> None:
    times = np.array([0.0, 1.0, 2.0, 4.0, 5.0, 6.0])
    data = np.broadcast_to(
        np.array([0.0, 1.0, 2.0, 4.0, 5.0, 6.0], dtype=np.float32) ** 2, (2, 2, 1, 6)
    ).copy()
    out = interpolate_frames(data, times, [0, 2, 3, 5])
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 1.0, 1 + (25 - 1) / 4, 1 + 3 * (25 - 1) / 4, 25.0, 25.0])
    assert out is not data and data[0, 0, 0, 2] == 4.0
    same = interpolate_frames(data, times, [], in_place=True)
    assert same is data
    with pytest.raises(ValueError, match="excluded"):
        interpolate_frames(data, times, [6])
    with pytest.raises(ValueError, match="every frame"):
        interpolate_frames(data, times, range(6))


def test_replacement_verdict_and_bolus_passage() -> None:
    times = np.arange(60.0)
    gamma = np.where(times > 10, (times - 10) ** 3 * np.exp(-(times - 10) / 1.5), 0.0)
    for sign, level in ((1.0, 40.0), (-1.0, 800.0)):  # CT enhancement, DSC signal drop
        start, end = bolus_passage(level + sign * 30 * gamma / gamma.max(), times)
        assert 12 <= start <= 13 and 18 <= end <= 20, (start, end)
    passage = bolus_passage(gamma, times)
    width = passage[1] - passage[0]
    assert replacement_verdict(times, [], passage) is None
    assert replacement_verdict(times, [3, 40, 41], passage) is None  # outside the passage
    assert replacement_verdict(times, [15], passage) is None  # a 2 s gap in the passage
    gap = int(np.ceil(0.5 * width))
    assert "bolus passage" in replacement_verdict(times, list(range(14, 14 + gap)), passage)
    too_many = list(range(0, 60, 2))[: int(MAX_EXCLUDED_FRACTION * 60) + 1]
    assert "more than a third" in replacement_verdict(times, too_many, None)


def test_large_motion_flag_uses_the_head_motion() -> None:
    # the through-plane part of a pose may be estimated but not applied: the head still moved
    summary = {"max_displacement_mm": 1.0, "max_head_displacement_mm": 3.0, "motion_unrecoverable": False}
    assert [f["code"] for f in motion_flags(summary)] == ["large_motion"]
    assert motion_flags({"max_displacement_mm": 3.0})[0]["value"] == 3.0  # older summaries


def test_motion_unrecoverable_flag() -> None:
    summary = {"max_displacement_mm": 1.0, "motion_unrecoverable": True, "excluded_frames": [3, 4, 5]}
    flags = motion_flags(summary)
    assert [f["code"] for f in flags] == ["motion_unrecoverable"] and flags[0]["value"] == 3
    assert "cannot be aligned" in flags[0]["message"]
    assert motion_flags(summary | {"motion_unrecoverable": False}) == []
