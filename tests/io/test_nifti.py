"""NIfTI series and maps: round trips, frame-time sources and one-line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perfnet.errors import PerfnetInputError
from perfnet.io import PerfusionMaps, load_map, load_series, save_series_nifti, write_maps
from perfnet.io.types import PerfusionSeries


def _series(modality: str = "CT", times=None) -> PerfusionSeries:
    rng = np.random.default_rng(0)
    data = rng.normal(40, 10, (6, 5, 3, 7)).astype(np.float32)
    affine = np.diag([0.8, 0.9, 5.0, 1.0])
    affine[:3, 3] = [-2.0, 3.0, 10.0]
    times = np.array([0, 1, 2, 3.5, 5, 7, 9.5]) if times is None else times
    return PerfusionSeries(data, times, affine, modality, echo_time=0.03 if modality == "MR" else None)


def _write_raw(path: Path, data: np.ndarray, zooms=None, time_unit: str = "unknown") -> Path:
    image = nib.Nifti1Image(data, np.eye(4))
    if zooms is not None:
        image.header.set_zooms(zooms)
    image.header.set_xyzt_units(xyz="mm", t=time_unit)
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_series_round_trip(tmp_path: Path, modality: str) -> None:
    series = _series(modality)
    path = save_series_nifti(series, tmp_path / "study.nii.gz")
    sidecar = json.loads((tmp_path / "study.json").read_text())
    assert sidecar["Modality"] == modality and len(sidecar["FrameTimes"]) == 7
    back = load_series(path)
    np.testing.assert_allclose(back.data, series.data, rtol=0, atol=1e-5)
    np.testing.assert_allclose(back.times, series.times)
    np.testing.assert_allclose(back.affine, series.affine, atol=1e-5)
    assert back.modality == modality
    assert back.echo_time == series.echo_time
    assert back.voxel_size == pytest.approx((0.8, 0.9, 5.0), abs=1e-5)
    assert back.meta["frame_times_source"] == "sidecar FrameTimes"


def test_int16_storage_rounds(tmp_path: Path) -> None:
    series = _series()
    back = load_series(save_series_nifti(series, tmp_path / "ct.nii.gz", dtype=np.int16))
    np.testing.assert_array_equal(back.data, np.rint(series.data))


@pytest.mark.parametrize(
    ("unit", "value", "expected"), [("sec", 1.5, 1.5), ("msec", 800.0, 0.8), ("usec", 2e6, 2.0)]
)
def test_frame_times_from_pixdim(tmp_path: Path, unit: str, value: float, expected: float) -> None:
    path = _write_raw(tmp_path / "x.nii.gz", np.zeros((4, 4, 2, 5), np.float32), (1, 1, 1, value), unit)
    series = load_series(path, modality="CT")
    np.testing.assert_allclose(series.times, np.arange(5) * expected)
    assert series.meta["frame_times_source"] == f"pixdim[4] ({unit})"


def test_sidecar_repetition_time_and_cli_override(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.nii.gz", np.zeros((4, 4, 2, 5), np.float32), (1, 1, 1, 1))
    (tmp_path / "x.json").write_text(json.dumps({"Modality": "MR", "RepetitionTime": 1.6, "EchoTime": 30}))
    series = load_series(path)
    np.testing.assert_allclose(series.times, np.arange(5) * 1.6)
    assert series.echo_time == pytest.approx(0.03)  # ms converted
    overridden = load_series(path, frame_interval=0.5, modality="CT")
    np.testing.assert_allclose(overridden.times, np.arange(5) * 0.5)
    assert overridden.modality == "CT"


def _assert_one_line(exc: pytest.ExceptionInfo, path: Path, words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    assert words in message


def test_no_frame_times(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.nii.gz", np.zeros((4, 4, 2, 5), np.float32), (1, 1, 1, 1), "unknown")
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path, modality="CT")
    _assert_one_line(exc, path, "no frame times")


def test_3d_file(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.nii.gz", np.zeros((4, 4, 2), np.float32))
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path, modality="CT", frame_interval=1.0)
    _assert_one_line(exc, path, "expected a 4D series")


def test_nan_values(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 2, 5), np.float32)
    data[1, 2, 0, 3] = np.nan
    path = _write_raw(tmp_path / "x.nii.gz", data, (1, 1, 1, 1), "sec")
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path, modality="CT")
    _assert_one_line(exc, path, "NaN")


def test_truncated_gzip(tmp_path: Path) -> None:
    path = save_series_nifti(_series(), tmp_path / "x.nii.gz")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path)
    _assert_one_line(exc, path, "truncated or corrupt")


def test_not_nifti(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path)
    assert str(path) in str(exc.value)


def test_frame_times_count_mismatch_and_modality(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.nii.gz", np.zeros((4, 4, 2, 5), np.float32))
    (tmp_path / "x.json").write_text(json.dumps({"Modality": "CT", "FrameTimes": [0, 1, 2]}))
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path)
    _assert_one_line(exc, tmp_path / "x.json", "3 times for 5 frames")
    (tmp_path / "x.json").write_text(json.dumps({"FrameTimes": [0, 1, 2, 3, 4]}))
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path)
    _assert_one_line(exc, path, "modality unknown")
    (tmp_path / "x.json").write_text("{broken")
    with pytest.raises(PerfnetInputError) as exc:
        load_series(path)
    _assert_one_line(exc, tmp_path / "x.json", "unreadable JSON sidecar")


def test_non_increasing_times(tmp_path: Path) -> None:
    with pytest.raises(PerfnetInputError, match="not strictly increasing"):
        _series(times=np.array([0, 1, 1, 2, 3, 4, 5.0]))


def test_maps_round_trip(tmp_path: Path) -> None:
    series = _series()
    rng = np.random.default_rng(1)
    shape = series.spatial_shape
    maps = PerfusionMaps(
        maps={"cbf": rng.uniform(0, 80, shape), "tmax": rng.uniform(0, 20, shape)},
        affine=series.affine,
        brain_mask=rng.uniform(size=shape) > 0.3,
        method="test",
        masks={"core": rng.uniform(size=shape) > 0.8},
    )
    written = write_maps(maps, tmp_path / "out")
    assert sorted(p.name for p in written) == [
        "brain_mask.nii.gz",
        "cbf.nii.gz",
        "core.nii.gz",
        "tmax.nii.gz",
    ]
    cbf, affine = load_map(tmp_path / "out" / "cbf.nii.gz")
    np.testing.assert_allclose(cbf, maps["cbf"], rtol=1e-6)
    np.testing.assert_allclose(affine, series.affine, atol=1e-5)
    assert nib.load(tmp_path / "out" / "cbf.nii.gz").get_data_dtype() == np.float32
    mask, _ = load_map(tmp_path / "out" / "brain_mask.nii.gz")
    np.testing.assert_array_equal(mask.astype(bool), maps.brain_mask)
