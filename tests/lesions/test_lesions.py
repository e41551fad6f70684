"""Lesion segmentation against known answers: hand-built volumes and phantom truth masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perfnet.errors import PerfnetInputError
from perfnet.lesions import PRESETS, LesionSettings, hemisphere_sides, segment_lesions
from phantoms import small_study

RAW = LesionSettings(closing_mm=0, opening_mm=0, min_island_ml=0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _box_study(core_cbf: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 40×60×10 'brain' of 2×2×5 mm voxels (0.02 mL): CBF 50 everywhere, a right-hemisphere
    (+x) block with Tmax 10 s, CBF ``core_cbf`` in its first 10 columns."""
    brain = np.zeros((60, 80, 10), dtype=bool)
    brain[10:50, 10:70] = True
    cbf = np.where(brain, 50.0, 0.0)
    tmax = np.where(brain, 2.0, 0.0)
    tmax[35:50, 20:60, 2:8] = 10.0  # 15 × 40 × 6 = 3 600 voxels = 72 mL
    cbf[35:45, 20:60, 2:8] = core_cbf  # 10 × 40 × 6 = 2 400 voxels = 48 mL
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    return cbf, tmax, brain, affine


def test_hand_built_volumes_ratio_and_defuse3_flags() -> None:
    cbf, tmax, brain, affine = _box_study()
    r = segment_lesions(cbf, tmax, brain, affine, RAW)  # the rapid thresholds, no clean-up
    assert PRESETS["rapid"].tmax_threshold_s == RAW.tmax_threshold_s == 6.0
    assert r.volumes_ml["hypoperfused"] == pytest.approx(72.0)
    assert r.volumes_ml["core"] == pytest.approx(48.0)
    assert r.volumes_ml["penumbra"] == pytest.approx(24.0) == r.volumes_ml["mismatch"]
    assert r.mismatch_ratio == pytest.approx(1.5)
    assert r.reference_cbf == pytest.approx(50.0) and r.affected_side == "right"
    assert r.defuse3 == {
        "core_below_70ml": True,
        "mismatch_ratio_at_least_1_8": False,
        "mismatch_at_least_15ml": True,
        "target_mismatch": False,
    }
    # a milder core (CBF 20 = 40 % of 50) is not core: all penumbra, infinite ratio, target mismatch
    r = segment_lesions(*_box_study(core_cbf=20.0), RAW)
    assert r.volumes_ml["core"] == 0 and r.mismatch_ratio is None and r.defuse3["target_mismatch"]
    # Tmax > 10 s (preset severe) excludes the 10 s block
    assert segment_lesions(cbf, tmax, brain, affine, PRESETS["severe"]).volumes_ml["hypoperfused"] == 0


def test_clean_up_removes_islands_and_fills_pinholes() -> None:
    cbf, tmax, brain, affine = _box_study()
    tmax[20, 20, 5] = 12.0  # a one-voxel island (0.02 mL < 0.2 mL)
    tmax[40, 30, 4] = 2.0  # a pinhole inside the lesion
    cleaned = segment_lesions(cbf, tmax, brain, affine)
    raw = segment_lesions(cbf, tmax, brain, affine, RAW)
    assert raw.volumes_ml["hypoperfused"] == pytest.approx(72.0)  # +0.02 island −0.02 hole
    assert not cleaned.hypoperfused[20, 20, 5] and cleaned.hypoperfused[40, 30, 4]
    assert cleaned.volumes_ml["hypoperfused"] == pytest.approx(72.0, abs=0.5)


def test_midline_follows_a_yawed_head() -> None:
    x, y = np.meshgrid(np.arange(80) - 39.5, np.arange(80) - 39.5, indexing="ij")
    a = np.radians(12.0)
    u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    brain = np.repeat(((u / 25) ** 2 + (v / 35) ** 2 <= 1)[:, :, None], 3, axis=2)
    sides = hemisphere_sides(brain, np.eye(4))
    uu = np.repeat(u[:, :, None], 3, axis=2)
    assert np.all(sides[brain & (uu > 2)] == 1) and np.all(sides[brain & (uu < -2)] == -1)


