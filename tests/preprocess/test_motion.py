"""Rigid motion correction: known transforms, the phantom's own motion, and no motion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from perfnet.preprocess.motion import (
    block_mean,
    level_affine,
    motion_correct,
    sphere_displacement,
    volume_centre,
)
from perfnet.spatial import resample_frames, rigid_matrix, voxel_map
from phantoms import small_study

GRID = {"matrix": 128, "slices": 8, "coverage_mm": 48.0, "frames": 30}


def _brain_points(study) -> np.ndarray:
    index = np.argwhere(study.truth.masks["brain"])
    return np.c_[index, np.ones(len(index))] @ study.series.affine[:3].T


def _displacement(params: np.ndarray, centre: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(T, P, 3) displacement of world points under each pose."""
    out = []
    for p in params:
        m = rigid_matrix(np.asarray(p, dtype=float), centre)
        out.append(points @ m[:3, :3].T + m[:3, 3] - points)
    return np.array(out)


def _move(study, params: np.ndarray) -> np.ndarray:
    series = study.series
    centre = volume_centre(series.affine, series.shape)
    maps = np.stack([voxel_map(rigid_matrix(p, centre), series.affine) for p in params])
    return resample_frames(series.data, maps, cval=-1000.0 if series.modality == "CT" else 0.0)


@pytest.mark.parametrize(("seed", "modality"), [(1, "CT"), (2, "MR")])
def test_known_in_plane_motion_is_recovered_and_undone(seed: int, modality: str) -> None:
    study = small_study(seed, modality, noise=False, motion=False, **GRID)
    series = study.series
    n, k = series.n_frames, series.n_frames // 3
    truth = np.zeros((n, 6))
    truth[k:] = [2.0, 0.0, 0.0, 0.0, 0.0, 2.0]  # 2 mm and 2° in-plane from frame k on
    moved = _move(study, truth)
    result = motion_correct(moved, series.affine, reference=0)
    points = _brain_points(study)
    error = _displacement(result.parameters, result.centre, points) - _displacement(
        truth, result.centre, points
    )
    assert np.abs(error[..., :2]).max() < 0.5 * series.voxel_size[0]
    # compare lightly smoothed interior slices (double trilinear interpolation blurs edges a little)
    inner = study.truth.masks["brain"].copy()
    inner[..., [0, -1]] = False

    def rms(frames: np.ndarray) -> float:
        smooth = ndimage.gaussian_filter(frames[..., k:] - series.data[..., k:], (1, 1, 0, 0))
        return float(np.sqrt(np.mean(smooth[inner] ** 2)))

    assert rms(result.data) < rms(moved) / 3.0
    assert result.data.dtype == np.float32 and result.data.shape == series.data.shape
    assert result.displacement_mm[:k].max() < 0.05 and result.displacement_mm[k:].min() > 2.0


def test_known_six_dof_motion_is_recovered() -> None:
    study = small_study(3, "CT", noise=True, motion=False, **GRID)
    series = study.series
    n, k = series.n_frames, series.n_frames // 2
    truth = np.zeros((n, 6))
    truth[k:] = [1.5, -1.0, 0.5, 1.0, -1.0, 2.0]
    moved = _move(study, truth)
    result = motion_correct(moved, series.affine, reference=0)
    points = _brain_points(study)
    error = _displacement(result.parameters, result.centre, points) - _displacement(
        truth, result.centre, points
    )
    voxel = np.asarray(series.voxel_size)
    assert np.abs(error / voxel).max(axis=(0, 1))[:2].max() < 0.5  # in-plane, voxels
    assert np.abs(error[..., 2]).max() < 0.5 * voxel[2]  # through-plane
    # the corrected frames are as close to the originals as the true transform makes them
    back = np.stack([voxel_map(np.linalg.inv(rigid_matrix(p, result.centre)), series.affine) for p in truth])
    ideal = resample_frames(moved, back, cval=-1000.0)
    brain = study.truth.masks["brain"]
    err_corrected = np.abs(result.data - series.data)[brain][:, k:].mean()
    err_ideal = np.abs(ideal - series.data)[brain][:, k:].mean()
    err_moved = np.abs(moved - series.data)[brain][:, k:].mean()
    assert err_corrected < 1.25 * err_ideal and err_corrected < err_moved


