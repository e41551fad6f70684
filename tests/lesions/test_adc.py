"""The core from an ADC map (``perfnet analyze --adc``): resampling by the affines, units, errors,
and the core of a phantom DSC study read from a synthetic ADC map of its truth core."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perfnet.cli import main
from perfnet.errors import PerfnetInputError
from perfnet.io import save_series_nifti
from perfnet.lesions import ADC_CORE_MM2_S, load_adc, segment_lesions
from perfnet.lesions.adc import resample_to
from phantoms import small_study

#: The perfusion grid of the unit tests: 64 × 64 × 8 voxels of 2 × 2 × 5 mm, origin at -64, -64, -20.
GRID = np.array([[2.0, 0, 0, -64], [0, 2.0, 0, -64], [0, 0, 5.0, -20], [0, 0, 0, 1]])
SHAPE = (64, 64, 8)
LESION_CENTRE_MM = np.array([20.0, 10.0, 0.0])
LESION_RADIUS_MM = 18.0


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).T.reshape(*shape, 3)


def _adc_image(scale: float = 1e6) -> tuple[np.ndarray, np.ndarray]:
    """An ADC map on a finer, shifted, rotated grid (1.2 mm in-plane, 3 mm slices, 5° about z):
    800 × 10⁻⁶ mm²/s, 450 in a sphere, 3000 (CSF) in a rim; values × ``scale`` (the file's units)."""
    c, s = np.cos(np.radians(5)), np.sin(np.radians(5))
    affine = np.array(
        [[1.2 * c, -1.2 * s, 0, -70], [1.2 * s, 1.2 * c, 0, -75], [0, 0, 3.0, -24], [0, 0, 0, 1]]
    )
    shape = (120, 120, 16)
    xyz = _world(affine, shape)
    adc = np.full(shape, 800e-6)
    adc[np.linalg.norm(xyz - LESION_CENTRE_MM, axis=-1) < LESION_RADIUS_MM] = 450e-6
    adc[np.hypot(xyz[..., 0], xyz[..., 1]) > 58] = 3000e-6
    return (adc * scale).astype(np.float32), affine


def _brain() -> np.ndarray:
    xyz = _world(GRID, SHAPE)
    return np.hypot(xyz[..., 0], xyz[..., 1]) < 55


def _truth_core() -> np.ndarray:
    return np.linalg.norm(_world(GRID, SHAPE) - LESION_CENTRE_MM, axis=-1) < LESION_RADIUS_MM


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_resampling_follows_the_affines() -> None:
    """A linear ramp in world x sampled on another grid gives the ramp at the target's centres."""
    src = np.diag([1.5, 1.5, 3.0, 1.0])
    src[:3, 3] = [-80, -80, -30]
    ramp = _world(src, (110, 110, 20))[..., 0].astype(np.float32)
    out = resample_to(ramp, src, GRID, SHAPE)
    expected = _world(GRID, SHAPE)[..., 0]
    assert np.isfinite(out).all()
    assert np.abs(out - expected).max() < 1e-3
    far = GRID.copy()
    far[0, 3] += 500.0  # a grid beside the source: nothing to sample
    assert np.isnan(resample_to(ramp, src, far, SHAPE)).all()


@pytest.mark.parametrize(("scale", "units"), [(1e6, "1e-6 mm2/s"), (1e3, "1e-3 mm2/s"), (1.0, "mm2/s")])
def test_core_from_an_adc_map_on_another_grid_in_any_units(tmp_path: Path, scale: float, units: str) -> None:
    data, affine = _adc_image(scale)
    path = tmp_path / "adc.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    brain = _brain()
    adc = load_adc(path, GRID, brain)
    assert adc.units == units and adc.coverage == pytest.approx(1.0)
    assert np.nanmedian(adc.values[brain]) == pytest.approx(800e-6, rel=1e-4)
    truth = _truth_core() & brain
    assert _dice(adc.core() & brain, truth) > 0.93
    # the lesions: the core from diffusion, not limited to the hypoperfused tissue
    from dataclasses import replace

    from perfnet.lesions import PRESETS

    settings = replace(PRESETS["rapid"], adc_core_mm2_s=ADC_CORE_MM2_S)
    cbf = np.where(brain, 50.0, 0.0)
    tmax = np.where(brain, 2.0, 0.0)
    tmax[_world(GRID, SHAPE)[..., 0] > 25] = 9.0  # hypoperfused tissue covering part of the core
    result = segment_lesions(cbf, tmax, brain, GRID, settings, adc=adc.values)
    assert _dice(result.core, truth) > 0.93  # CBF 50 everywhere: an rCBF rule would find none
    v = result.volumes_ml
    assert v["mismatch"] == pytest.approx(v["hypoperfused"] - v["core"])
    assert v["penumbra"] == pytest.approx(float((result.hypoperfused & ~result.core).sum()) * 0.02)
    assert v["penumbra"] > v["mismatch"]  # part of the core lies outside the hypoperfused tissue


def test_bad_adc_maps_are_refused_naming_the_file(tmp_path: Path) -> None:
    brain = _brain()
    data, affine = _adc_image()

    def save(name: str, array: np.ndarray, aff: np.ndarray = affine) -> Path:
        path = tmp_path / name
        nib.save(nib.Nifti1Image(array.astype(np.float32), aff), str(path))
        return path

    nan = data.copy()
    nan[3, 3, 3] = np.nan
    far = affine.copy()
    far[0, 3] += 400.0
    cases = {
        save("nan.nii.gz", nan): "non-finite",
        save("fa.nii.gz", np.full_like(data, 0.3)): "is it an ADC map",
        save("b0.nii.gz", np.full_like(data, 40000.0)): "is it an ADC map",
        save("elsewhere.nii.gz", data, far): "covers 0 %",
        save("4d.nii.gz", np.stack([data, data], axis=-1)): "3D",
    }
    for path, message in cases.items():
        with pytest.raises(PerfnetInputError) as err:
            load_adc(path, GRID, brain)
        assert message in str(err.value) and path.name in str(err.value), str(err.value)


def test_analyze_dsc_with_adc_takes_the_core_from_diffusion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DSC phantom with a core: with an ADC map of its truth core (another grid, scanner units)
    the core is the truth core; a bad ADC file ends with exit 2 and writes nothing."""
    study = small_study(5252, "MR", lesion="core", motion=False)
    truth = study.truth
    series_path = save_series_nifti(study.series, tmp_path / "dsc.nii.gz")
    # the ADC on a grid of half the in-plane pixel size, sampled from the truth core in world space
    fine = study.series.affine.copy()
    fine[:3, :2] /= 2
    fine[:3, 3] -= (study.series.affine[:3, 0] + study.series.affine[:3, 1]) / 4  # same field of view
    nx, ny, nz = study.series.spatial_shape
    src = np.linalg.inv(study.series.affine) @ fine
    ijk = np.indices((2 * nx, 2 * ny, nz)).reshape(3, -1)
    nearest = np.rint(src[:3, :3] @ ijk + src[:3, 3:4]).astype(int)
    core_fine = truth.masks["core"][tuple(np.clip(nearest, 0, [[nx - 1], [ny - 1], [nz - 1]]))]
    adc = np.where(core_fine, 480.0, 820.0).reshape(2 * nx, 2 * ny, nz).astype(np.int16)
    adc_path = tmp_path / "adc.nii.gz"
    nib.save(nib.Nifti1Image(adc, fine), str(adc_path))

    out = tmp_path / "out"
    code = main(["analyze", str(series_path), "--out", str(out), "--adc", str(adc_path), "--dicom"])
    printed = capsys.readouterr().out
    assert code == 0 and " mL (ADC)" in printed
    lesions = json.loads((out / "lesions.json").read_text())
    assert lesions["core_source"] == "adc" and lesions["adc"]["units_in_file"] == "1e-6 mm2/s"
    assert "ADC < 620" in lesions["core_rule"] and lesions["settings"]["adc_core_mm2_s"] == ADC_CORE_MM2_S
    assert "core from the ADC map (diffusion)" in (out / "report.html").read_text()
    assert "core_note" not in lesions  # the note that a DSC core from rCBF is only a proxy
    core = np.asarray(nib.load(out / "core.nii.gz").dataobj) > 0
    truth_core = truth.masks["core"] & truth.masks["brain"]
    assert truth_core.sum() * lesions["adc"]["brain_coverage"] > 0
    assert _dice(core, truth_core) > 0.85, (int(core.sum()), int(truth_core.sum()))

    # without the ADC map the core is the perfusion proxy, and lesions.json and the report say so
    out3 = tmp_path / "out3"
    assert main(["analyze", str(series_path), "--out", str(out3)]) == 0
    capsys.readouterr()
    plain = json.loads((out3 / "lesions.json").read_text())
    assert plain["core_source"] == "perfusion" and "--adc" in plain["core_note"]
    assert "perfusion proxy" in (out3 / "report.html").read_text()

    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.full(adc.shape, 0.3, np.float32), fine), str(bad))
    out2 = tmp_path / "out2"
    code = main(["analyze", str(series_path), "--out", str(out2), "--adc", str(bad), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and not out2.exists()
    assert err.count("\n") == 1 and "bad.nii.gz" in err and "ADC" in err


def test_adc_from_a_dicom_folder_beside_other_series(tmp_path: Path) -> None:
    """A DICOM folder holding a b0 and an ADC series (scanner integers in 10⁻⁶ mm²/s): the ADC
    series is found by its description and gives the core; ambiguous folders are refused."""
    from dicom_factory import write_volume_series

    data, affine = _adc_image()
    folder = tmp_path / "dwi"
    write_volume_series(folder, data[..., None], affine, np.zeros(1), "MR", "ep2d_diff ADC", "adc")
    write_volume_series(folder, np.full_like(data, 400.0)[..., None], affine, np.zeros(1), "MR", "b0", "b0")
    brain = _brain()
    adc = load_adc(folder, GRID, brain)
    assert adc.units == "1e-6 mm2/s"
    assert _dice(adc.core() & brain, _truth_core() & brain) > 0.93

    both = tmp_path / "two-unnamed"
    write_volume_series(both, data[..., None], affine, np.zeros(1), "MR", "diffusion map", "a")
    write_volume_series(both, data[..., None], affine, np.zeros(1), "MR", "trace", "b")
    with pytest.raises(PerfnetInputError, match="none is named ADC"):
        load_adc(both, GRID, brain)
    several = tmp_path / "b-values"
    write_volume_series(several, np.stack([data, data], -1), affine, np.arange(2.0), "MR", "ADC", "c")
    with pytest.raises(PerfnetInputError, match="2 images at one slice position"):
        load_adc(several, GRID, brain)


def test_one_dicom_study_folder_gives_both_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An exported study folder with the DSC series and the ADC series: ``analyze STUDY --adc
    STUDY`` reads the 4D series as the perfusion input and the ADC series as the core."""
    from dicom_factory import write_volume_series

    study = small_study(5252, "MR", matrix=48, slices=3, frames=30, lesion="core", motion=False)
    folder = tmp_path / "study"
    series = study.series
    write_volume_series(folder, series.data, series.affine, series.times, "MR", "ep2d_perf", "dsc")
    core = study.truth.masks["core"]
    adc = np.where(core, 480.0, 820.0)[..., None]
    write_volume_series(folder, adc, series.affine, np.zeros(1), "MR", "ep2d_diff_ADC", "adc")
    out = tmp_path / "out"
    code = main(["analyze", str(folder), "--out", str(out), "--adc", str(folder), "--no-report"])
    assert code == 0, capsys.readouterr().err
    lesions = json.loads((out / "lesions.json").read_text())
    assert lesions["core_source"] == "adc"
    found = np.asarray(nib.load(out / "core.nii.gz").dataobj) > 0
    assert _dice(found, core & study.truth.masks["brain"]) > 0.8