@pytest.mark.parametrize(("seed", "hemisphere"), [(11, "left"), (12, "right")])
def test_phantom_truth_maps_give_the_truth_masks(seed: int, hemisphere: str) -> None:
    study = small_study(
        seed, "CT", noise=False, lesion="core", hemisphere=hemisphere, matrix=128, slices=8, coverage_mm=80.0
    )
    t = study.truth
    r = segment_lesions(t.maps["cbf"], t.maps["tmax"], t.masks["brain"], study.series.affine)
    assert r.affected_side == hemisphere
    assert _dice(r.hypoperfused, t.masks["hypoperfused"]) > 0.99
    assert r.volumes_ml["hypoperfused"] == pytest.approx(t.lesion_volumes_ml["hypoperfused"], rel=0.03)
    # the truth's core uses each voxel's own healthy CBF, ours the contralateral median
    assert _dice(r.core, t.masks["core"]) > 0.7
    assert r.volumes_ml["core"] == pytest.approx(t.lesion_volumes_ml["core"], rel=0.35)


def test_bad_settings_and_shapes_are_input_errors() -> None:
    cbf, tmax, brain, affine = _box_study()
    with pytest.raises(PerfnetInputError, match="--reference"):
        segment_lesions(cbf, tmax, brain, affine, LesionSettings(reference="cerebellum"))
    with pytest.raises(PerfnetInputError, match="differ"):
        segment_lesions(cbf[:-1], tmax, brain, affine)
    for ref in ("brain", "tmax4"):
        assert segment_lesions(cbf, tmax, brain, affine, LesionSettings(reference=ref)).reference_cbf == 50.0


def test_profile_tmax_volumes_hir_rcbv_and_core_thresholds() -> None:
    """Known answers on the box study: graded Tmax and CBF blocks inside the 72 mL lesion."""
    cbf, tmax, brain, affine = _box_study(core_cbf=50.0)
    tmax[35:50, 20:60, 2:8] = 7.0  # 72 mL above 6 s ...
    tmax[35:50, 20:40, 2:8] = 9.0  # ... 36 mL of it above 8 s ...
    tmax[35:50, 20:30, 2:8] = 11.0  # ... 18 mL above 10 s
    tmax[20:30, 20:60, 2:8] = 5.0  # 48 mL between 4 and 6 s (not hypoperfused)
    cbf[35:50, 20:25, 2:8] = 5.0  # 9 mL at 10 % of 50: core at every threshold
    cbf[35:50, 25:30, 2:8] = 16.0  # 9 mL at 32 %: core at 34 and 38 %
    cbf[35:50, 30:35, 2:8] = 18.0  # 9 mL at 36 %: core at 38 % only
    cbv = np.where(brain, 4.0, 0.0)
    cbv[35:50, 20:60, 2:8] = 2.0  # the hypoperfused region holds half the reference CBV
    profile = segment_lesions(cbf, tmax, brain, affine, RAW, cbv=cbv).to_json()
    assert profile["tmax_volumes_ml"] == pytest.approx({"4": 120.0, "6": 72.0, "8": 36.0, "10": 18.0})
    assert profile["hypoperfusion_intensity_ratio"] == pytest.approx(0.25)
    assert profile["core_volumes_ml"] == pytest.approx({"20": 9.0, "30": 9.0, "34": 18.0, "38": 27.0})
    assert profile["rcbv_hypoperfused"] == pytest.approx(0.5)
    assert "Olivot" in profile["definitions"]["hypoperfusion_intensity_ratio"]
    # no hypoperfusion: no ratio and no rCBV, volumes 0
    none = segment_lesions(np.full_like(cbf, 50.0), np.where(brain, 2.0, 0.0), brain, affine, RAW, cbv=cbv)
    assert none.profile["hypoperfusion_intensity_ratio"] is None and none.profile["rcbv_hypoperfused"] is None


