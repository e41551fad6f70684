"""The bundled weights against phantom truth on studies whose seeds were never used in training
(training cohorts: CT seeds 10000–10119 and 11000–11119, MR seeds 20000–20059 and 21000–21089;
see src/perfnet/weights/*.md)."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from perfnet.conventional.pipeline import AnalysisOptions, analyze
from perfnet.evaluation import dice, maec
from perfnet.inference import predict
from perfnet.inference.weights import BUNDLED, load_weights
from perfnet.lesions import PRESETS, calibrated, segment_lesions, voxel_volume_ml
from perfnet.phantom import PhantomConfig, simulate_study


def _maec(pred: np.ndarray, true: np.ndarray) -> float:
    return maec(pred, true, None, (0.0, 20.0))


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_bundled_weights_load_small_and_documented(modality: str) -> None:
    path = BUNDLED / f"{modality.lower()}.pt"
    assert path.is_file(), f"{path} missing: run python tools/train_weights.py {modality.lower()}"
    _, config = load_weights(path)
    assert config["modality"] == modality and config["training"]["targets"] == "truth"
    assert (BUNDLED / f"{modality.lower()}.md").is_file() and (
        BUNDLED / f"{modality.lower()}-plan.json"
    ).is_file()
    assert sum(p.stat().st_size for p in BUNDLED.glob("*.pt")) <= 20e6
    # both networks: the core rule calibrated for their CBF (tools/calibrate_core.py; MR since stop 28)
    calibration = config["core_calibration"]
    assert "tools/calibrate_core.py" in calibration["source"]
    if modality == "CT":
        assert 1.0 <= calibration["factor"] <= 2.0 and not calibration.get("offset")
    else:  # stop 45: MR's rule read on the flow above the network's floor, held to the studies' references
        assert 0.5 <= calibration["factor"] < 1.0 and 2.0 <= calibration["offset"] <= 12.0
        low, high = calibration["references"]
        assert low < high and "with an offset of" in calibration["source"]
    # how firmly its studies fix the threshold travels with it (CT's record re-made at stop 41)
    spread = calibration["bootstrap"]
    assert spread["threshold_p5"] <= calibration["threshold"] <= spread["threshold_p95"]
    assert calibration["threshold"] == pytest.approx(calibration["rule"] * calibration["factor"], abs=0.005)


def test_the_bundled_ct_specialist_is_documented_and_holds_moving_studies() -> None:
    """``ct-moving.pt`` (stop 42): the CT network for studies outside ``ct.pt``'s training domain
    (routing: tests/models/test_domain.py). Same input grid as ``ct.pt``, a training domain that
    reaches the head motion ``ct.pt`` never saw, its own calibrated core rule and scale head (fitted
    on patients neither network trained on; the rule and the temperatures on moving studies, the
    only ones routing gives it, since stop 43), and a card that says what it is for."""
    from perfnet.inference.weights import SPECIALISTS, bundled_networks

    assert SPECIALISTS["CT"] == ("ct-moving.pt",)
    assert [p.name for p in bundled_networks("CT")] == ["ct.pt", "ct-moving.pt"]
    _, primary = load_weights(BUNDLED / "ct.pt")
    _, config = load_weights(BUNDLED / "ct-moving.pt")
    for key in ("modality", "maps", "frames", "frame_interval", "pixel_mm", "align_lead_s", "model"):
        assert config[key] == primary[key], key
    assert config["domain"]["head_motion_mm"][1] > 4.0 > 10 * primary["domain"]["head_motion_mm"][1]
    calibration = config["core_calibration"]
    assert 1.0 <= calibration["factor"] <= 2.0 and "tools/calibrate_core.py" in calibration["source"]
    spread = calibration["bootstrap"]
    assert spread["threshold_p5"] <= calibration["threshold"] <= spread["threshold_p95"]
    assert min(config["scale_head"]["fit_seeds"]) >= 11000  # not the replayed cohort 10000
    assert config["scale_head"]["calibration_motion"] and calibration["motion"]
    # both CT networks read every 4th frame of their 1 s grid in their last stage
    assert config["domain"]["max_frame_interval_s"][1] == primary["domain"]["max_frame_interval_s"][1] == 4.0
    card = (BUNDLED / "ct-moving.md").read_text()
    assert "SPECIALISTS" in card and "ct.md" in card and (BUNDLED / "ct-moving-plan.json").is_file()


def test_the_bundled_mr_specialist_is_documented_and_holds_moving_studies() -> None:
    """``mr-moving.pt`` (stop 44): the MR network for studies outside ``mr.pt``'s training domain,
    fine-tuned from it on moving and cut-short studies; the same input and bolus patch as ``mr.pt``,
    a domain reaching the head motion and the short acquisitions ``mr.pt`` never saw, its own core
    rule calibrated on moving studies, and a card that says what it is for."""
    from perfnet.inference.weights import SPECIALISTS, bundled_networks

    assert SPECIALISTS["MR"] == ("mr-moving.pt",)
    assert [p.name for p in bundled_networks("MR")] == ["mr.pt", "mr-moving.pt"]
    _, primary = load_weights(BUNDLED / "mr.pt")
    _, config = load_weights(BUNDLED / "mr-moving.pt")
    keys = ("modality", "maps", "frames", "frame_interval", "pixel_mm", "align_lead_s", "model", "bolus_rule")
    for key in keys:
        assert config[key] == primary[key], key
    assert config["domain"]["head_motion_mm"][1] > 4.0 > 4 * primary["domain"]["head_motion_mm"][1]
    assert config["domain"]["after_arrival_s"][0] == 12.0 < primary["domain"]["after_arrival_s"][0]
    calibration = config["core_calibration"]
    assert 1.0 <= calibration["factor"] <= 2.0 and calibration["motion"]
    spread = calibration["bootstrap"]
    assert spread["threshold_p5"] <= calibration["threshold"] <= spread["threshold_p95"]
    card = (BUNDLED / "mr-moving.md").read_text()
    assert "SPECIALISTS" in card and (BUNDLED / "mr-moving-plan.json").is_file()


#: Unseen noisy studies, CT and MR drawn from the same seeds (randomised timing, dose, residue,
#: arrival; a core with its penumbra).
SEEDS = tuple(range(4242, 4849, 101))


def _unseen(seed: int, modality: str) -> PhantomConfig:
    """One of the unseen studies of :data:`SEEDS`: 128² × 8 slices over 64 mm, a core with its
    penumbra, no motion."""
    return PhantomConfig.draw(
        seed, modality, matrix=128, slices=8, coverage_mm=64.0, lesion="core", motion=False
    )


@functools.lru_cache(maxsize=2)
def _versus_osvd(modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundled network of ``modality`` (its core rule with the calibration its weights carry)
    and oSVD on the seven unseen studies of :data:`SEEDS` (a core with its penumbra, no motion):
    per study and method Tmax MAEC, hypoperfused Dice, core Dice, core mL, true core mL. The
    CNN's shift-consistency passes are skipped: they add flags, not maps."""
    rows = {"cnn": [], "osvd": []}
    for seed in SEEDS:
        study = simulate_study(_unseen(seed, modality))
        truth, brain = study.truth.maps, study.truth.masks["brain"]
        affine, true_core = study.series.affine, study.truth.masks["core"]
        for name, maps in (
            ("cnn", predict(study.series, device="cpu", consistency=False)),
            ("osvd", analyze(study.series, AnalysisOptions(method="osvd", motion_correction=False)).maps),
        ):
            settings = calibrated(PRESETS["rapid"], maps.provenance.get("core_calibration"))
            cbv = maps.maps.get("cbv")  # the rule may weigh in rCBV (its calibration's cbv_weight)
            core = segment_lesions(maps["cbf"], maps["tmax"], brain, affine, settings, cbv=cbv).core
            rows[name].append(
                (
                    _maec(maps["tmax"][brain], truth["tmax"][brain]),
                    dice(maps["tmax"][brain] > 6, truth["tmax"][brain] > 6),
                    dice(core, true_core),
                    float(core.sum() * voxel_volume_ml(affine)),
                    float(true_core.sum() * voxel_volume_ml(affine)),
                )
            )
    return np.array(rows["cnn"]), np.array(rows["osvd"])


