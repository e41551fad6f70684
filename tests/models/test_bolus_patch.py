"""Where the temporal network's bolus patch is placed (perfnet.inference.inputs.BOLUS_RULES)."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.cli.parser import build_parser
from perfnet.inference.inputs import BOLUS_RULES, bolus_patch, half_peak_arrival, prepare_input
from perfnet.inference.series import input_of, prepare_series
from perfnet.phantom.anatomy import ARTERY
from perfnet.training.prepare import SliceRecipe
from phantoms import small_study


def test_half_peak_arrival_interpolates_between_frames() -> None:
    times = np.arange(6, dtype=float) * 2.0  # 0, 2, …, 10 s
    curves = np.array(
        [
            [0.0, 0.0, 2.0, 6.0, 10.0, 4.0],  # half of 10 = 5: between 4 s (2) and 6 s (6) → 5.5 s
            [0.0, 8.0, 4.0, 0.0, 0.0, 0.0],  # half of 8 = 4: between 0 s (0) and 2 s (8) → 1 s
            [5.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # peaks at the first frame → 0 s
        ]
    )
    np.testing.assert_allclose(half_peak_arrival(curves, times), [5.5, 1.0, 0.0])


def _synthetic(spike: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 12×12×3 brain of tissue curves (gamma variates arriving at 10 s), one artery voxel
    arriving at 6 s and one sinus voxel arriving at 12 s and peaking three times higher;
    ``spike``: a tissue voxel with one frame at 50 before the bolus."""
    times = np.arange(40, dtype=float)

    def gamma(arrival: float, height: float) -> np.ndarray:
        t = np.clip(times - arrival, 0.0, None)
        return height * (t / 4.0) ** 2 * np.exp(2.0 - t / 2.0)

    conc = np.broadcast_to(gamma(10.0, 5.0), (12, 12, 3, 40)).copy()
    conc += np.random.default_rng(0).normal(0.0, 0.2, conc.shape)
    conc[3, 4, 1] = gamma(6.0, 20.0)  # artery
    conc[8, 8, 1] = gamma(12.0, 60.0)  # sinus
    if spike:
        conc[6, 6, 2, 7] = 50.0
    return conc, times, np.ones((12, 12, 3), dtype=bool)


@pytest.mark.parametrize("spike", [False, True])
def test_arterial_rule_takes_the_early_artery_not_the_higher_sinus(spike: bool) -> None:
    conc, times, brain = _synthetic(spike)
    _, early = bolus_patch(conc, times, times, brain, rule="early-peak", onset_s=8.0)
    patch, arterial = bolus_patch(conc, times, times, brain, rule="arterial", onset_s=8.0)
    assert early == (8, 8, 1)  # the sinus: the highest peak in the first half
    assert arterial == (3, 4, 1)  # the artery, even beside a one-frame spike
    assert patch.shape == (40, 3, 9, 9)
    np.testing.assert_allclose(patch[:, 1, 4, 4], conc[3, 4, 1], atol=1e-5)  # centred on it


@pytest.mark.parametrize("rule", BOLUS_RULES)
def test_the_patch_is_kept_off_voxels_filled_from_outside_the_slab(rule: str) -> None:
    """Voxels that motion correction filled from outside the slab (``Preprocessed.outside``) are
    never the centre, as they are never the AIF: with the artery and the sinus excluded the rules
    pick among the rest; with every voxel excluded, as without the mask."""
    conc, times, brain = _synthetic(False)
    _, free = bolus_patch(conc, times, times, brain, rule=rule, onset_s=8.0)
    exclude = np.zeros_like(brain)
    exclude[3, 4, 1] = exclude[8, 8, 1] = True
    _, kept_off = bolus_patch(conc, times, times, brain, rule=rule, onset_s=8.0, exclude=exclude)
    assert free in ((3, 4, 1), (8, 8, 1)) and not exclude[kept_off]
    everywhere = np.ones_like(brain)
    _, everything = bolus_patch(conc, times, times, brain, rule=rule, onset_s=8.0, exclude=everywhere)
    assert everything == free