def _calibrated_maps(cbf: np.ndarray, tmax: np.ndarray, brain: np.ndarray, affine: np.ndarray, record: dict):
    """CNN maps whose provenance carries the core calibration ``record`` (as a CNN's weights give)."""
    from perfnet.io.types import PerfusionMaps

    return PerfusionMaps(
        maps={"cbf": cbf.astype(np.float32), "tmax": tmax.astype(np.float32)},
        affine=affine,
        brain_mask=brain,
        method="cnn",
        provenance={"core_calibration": record},
    )


def test_cbf_calibration_multiplies_every_core_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method that reads a true 30 % core as 40 % (factor 4/3): its core at rCBF 0.4 is found
    with the factor and not without; the profile's core volumes move with it; lesions.json says so."""
    from dataclasses import replace

    from perfnet.lesions import core_rule, segment_map_set

    cbf, tmax, brain, affine = _box_study(core_cbf=20.0)  # 40 % of the reference 50
    plain = segment_lesions(cbf, tmax, brain, affine, RAW)
    calibrated = segment_lesions(cbf, tmax, brain, affine, replace(RAW, cbf_calibration=1.4))
    assert plain.volumes_ml["core"] == 0 and calibrated.volumes_ml["core"] == pytest.approx(48.0)
    assert plain.profile["core_volumes_ml"]["30"] == 0 and calibrated.profile["core_volumes_ml"]["30"] > 0
    assert replace(RAW, cbf_calibration=1.4).core_fraction == pytest.approx(0.42)
    with pytest.raises(PerfnetInputError):
        replace(RAW, cbf_calibration=5.0).check()
    # maps carrying a calibration in their provenance (a CNN's weights) get it applied
    record = {"factor": 1.4, "source": "a test"}
    maps = _calibrated_maps(cbf, tmax, brain, affine, record)

    class Series:  # what segment_map_set reads of the series: nothing but the CSF estimate's input
        pass

    monkeypatch.setattr("perfnet.preprocess.mask.csf_mask", lambda series, brain: np.zeros_like(brain))
    out = segment_map_set(maps, Series(), RAW)  # type: ignore[arg-type]
    assert out["volumes_ml"]["core"] == pytest.approx(48.0) and out["settings"]["cbf_calibration"] == 1.4
    assert "42.0 %" in out["core_rule"] and "a test" in out["core_rule"]
    assert core_rule(RAW) == "hypoperfused and CBF < 30 % of the reference"