def test_bundled_ct_beats_osvd_on_unseen_noisy_phantoms() -> None:
    """Seven unseen studies, CNN against oSVD on each. Tmax MAEC ≤ 1.0 s on at least five (the
    other two: 1.3 s on a 57 mAs, 34-frame study where oSVD has 3.2 s, and 1.1 s) and on average;
    a hypoperfused Dice at least oSVD's on every study (to 0.01) and on average. The core
    (rCBF < 30 %, the CNN's with the calibration its weights carry) against the phantom's truth core:
    a better Dice on average (measured 0.59 vs oSVD 0.41; 0.46 with the plain rule), a core found on
    every study with ≥ 10 mL of it (the plain rule found 3.3 of 15 mL on seed 4646), and no more core
    than there is in all. Figures per study: src/perfnet/weights/ct.md and docs/cnn.md."""
    cnn, osvd = _versus_osvd("CT")
    report = {"seeds": SEEDS, "cnn": cnn.round(3).tolist(), "osvd": osvd.round(3).tolist()}
    assert (cnn[:, 0] <= 1.0).sum() >= 5 and cnn[:, 0].mean() <= 1.0, report
    assert (cnn[:, 0] < osvd[:, 0]).sum() >= 5 and cnn[:, 0].mean() < osvd[:, 0].mean(), report
    assert (cnn[:, 1] >= osvd[:, 1] - 0.01).all() and cnn[:, 1].mean() > osvd[:, 1].mean(), report
    assert cnn[:, 1].min() > 0.8, report
    assert cnn[:, 2].mean() > osvd[:, 2].mean() + 0.1, report
    assert (cnn[cnn[:, 4] >= 10, 3] > 0.25 * cnn[cnn[:, 4] >= 10, 4]).all(), report
    assert cnn[:, 3].sum() <= 1.05 * cnn[:, 4].sum(), report


