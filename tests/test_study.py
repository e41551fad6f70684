"""The study API: `perfnet.analyze` on a path or a series, StudyResult, save(), and registries
that take a new method or writer in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import perfnet
from perfnet.cli import main
from perfnet.io import save_series_nifti
from perfnet.io.types import PerfusionMaps, PerfusionSeries
from perfnet.registry import METHODS, method_names
from phantoms import small_study


@pytest.fixture(scope="module")
def series() -> PerfusionSeries:
    return small_study(31, "CT", matrix=64, slices=4, frames=40, motion=False, lesion="core").series


def test_public_api_analyze_and_save(series: PerfusionSeries, tmp_path: Path) -> None:
    from perfnet import PerfusionMaps as Maps
    from perfnet import PerfusionSeries as Series
    from perfnet import StudyResult, analyze, load_series

    assert Series is PerfusionSeries and Maps is PerfusionMaps
    path = save_series_nifti(series, tmp_path / "ctp.nii.gz")
    result = analyze(load_series(path), "osvd", motion_correction=False)
    assert isinstance(result, StudyResult) and result.method == "osvd"
    text = repr(result)
    assert text.startswith("StudyResult(osvd, CT 64×64×4×40: core") and "QC " in text and len(text) < 250
    assert result.verdict in ("ok", "review", "unreliable")
    assert result.provenance["qc_verdict"] == result.verdict
    assert str(path) not in json.dumps(result.provenance, default=str)  # no input path unless asked
    written = result.save(tmp_path / "out", formats=("nifti",))
    assert (tmp_path / "out" / "tmax.nii.gz") in written and not (tmp_path / "out" / "report.html").exists()
    saved = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert saved["run_id"] == result.run_id


def test_a_new_method_and_writer_are_one_registration_line(
    series: PerfusionSeries, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from perfnet.io.writers import WRITERS, register_writer

    def toy(series: PerfusionSeries, method: str, brain_mask: np.ndarray | None = None, **_: object):
        """Tmax 8 s in the left half of the brain, CBF 50 everywhere: a known hypoperfused half."""
        brain = series.data.std(axis=3) > 0 if brain_mask is None else brain_mask
        nx = series.spatial_shape[0]
        tmax = np.where(brain, 2.0, 0.0)
        tmax[: nx // 2] = np.where(brain[: nx // 2], 8.0, 0.0)
        cbf = np.where(brain, 50.0, 0.0)
        maps = {"cbf": cbf, "cbv": cbf / 12, "mtt": cbf * 0 + 4, "ttp": tmax + 5, "tmax": tmax}
        provenance = {"method": method, "qc_flags": [], "seconds": {}, "input": {}}
        return PerfusionMaps(maps, series.affine, brain, method, provenance), series, None

    def csv_volumes(result: perfnet.StudyResult, folder: Path, **_: object) -> list[Path]:
        path = folder / "volumes.csv"
        v = result.lesions["volumes_ml"]
        path.write_text("core,hypoperfused\n" + f"{v['core']},{v['hypoperfused']}\n")
        return [path]

    perfnet.register_method("toy", toy, description="a method of the tests")
    register_writer("csv", csv_volumes)
    try:
        assert "toy" in method_names()
        result = perfnet.analyze(series, "toy")
        assert result.lesions["volumes_ml"]["hypoperfused"] > 5 and result.lesions["volumes_ml"]["core"] == 0
        result.save(tmp_path / "lib", formats=("nifti", "csv"))
        assert (tmp_path / "lib" / "volumes.csv").read_text().startswith("core,hypoperfused")
        path = save_series_nifti(series, tmp_path / "ctp.nii.gz")
        assert (
            main(["analyze", str(path), "--out", str(tmp_path / "cli"), "--method", "toy", "--no-report"])
            == 0
        )
        lesions = json.loads((tmp_path / "cli" / "lesions.json").read_text())
        assert lesions["method"] == "toy" and lesions["volumes_ml"]["hypoperfused"] > 5
        with pytest.raises(perfnet.errors.PerfnetInputError, match="unknown format"):
            result.save(tmp_path / "bad", formats=("nifti", "tiff"))
    finally:
        METHODS.pop("toy", None)
        WRITERS.pop("csv", None)
    capsys.readouterr()


def test_unknown_method_is_an_input_error(series: PerfusionSeries) -> None:
    with pytest.raises(perfnet.errors.PerfnetInputError, match="unknown method 'magic'"):
        perfnet.analyze(series, "magic")


def test_hypoperfusion_on_both_sides_joins_the_study_qc(series: PerfusionSeries, tmp_path: Path) -> None:
    """The lesion check (perfnet.qc.lesion_flags) is merged into the study's flags and verdict: the
    one-sided core lesion of the phantom raises nothing; a Tmax threshold of 2 s, which most healthy
    tissue of this phantom exceeds (median Tmax 3.2 s), puts hypoperfusion on both sides."""
    one_sided = perfnet.analyze(series, "osvd", motion_correction=False)
    sides = one_sided.lesions["hypoperfused_by_side_ml"]
    assert sides["contralateral"] < 10.0 < sides["affected"]
    assert "bilateral_hypoperfusion" not in {f["code"] for f in one_sided.qc_flags}
    both = perfnet.analyze(series, "osvd", motion_correction=False, tmax_threshold_s=2.0)
    sides = both.lesions["hypoperfused_by_side_ml"]
    assert sides["contralateral"] > 0.5 * sides["affected"] > 100.0
    assert [f["code"] for f in both.lesions["qc_flags"]] == ["bilateral_hypoperfusion"]
    assert "bilateral_hypoperfusion" in {f["code"] for f in both.qc_flags}
    assert both.verdict != "ok" and both.provenance["qc"]["verdict"] == both.verdict
    both.save(tmp_path / "out", formats=("nifti",))
    saved = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert "bilateral_hypoperfusion" in saved["qc"]["flags"]