def test_a_calibration_offset_reads_the_rule_on_the_flow_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method that reads no flow as 6 (the MR network's floor, stop 45): with offset 6 and the rule
    at 20 %, core is CBF − 6 < 0.2 × (reference − 6). A core read at 14 of a reference 50 (28 %) is
    missed at 20 % alone and found with the offset (threshold 14.8); at a reference of 25 the same
    offset makes the threshold 39.2 % of it, unless the calibration's references (30–60) hold the
    offset's share at 30 (then 36 %). lesions.json states the threshold as applied."""
    from dataclasses import replace

    from perfnet.lesions import segment_map_set

    offset = replace(RAW, cbf_calibration=2 / 3, cbf_offset=6.0)
    assert offset.core_threshold(50.0) == pytest.approx(6 + 0.2 * 44)
    assert offset.core_threshold(25.0) / 25 == pytest.approx(0.2 + 6 * 0.8 / 25)
    held = replace(offset, cbf_offset_references=(30.0, 60.0))
    assert held.core_threshold(25.0) / 25 == pytest.approx(0.2 + 6 * 0.8 / 30)
    assert held.core_threshold(50.0) == pytest.approx(offset.core_threshold(50.0))
    assert held.core_threshold(90.0) / 90 == pytest.approx(0.2 + 6 * 0.8 / 60)
    assert replace(RAW, cbf_offset=6.0).core_threshold(50.0, 0.3) == pytest.approx(6 + 0.3 * 44)
    for bad in ({"cbf_offset": -1.0}, {"cbf_offset_references": (40.0, 30.0)}):
        with pytest.raises(PerfnetInputError):
            replace(RAW, **bad).check()

    cbf, tmax, brain, affine = _box_study(core_cbf=14.0)
    assert (
        segment_lesions(cbf, tmax, brain, affine, replace(RAW, cbf_calibration=2 / 3)).volumes_ml["core"] == 0
    )
    found = segment_lesions(cbf, tmax, brain, affine, offset)
    assert found.volumes_ml["core"] == pytest.approx(48.0)
    assert found.to_json()["core_threshold_percent"] == pytest.approx(29.6)
    # the profile's 20 % core (× 2/3 with the offset: 6 + 0.133 × 44 = 11.9) does not reach 14
    assert found.profile["core_volumes_ml"]["20"] == 0 and found.profile["core_volumes_ml"]["30"] > 0
    record = {"factor": 2 / 3, "offset": 6.0, "references": [30.0, 60.0], "source": "a test"}
    maps = _calibrated_maps(cbf, tmax, brain, affine, record)

    class Series:
        pass

    monkeypatch.setattr("perfnet.preprocess.mask.csf_mask", lambda series, brain: np.zeros_like(brain))
    out = segment_map_set(maps, Series(), RAW)  # type: ignore[arg-type]
    assert out["volumes_ml"]["core"] == pytest.approx(48.0)
    assert out["settings"]["cbf_offset"] == 6.0 and out["settings"]["cbf_offset_references"] == (30.0, 60.0)
    assert out["core_threshold_percent"] == pytest.approx(29.6)
    assert "above this method's 6" in out["core_rule"] and "here 29.6 % of 50" in out["core_rule"]


def test_a_cbv_weight_finds_a_core_by_its_blood_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core read at 45 % of the reference flow with a quarter of the reference blood volume, and
    beside it hypoperfused tissue read at the same 45 % whose blood volume is kept (1.2×), as a
    penumbra keeps it: rCBF alone at 42 % finds neither; with CBV weight 2 at 42 % the weighted
    geometric mean (rCBF · rCBV²)^(1/3) is 0.30 in the core and 0.86 beside it, so the core is
    found and the penumbra is not. The CBV reference is the same region's; the profile's core
    volumes use the same index; lesions.json and the rule's words say so; the weight needs a
    CBV map and is not combined with an offset."""
    from dataclasses import replace

    from perfnet.lesions import core_rule, segment_map_set

    cbf, tmax, brain, affine = _box_study(core_cbf=22.5)
    cbf[45:50, 20:60, 2:8] = 22.5  # the 24 mL beside the core: the same flow ...
    cbv = np.where(brain, 4.0, 0.0)
    cbv[35:45, 20:60, 2:8] = 1.0
    cbv[45:50, 20:60, 2:8] = 4.8  # ... and its blood volume kept
    plain = replace(RAW, cbf_calibration=1.4)
    weighed = replace(plain, core_cbv_weight=2.0)
    assert segment_lesions(cbf, tmax, brain, affine, plain, cbv=cbv).volumes_ml["core"] == 0
    found = segment_lesions(cbf, tmax, brain, affine, weighed, cbv=cbv)
    core = np.zeros_like(brain)
    core[35:45, 20:60, 2:8] = True
    assert found.volumes_ml["core"] == pytest.approx(48.0) and _dice(found.core, core) == 1.0
    assert found.profile["core_volumes_ml"]["30"] == pytest.approx(48.0)  # index 0.30 < 0.42
    assert found.profile["core_volumes_ml"]["20"] == 0  # nor below 0.28
    with pytest.raises(PerfnetInputError, match="CBV map"):
        segment_lesions(cbf, tmax, brain, affine, weighed)
    for bad in ({"core_cbv_weight": -1.0}, {"core_cbv_weight": 9.0}, {"cbf_offset": 6.0}):
        with pytest.raises(PerfnetInputError):
            replace(weighed, **bad).check()
    assert "rCBV^2" in core_rule(weighed) and "42.0 %" in core_rule(weighed)

    record = {"factor": 1.4, "cbv_weight": 2.0, "source": "a test"}
    maps = _calibrated_maps(cbf, tmax, brain, affine, record)
    maps.maps["cbv"] = cbv.astype(np.float32)

    class Series:
        pass

    monkeypatch.setattr("perfnet.preprocess.mask.csf_mask", lambda series, brain: np.zeros_like(brain))
    out = segment_map_set(maps, Series(), RAW)  # type: ignore[arg-type]
    assert out["volumes_ml"]["core"] == pytest.approx(48.0) and out["settings"]["core_cbv_weight"] == 2.0
    assert "(rCBF · rCBV^2)^(1/3) < 42.0 %" in out["core_rule"] and "a test" in out["core_rule"]


def test_hypoperfusion_on_both_sides_is_flagged() -> None:
    """A stroke is one-sided: hypoperfused tissue on the side without the lesion is measured per
    side and flagged (``bilateral_hypoperfusion``) from 10 mL and a quarter of the affected side."""
    from perfnet.qc import BILATERAL_FRACTION, BILATERAL_MIN_ML, lesion_flags

    cbf, tmax, brain, affine = _box_study()
    one_sided = segment_lesions(cbf, tmax, brain, affine, RAW)
    assert one_sided.hypoperfused_by_side_ml == {"affected": 72.0, "contralateral": 0.0}
    assert lesion_flags(one_sided.to_json()) == []
    # the midline is x = 29.5: a 10 × 40 × 6 block at x 14–23 lies on the left, 48 mL
    both = tmax.copy()
    both[14:24, 20:60, 2:8] = 9.0
    r = segment_lesions(cbf, both, brain, affine, RAW)
    assert r.affected_side == "right"
    assert r.hypoperfused_by_side_ml == {"affected": 72.0, "contralateral": 48.0}
    assert r.volumes_ml["hypoperfused"] == pytest.approx(120.0)
    (raised,) = lesion_flags(r.to_json())
    assert raised["code"] == "bilateral_hypoperfusion" and raised["value"] == 48.0
    assert "48 mL on the side without the lesion (67% of the affected side's 72 mL)" in raised["message"]
    # below either threshold, nothing: 5 mL (< 10 mL), and 12 mL (≥ 10 mL, but 17 % < 25 % of 72)
    assert BILATERAL_MIN_ML == 10.0 and BILATERAL_FRACTION == 0.25
    for rows, slabs, expected in ((slice(20, 45), slice(2, 3), 5.0), (slice(20, 50), slice(2, 4), 12.0)):
        small = tmax.copy()
        small[14:24, rows, slabs] = 9.0
        r = segment_lesions(cbf, small, brain, affine, RAW)
        assert r.hypoperfused_by_side_ml == {"affected": 72.0, "contralateral": expected}
        assert lesion_flags(r.to_json()) == []
    # nothing hypoperfused: no side, no flag
    r = segment_lesions(cbf, np.where(brain, 2.0, 0.0), brain, affine, RAW)
    assert r.hypoperfused_by_side_ml is None and lesion_flags(r.to_json()) == []


@pytest.mark.parametrize(("style", "index"), [("geometric", 1), ("mni", 4)])
def test_rule_on_true_maps_finds_no_core_on_penumbra_only_benchmark_studies(
    style: str, index: int, tmp_path: Path
) -> None:
    """benchmarks/generalisation.py's ``truth`` row: the lesion rule (rCBF < 30 % of the
    contralateral median, inside Tmax > 6 s) on a phantom's true maps. On the penumbra-only MR
    studies where the networks call 37–108 mL of core (70101, 71104) it calls none, so a false core
    there is the network's CBF, not the rule's ceiling."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from generalisation import run_study

    args = argparse.Namespace(size=128, slices=8, methods=["truth"])
    args.weights_by_modality = args.candidate_by_modality = {}
    (row,) = run_study(style, "MR", index, args, tmp_path)
    assert row["lesion"] == "penumbra" and row["true_core_ml"] == 0.0
    assert row["false_core_ml"] <= 1.0, row
    assert row["hypoperfused_dice"] > 0.95 and row["tmax_maec"] == 0.0, row