def test_bundled_ct_reads_a_core_the_same_at_low_and_high_dose() -> None:
    """The CT network's read of a core does not climb with the noise, as oSVD's does and a small
    network's did: three unseen studies, each at 40 and 320 mAs (≈ 24 and 8 HU; lesion delay
    11.5 s; training drew 50–400 mAs). The median CBF in the true core over healthy brain stays
    within 0.05 between the two doses on each study and below 0.4 (truth 0.21–0.24). Measured
    0.336 / 0.341, 0.290 / 0.288, 0.297 / 0.300; oSVD 0.447 / 0.298, 0.593 / 0.284, 0.398 / 0.216;
    stop 36's 40-study `shiftnet` probe 0.90 / 0.58, 0.64 / 0.28, 0.63 / 0.17 (`candidate_core.py
    --set noise`)."""
    reads = {}
    for seed in (4343, 4444, 4646):
        drawn = _unseen(seed, "CT")
        for dose in (40.0, 320.0):
            study = simulate_study(replace(drawn, lesion_delay_s=11.5, dose_mas=dose))
            cbf = predict(study.series, device="cpu", consistency=False)["cbf"]
            truth, masks = study.truth.maps, study.truth.masks
            healthy = masks["brain"] & (truth["tmax"] <= 6.0)
            reads[seed, dose] = float(np.median(cbf[masks["core"]]) / np.median(cbf[healthy]))
    for seed in (4343, 4444, 4646):
        assert abs(reads[seed, 40.0] - reads[seed, 320.0]) <= 0.05, reads
        assert max(reads[seed, 40.0], reads[seed, 320.0]) < 0.4, reads