@pytest.mark.parametrize(("seed", "modality"), [(2, "CT"), (5, "MR")])
def test_phantom_motion_is_recovered(seed: int, modality: str) -> None:
    study = small_study(seed, modality, motion=True, **GRID)
    series, cfg = study.series, study.config
    assert np.abs(study.truth.motion).max() > 0.5
    result = motion_correct(series.data, series.affine, reference=0, apply=False)
    assert result.data is series.data or np.shares_memory(result.data, series.data)
    phantom_centre = np.array([cfg.head_offset_mm[0], cfg.head_offset_mm[1], 0.0])
    points = _brain_points(study)
    error = _displacement(result.parameters, result.centre, points) - _displacement(
        study.truth.motion, phantom_centre, points
    )
    assert np.abs(error[..., :2]).max() < 0.5 * series.voxel_size[0]


@pytest.mark.parametrize(("seed", "modality"), [(1, "CT"), (4, "CT"), (1, "MR"), (2, "MR")])
def test_no_motion_gives_zero_pose(seed: int, modality: str) -> None:
    study = small_study(seed, modality, motion=False, **GRID)
    result = motion_correct(study.series.data, study.series.affine, apply=False)
    params = np.abs(result.parameters)
    assert params[:, [0, 1, 5]].max() < 0.1  # in-plane: tx, ty (mm), rz (deg)
    # through-plane (tz, rx, ry): 6 mm slices; the DSC signal drop biases tz a little
    assert params[:, [2, 3, 4]].max() < (0.1 if modality == "CT" else 0.5)


def test_reference_mean_and_middle_frame() -> None:
    study = small_study(1, "CT", noise=False, motion=False, **GRID)
    series = study.series
    truth = np.zeros((series.n_frames, 6))
    truth[:10] = [-1.5, 1.0, 0.0, 0.0, 0.0, -1.5]  # the head moves back at frame 10
    moved = _move(study, truth)
    middle = motion_correct(moved, series.affine, reference=20, apply=False)
    np.testing.assert_allclose(middle.parameters[:, [0, 1, 5]], truth[:, [0, 1, 5]], atol=0.1)
    # through-plane: 6 mm slices, biased by the blur of the resampled frames (see motion.py)
    np.testing.assert_allclose(middle.parameters[:, [2, 3, 4]], truth[:, [2, 3, 4]], atol=1.0)
    mean = motion_correct(moved, series.affine, reference="mean", apply=False)
    relative = mean.parameters[:10].mean(axis=0) - mean.parameters[10:].mean(axis=0)
    np.testing.assert_allclose(relative[[0, 1, 5]], truth[0, [0, 1, 5]], atol=0.2)
    assert middle.to_dict()["reference"] == 20 and mean.to_dict()["reference"] == "mean"


def test_helpers() -> None:
    data = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    small = block_mean(data, (2, 3, 1))
    assert small.shape == (2, 2, 2)
    assert small[0, 0, 0] == pytest.approx(data[:2, :3, 0].mean())
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    # the centre of block (0, 0, 0) is the mean of its voxel centres
    np.testing.assert_allclose(level_affine(affine, (2, 3, 1))[:3, 3], [0.25, 0.5, 0.0])
    np.testing.assert_allclose(volume_centre(affine, (4, 6, 2)), [0.75, 1.25, 2.5])
    shift = sphere_displacement(np.array([[3.0, 4.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 90.0]]), radius=10.0)
    np.testing.assert_allclose(shift, [5.0, 10.0 * np.sqrt(2.0)], rtol=1e-3)


def test_invalid_inputs() -> None:
    data = np.zeros((8, 8, 4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="4D"):
        motion_correct(data[..., 0], np.eye(4))
    with pytest.raises(ValueError, match="affine"):
        motion_correct(data, np.eye(3))
    with pytest.raises(ValueError, match="reference"):
        motion_correct(data, np.eye(4), reference=3)
    with pytest.raises(ValueError, match="reference"):
        motion_correct(data, np.eye(4), reference="median")