def test_the_mr_network_times_a_moving_study_against_an_artery_not_the_slab_edge() -> None:
    """The MR motion nuisance (3.5 mm / 3° on 6 mm slices): the arterial rule put the patch on a
    voxel of the first slice that motion correction had filled from outside the slab (a moving
    edge, not a vessel) and the bundled MR network read the lesion's Tmax at ≈ 0.6 s (hypoperfused
    Dice 0.00, flagged). Kept off those voxels (stop 44): 0.90 (oSVD 0.82), Tmax MAEC 2.4 → 0.9 s."""
    from perfnet.inference.cnn import predict
    from perfnet.inference.weights import bundled_weights
    from perfnet.phantom.nuisance import NUISANCES, build, judge

    study = build("motion_mr")
    prepared = prepare_series(study.series)  # preprocessed once, as analyze does it
    maps = predict(prepared.series, bundled_weights("MR"), device="cpu", prepared=prepared)
    centre = tuple(maps.provenance["bolus_patch_centre"])
    assert prepared.outside is not None and not prepared.outside[centre]
    judgement = judge(NUISANCES["motion_mr"], study, maps, maps.provenance["qc_flags"])
    assert judgement.dice > 0.85 and judgement.tmax_maec < 1.2 and judgement.false_core_ml <= 5.0


def test_an_unknown_rule_is_refused() -> None:
    conc, times, brain = _synthetic(False)
    with pytest.raises(ValueError, match="unknown bolus rule"):
        bolus_patch(conc, times, times, brain, rule="vein")


@pytest.mark.parametrize("seed", [2, 3, 4, 8])
def test_arterial_rule_lands_on_an_artery_of_the_phantom(seed: int) -> None:
    """Phantom DSC studies with arteries in the slab: the arterial rule's centre is an artery voxel
    of the truth labels on every one; the early-peak rule misses it on seeds 4 and 8 (sinus, CSF)."""
    study = small_study(seed, "MR")
    labels = study.truth.labels
    centres = {
        rule: prepare_input(study.series, 1.0, 80, None, 6.0, 2.0, bolus_rule=rule).bolus_centre
        for rule in BOLUS_RULES
    }
    assert labels[centres["arterial"]] == ARTERY
    assert (labels[centres["early-peak"]] == ARTERY) == (seed in (2, 3))


def test_weights_choose_their_rule_and_old_weights_keep_theirs() -> None:
    """input_of (training and inference) follows the weights' ``bolus_rule``; weights without one
    (trained before the rule existed) get the early-peak patch they were trained with."""
    study = small_study(4, "MR")
    prepared = prepare_series(study.series)
    base = {"frame_interval": 1.0, "frames": 80, "align_lead_s": 6.0, "pixel_mm": 2.0}
    old = input_of(prepared, base).bolus_centre
    assert old == input_of(prepared, base | {"bolus_rule": "early-peak"}).bolus_centre
    assert study.truth.labels[input_of(prepared, base | {"bolus_rule": "arterial"}).bolus_centre] == ARTERY
    assert study.truth.labels[old] != ARTERY


def test_the_rule_is_part_of_the_training_input_and_the_cli() -> None:
    recipe = SliceRecipe(["tmax"], "truth", 1.0, 80, 2.0, 6.0, {}, "arterial")
    assert recipe.input_config()["bolus_rule"] == "arterial"  # so prepared slices are keyed by it
    for rule in BOLUS_RULES:  # the CLI's choices (spelt out there, to keep torch out of its import)
        args = build_parser().parse_args(["train", "cohort", "--out", "run", "--bolus-rule", rule])
        assert args.bolus_rule == rule
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "cohort", "--out", "run", "--bolus-rule", "vein"])