@pytest.mark.slow
def test_bundled_mr_beats_osvd_on_tmax_on_unseen_phantoms() -> None:
    """Seven unseen DSC studies, CNN against oSVD on each (measured at stop 28, CNN / oSVD): Tmax
    MAEC 0.99 / 1.20 s on average, better on 4 of 7; hypoperfused Dice 0.91 / 0.92 on average,
    above 0.75 on every study; no more core than twice the truth in all. The core with the rule its
    weights carry: since stop 45 read on the flow above the network's floor (offset 6 at 20 %),
    core Dice 0.66 / 0.63 on average (0.50 with the factor alone, 0.34 with the plain rule), 228 mL
    found for 165 true (seed 4444: 114 of 32 mL here, where the CSF inside the hypoperfused tissue
    is not left out as `analyze` leaves it out: 50 mL there)."""
    cnn, osvd = _versus_osvd("MR")
    report = {"seeds": SEEDS, "cnn": cnn.round(3).tolist(), "osvd": osvd.round(3).tolist()}
    assert cnn[:, 0].mean() < osvd[:, 0].mean() - 0.1 and (cnn[:, 0] < osvd[:, 0]).sum() >= 4, report
    assert cnn[:, 0].max() < 1.6, report
    assert cnn[:, 1].mean() > osvd[:, 1].mean() - 0.02 and cnn[:, 1].min() > 0.75, report
    assert cnn[:, 3].sum() <= 2.0 * cnn[:, 4].sum(), report
    assert cnn[:, 2].mean() >= osvd[:, 2].mean() - 0.02, report


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 12's goal for the MR network, not met: hypoperfused Dice 0.86 vs oSVD 0.96 on seed"
    " 4444 (stop 28); the core parts are met since stop 45's offset rule (core Dice 0.66 vs 0.63, a"
    " core found on every study with >= 10 mL)",
)
def test_bundled_mr_meets_the_goal_on_unseen_phantoms() -> None:
    """Issue 12's bar, as for the CT network: on every study a hypoperfused Dice no more than 0.05
    below oSVD's, a core found on every study with >= 10 mL of it, a core Dice above oSVD's."""
    cnn, osvd = _versus_osvd("MR")
    report = {"seeds": SEEDS, "cnn": cnn.round(3).tolist(), "osvd": osvd.round(3).tolist()}
    assert (cnn[:, 1] >= osvd[:, 1] - 0.05).all(), report
    assert (cnn[cnn[:, 4] >= 10, 3] > 0.25 * cnn[cnn[:, 4] >= 10, 4]).all(), report
    assert cnn[:, 2].mean() >= osvd[:, 2].mean(), report


@pytest.mark.slow
def test_the_mr_core_offset_holds_when_the_dsc_scale_changes() -> None:
    """The MR core rule's offset is in the network's CBF units (stop 45), and DSC's ΔR2* per unit of
    contrast is not known on a real scanner. The network reads flow against its bolus patch, so
    the same unseen study with its ΔR2* × 0.5 and × 2 keeps its reference CBF within a third,
    and the offset rule finds the 15 mL core at every scale. Measured here: reference 28.8 / 27.1 /
    27.5, core Dice 0.77 / 0.74 / 0.51 (through `analyze`'s preprocessing 0.78 / 0.76 / 0.67,
    the factor alone 0.09 / 0.32 / 0.61; docs/cnn.md "The MR core rule's offset")."""
    study = simulate_study(_unseen(4646, "MR"))
    data = study.series.data.astype(np.float64)
    s0 = np.maximum(data[..., :3].mean(axis=3, keepdims=True), 1e-3)
    brain, affine, true_core = study.truth.masks["brain"], study.series.affine, study.truth.masks["core"]
    reads = {}
    for k in (0.5, 1.0, 2.0):
        scaled = (s0 * np.clip(data / s0, 1e-6, None) ** k).astype(study.series.data.dtype)
        maps = predict(replace(study.series, data=scaled), device="cpu", consistency=False)
        rule = calibrated(PRESETS["rapid"], maps.provenance["core_calibration"])
        found = segment_lesions(maps["cbf"], maps["tmax"], brain, affine, rule, cbv=maps.maps.get("cbv"))
        reads[k] = (found.reference_cbf, dice(found.core, true_core))
    assert maps.provenance["core_calibration"]["offset"] > 0, reads
    for k in (0.5, 2.0):
        assert 0.75 < reads[k][0] / reads[1.0][0] < 4 / 3, reads
    assert min(d for _, d in reads.values()) > 0.4, reads


