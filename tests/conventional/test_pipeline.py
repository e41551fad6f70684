"""`perfnet analyze` end to end on phantom studies: written maps against the truth."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from perfnet.cli import main
from perfnet.conventional.pipeline import AnalysisOptions, analyze
from perfnet.io import load_map, save_series_nifti
from perfnet.phantom import PhantomConfig, PhantomStudy, simulate_study

MAPS = ("cbf", "cbv", "mtt", "ttp", "tmax")


@functools.lru_cache(maxsize=4)
def ct_study(seed: int = 21, motion: bool = False, coverage_mm: float = 60.0) -> PhantomStudy:
    cfg = PhantomConfig.draw(
        seed, "CT", matrix=96, slices=6, coverage_mm=coverage_mm, frames=70, frame_interval_s=1.0,
        timing="uniform", arrival_s=6.0, lesion="core", territory="MCA", lesion_radius_mm=40.0,
        dose_mas=200.0, motion=motion,
        motion_translation_mm=2.0, motion_rotation_deg=2.0,
    )  # fmt: skip
    return simulate_study(cfg)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_analyze_cli_writes_the_output_set_and_maps_match_truth(tmp_path: Path) -> None:
    study = ct_study()
    series_path = save_series_nifti(study.series, tmp_path / "ctp.nii.gz", dtype=np.int16)
    out = tmp_path / "out"
    assert main(["analyze", str(series_path), "--out", str(out), "--method", "osvd"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            *(f"{m}.nii.gz" for m in MAPS),
            *(f"{m}.nii.gz" for m in ("brain_mask", "core", "hypoperfused", "penumbra")),
            *("aif.json", "lesions.json", "provenance.json", "report.html", "figures"),
            ".perfnet-output.json",  # the manifest: run id and every file of the set
        ]
    )
    truth = study.truth
    brain = truth.masks["brain"]
    maps = {}
    for name in MAPS:
        maps[name], affine = load_map(out / f"{name}.nii.gz")
        np.testing.assert_allclose(affine, study.series.affine, atol=1e-4)
    mask, _ = load_map(out / "brain_mask.nii.gz")
    assert (mask[brain] > 0).mean() > 0.97  # the automatic mask covers the parenchyma
    # hypoperfusion (Tmax > 6 s) and CBV against the truth
    assert _dice(maps["tmax"] > 6, truth.masks["hypoperfused"]) > 0.7
    # CBV from area ratios is unbiased: its mean follows the truth, in brain and in the lesion
    # (means, not medians: grey and white matter make the CBV histogram bimodal, and noise moves
    # the median of a bimodal histogram by far more than it moves the mean)
    for region in (brain, truth.masks["hypoperfused"]):
        ratio = maps["cbv"][region].mean() / truth.maps["cbv"][region].mean()
        assert 0.85 < ratio < 1.2, ratio
    # CBF and MTT: per-voxel estimates are noisy and regularised; their means follow the truth
    for name in ("cbf", "mtt"):
        ratio = maps[name][brain].mean() / truth.maps[name][brain].mean()
        assert 0.6 < ratio < 1.5, (name, ratio)
    # TTP in normal tissue within two frames
    healthy = brain & ~truth.masks["hypoperfused"]
    assert np.median(np.abs(maps["ttp"][healthy] - truth.maps["ttp"][healthy])) < 2.0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["method"] == "osvd" and provenance["perfnet_version"]
    assert {"motion correction", "bilateral filter", "arterial input"} <= set(provenance["seconds"])
    aif = json.loads((out / "aif.json").read_text())
    assert len(aif["aif"]) == study.series.n_frames and len(aif["aif_voxels"]) >= 1
    # lesion masks and volumes against the truth
    lesions = json.loads((out / "lesions.json").read_text())
    hypo, _ = load_map(out / "hypoperfused.nii.gz")
    assert _dice(hypo > 0.5, truth.masks["hypoperfused"]) > 0.7
    true_ml = truth.lesion_volumes_ml["hypoperfused"]
    assert abs(lesions["volumes_ml"]["hypoperfused"] - true_ml) < 0.3 * true_ml + 2.0
    assert lesions["settings"]["tmax_threshold_s"] == 6.0 and lesions["method"] == "osvd"
    assert lesions["affected_side"] == study.config.hemisphere


@pytest.mark.parametrize("method", ["ssvd", "csvd", "tikhonov", "boxnlr"])
def test_every_method_runs_through_the_pipeline(method: str) -> None:
    study = ct_study()
    result = analyze(study.series, AnalysisOptions(method=method, motion_correction=False))
    brain = study.truth.masks["brain"]
    assert result.maps.method == method
    for name in MAPS:
        assert np.isfinite(result.maps[name]).all()
    ratio = np.median(result.maps["cbv"][brain]) / np.median(study.truth.maps["cbv"][brain])
    assert 0.7 < ratio < 1.3


def test_motion_is_corrected_and_reported() -> None:
    # 6 mm slices, up to 2 mm / 2 deg of 6-DOF motion: through-plane motion mixes neighbouring thick
    # slices (skull included), which no rigid correction undoes; still, the maps must stay usable
    study = ct_study(seed=22, motion=True, coverage_mm=36.0)
    result = analyze(study.series, AnalysisOptions(method="csvd"))
    motion = result.provenance["motion"]
    assert len(motion["parameters"]) == study.series.n_frames
    true_peak = np.abs(study.truth.motion[:, :3]).max()
    assert motion["max_displacement_mm"] > 0.5 * true_peak
    assert "large_motion" in {f["code"] for f in result.provenance["qc_flags"]}
    brain, hypo = study.truth.masks["brain"], study.truth.masks["hypoperfused"]
    assert _dice(result.maps["tmax"] > 6, hypo) > 0.55
    # the AIF is rescaled by a bolus-shaped VOF, not by a motion step at the skull
    ratio = result.maps["cbv"][brain].mean() / study.truth.maps["cbv"][brain].mean()
    assert 0.7 < ratio < 1.4, ratio


def test_user_masks_and_flags(tmp_path: Path) -> None:
    study = ct_study()
    brain = study.truth.masks["brain"]
    aif_mask = study.anatomy.artery_pv > 0.9
    result = analyze(study.series, AnalysisOptions(method="csvd"), brain_mask=brain, aif_mask=aif_mask)
    assert result.provenance["brain_mask"] == "user" and result.aif.source == "mask"
    np.testing.assert_array_equal(result.maps.brain_mask, brain)
    assert all({"code", "message", "value"} <= set(flag) for flag in result.provenance["qc_flags"])


def test_truncated_bolus_is_flagged() -> None:
    cfg = PhantomConfig.draw(
        23, "CT", matrix=64, slices=4, frames=30, frame_interval_s=1.0, timing="uniform", arrival_s=10.0,
        lesion="core", lesion_delay_s=12.0, motion=False,
    )  # fmt: skip
    result = analyze(simulate_study(cfg).series, AnalysisOptions(method="csvd", motion_correction=False))
    assert "truncated_bolus" in {f["code"] for f in result.provenance["qc_flags"]}


def test_analyze_bad_input_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "flat.nii.gz"
    series = ct_study().series
    from perfnet.io.types import PerfusionSeries

    flat = PerfusionSeries(
        np.full((8, 8, 2, 10), -1000.0, np.float32), series.times[:10], series.affine, "CT"
    )
    save_series_nifti(flat, bad)
    out = tmp_path / "out"
    code = main(["analyze", str(bad), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("perfnet: error: ") and not out.exists()
    code = main(["analyze", str(tmp_path / "missing.nii.gz"), "--out", str(out)])
    assert code == 2 and not out.exists()
