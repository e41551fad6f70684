"""The bundled weights against phantom truth on studies whose seeds were never used in training
(training cohorts: CT seeds 10000–10119, MR seeds 20000–20059; see src/perfnet/weights/*.md)."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.conventional.pipeline import AnalysisOptions, analyze
from perfnet.evaluation import dice, maec
from perfnet.inference import predict
from perfnet.inference.weights import BUNDLED, load_weights
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


#: Unseen noisy CT studies (randomised timing, dose, residue, arrival; a penumbra lesion in each).
SEEDS = tuple(range(4242, 4849, 101))


def test_bundled_ct_beats_osvd_on_unseen_noisy_phantoms() -> None:
    """Over seven unseen studies: Tmax MAEC ≤ 1.0 s (mean and median) and a hypoperfused Dice at
    least oSVD's (mean). Per study the CNN ranges 0.6–1.4 s (oSVD 0.75–2.9 s); see the model card."""
    cnn_maec, osvd_maec, cnn_dice, osvd_dice = [], [], [], []
    for seed in SEEDS:
        cfg = PhantomConfig.draw(
            seed, "CT", matrix=128, slices=8, coverage_mm=64.0, lesion="penumbra", motion=False
        )
        study = simulate_study(cfg)
        truth, brain = study.truth.maps["tmax"], study.truth.masks["brain"]
        cnn = predict(study.series, device="cpu")["tmax"]
        osvd = analyze(study.series, AnalysisOptions(method="osvd", motion_correction=False)).maps["tmax"]
        true_hypo = truth[brain] > 6
        cnn_maec.append(_maec(cnn[brain], truth[brain]))
        osvd_maec.append(_maec(osvd[brain], truth[brain]))
        cnn_dice.append(dice(cnn[brain] > 6, true_hypo))
        osvd_dice.append(dice(osvd[brain] > 6, true_hypo))
    report = {"cnn_maec": cnn_maec, "osvd_maec": osvd_maec, "cnn_dice": cnn_dice, "osvd_dice": osvd_dice}
    assert np.mean(cnn_maec) <= 1.0 and np.median(cnn_maec) <= 1.0, report
    assert np.mean(cnn_maec) < np.mean(osvd_maec), report
    assert np.mean(cnn_dice) >= np.mean(osvd_dice), report
    assert min(cnn_dice) > 0.8, report


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