def test_bundled_mr_uncertainty_tracks_its_error() -> None:
    """Hess et al.'s per-voxel Laplace scale: larger where the Tmax error is larger (unseen study)."""
    cfg = PhantomConfig.draw(
        5252, "MR", matrix=96, slices=6, coverage_mm=60.0, lesion="penumbra", motion=False
    )
    study = simulate_study(cfg)
    truth, brain = study.truth.maps["tmax"], study.truth.masks["brain"]
    maps = predict(study.series, device="cpu")
    error = np.abs(maps["tmax"][brain] - truth[brain])
    scale = maps["tmax_uncertainty"][brain]
    assert (scale > 0).all()
    assert np.corrcoef(scale, error)[0, 1] > 0.5
    assert dice(maps["tmax"][brain] > 6, truth[brain] > 6) > 0.8


def _without_scale_head(source: Path, dest: Path) -> Path:
    """The bundled weights as they were before the scale head: backbone only, no uncertainty."""
    import torch

    blob = torch.load(source, map_location="cpu", weights_only=True)
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if not k.startswith("scale_")}
    blob["config"]["model_kwargs"] = {
        k: v for k, v in blob["config"]["model_kwargs"].items() if k != "scale_head"
    }
    blob["config"].pop("scale_head", None)
    torch.save(blob, dest)
    return dest


def test_bundled_ct_scale_head_leaves_maps_unchanged_and_writes_uncertainty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CT weights with their fitted Laplace scale head give the maps of the same weights without
    it bit for bit; `perfnet analyze --method cnn` writes `<map>_uncertainty.nii.gz`, finite and > 0
    inside the brain, and the report shows them; weights without a head give no uncertainty."""
    from perfnet.cli import main
    from perfnet.io import load_map, save_series_nifti

    cfg = PhantomConfig.draw(4343, "CT", matrix=96, slices=4, coverage_mm=40.0, lesion="core", motion=False)
    study = simulate_study(cfg)
    old = _without_scale_head(BUNDLED / "ct.pt", tmp_path / "ct-old.pt")
    new_maps = predict(study.series, device="cpu")
    old_maps = predict(study.series, old, device="cpu")
    for name in ("cbf", "cbv", "mtt", "tmax", "ttp"):
        assert np.array_equal(new_maps[name], old_maps[name]), name
        assert f"{name}_uncertainty" in new_maps.maps and f"{name}_uncertainty" not in old_maps.maps
    series = save_series_nifti(study.series, tmp_path / "ctp.nii.gz")
    out = tmp_path / "out"
    assert main(["analyze", str(series), "--out", str(out), "--method", "cnn"]) == 0
    capsys.readouterr()
    brain = load_map(out / "brain_mask.nii.gz")[0] > 0.5
    for name in ("cbf", "cbv", "mtt", "tmax", "ttp"):
        u = load_map(out / f"{name}_uncertainty.nii.gz")[0]
        assert np.isfinite(u).all() and (u[brain] > 0).all() and (u[~brain] == 0).all(), name
    for name in ("cbf", "tmax"):  # b follows the error (r 0.64 and 0.46 measured on this study);
        # its level is not checked here: on this coarsely sampled study (34 frames, 1.7 s) the
        # network's Tmax is 1 s late everywhere, a study-wide bias b does not see (docs/cnn.md)
        error = np.abs(load_map(out / f"{name}.nii.gz")[0][brain] - study.truth.maps[name][brain])
        scale = load_map(out / f"{name}_uncertainty.nii.gz")[0][brain]
        assert np.corrcoef(scale, error)[0, 1] > 0.3, name
    html = (out / "report.html").read_text()
    assert "Uncertainty (CNN)" in html and (out / "figures" / "tmax_uncertainty.png").is_file()
    # the core rule as applied to this model's maps (its weights' calibration) is stated
    lesions = json.loads((out / "lesions.json").read_text())
    factor = load_weights(BUNDLED / "ct.pt")[1]["core_calibration"]["factor"]
    assert lesions["settings"]["cbf_calibration"] == factor and f"× {factor:.3g}" in lesions["core_rule"]
    assert "Core rule as applied" in html
