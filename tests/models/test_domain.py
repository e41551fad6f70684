"""A CNN's training domain: recorded envelopes, the margins, and the flag on studies outside it."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import perfnet
from perfnet import qc
from perfnet.inference import domain
from perfnet.inference.weights import bundled_weights, load_weights
from perfnet.phantom import PhantomConfig, nuisance, simulate_study

STATIC = {"head_motion_mm": [0.0, 0.3], "max_frame_interval_s": [0.5, 2.0], "tissue_cnr": [0.3, 2.0]}


def test_envelope_and_union_of_descriptors() -> None:
    rows = [
        {"head_motion_mm": 0.1, "max_frame_interval_s": 1.0, "tissue_cnr": 0.9},
        {"head_motion_mm": 3.0, "max_frame_interval_s": 1.8, "tissue_cnr": 0.4},
        {"max_frame_interval_s": 0.7},  # no motion correction: motion not described
    ]
    env = domain.envelope(rows, "three studies")
    assert env == {
        "head_motion_mm": [0.1, 3.0],
        "max_frame_interval_s": [0.7, 1.8],
        "tissue_cnr": [0.4, 0.9],
        "studies": 3,
        "source": "three studies",
    }
    both = domain.union(STATIC | {"studies": 12}, env)
    assert both["head_motion_mm"] == [0.0, 3.0] and both["max_frame_interval_s"] == [0.5, 2.0]
    assert both["tissue_cnr"] == [0.3, 2.0] and both["studies"] == 15
    assert domain.union(None, env) == env and domain.union(None, None) is None


def test_margins_decide_what_is_outside() -> None:
    # motion: + 2 mm (the large_motion threshold); frame interval: × 1.25; CNR: ÷ 1.5
    assert domain.limit("head_motion_mm", STATIC) == pytest.approx(2.3)
    assert domain.limit("max_frame_interval_s", STATIC) == pytest.approx(2.5)
    assert domain.limit("tissue_cnr", STATIC) == pytest.approx(0.2)
    inside = {"head_motion_mm": 2.2, "max_frame_interval_s": 2.4, "tissue_cnr": 0.21}
    assert domain.outside(inside, STATIC) == [] and domain.domain_flags(inside, STATIC) == []
    far = {"head_motion_mm": 2.4, "max_frame_interval_s": 3.0, "tissue_cnr": 0.1}
    found = domain.outside(far, STATIC)
    assert found == [
        "head motion 2.4 mm, trained on ≤ 0.3",
        "frame interval 3 s, trained on ≤ 2",
        "tissue contrast-to-noise ratio 0.1, trained on ≥ 0.3",
    ]
    (flag,) = domain.domain_flags(far, STATIC)
    assert flag["code"] == "outside_training_domain" and flag["value"] == 3
    assert "head motion 2.4 mm" in flag["message"]
    assert qc.verdict([flag]) == "unreliable"
    assert domain.outside(far, None) == []  # weights without a recorded domain: nothing to judge
    # the bolus rise: × 1.25; a domain recorded before the descriptor existed does not judge it
    rise = STATIC | {"bolus_rise_s": [6.0, 16.0]}
    assert domain.limit("bolus_rise_s", rise) == pytest.approx(20.0)
    assert (
        domain.outside({"bolus_rise_s": 19.9}, rise) == []
        and domain.outside({"bolus_rise_s": 30.0}, STATIC) == []
    )
    assert domain.outside({"bolus_rise_s": 21.5}, rise) == [
        "bolus rise from arrival to the brain curve's peak 21.5 s, trained on ≤ 16"
    ]


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_bundled_weights_carry_their_static_training_domain(modality: str) -> None:
    _, config = load_weights(bundled_weights(modality))
    dom = config["domain"]
    # measured afterwards on re-drawn training studies (CT) or by perfnet train on all of them (MR,
    # since stop 28: the 120 studies of its two stages, jittered frame intervals included)
    assert dom["studies"] >= 12
    assert "tools/weights_domain.py" in dom["source"] or "training studies" in dom["source"]
    assert dom["head_motion_mm"][1] < 1.0  # --no-motion cohorts (what the correction reads on them)
    assert dom["max_frame_interval_s"][1] >= 2.0  # at least the phantom generator's nominal longest
    assert dom["after_arrival_s"][0] > 25.0  # every training acquisition covered the first pass
    assert 0 < dom["tissue_cnr"][0] < dom["tissue_cnr"][1]
    # the bolus rise, measured afterwards on 60 of the recipe's studies (cohorts' FWHM 4–10 s): MR
    # at stop 46 (5.7–14.8 s), CT at stop 47 (6.9–12.7 s)
    first, last = dom["bolus_rise_s"]
    assert 5.0 < first < 8.0 and (13.0 < last < 16.0 if modality == "MR" else 11.5 < last < 14.0)


def _codes(result: perfnet.StudyResult) -> set[str]:
    return {f["code"] for f in result.maps.provenance["qc_flags"]}


def test_a_moving_ct_study_goes_to_the_bundled_specialist_and_ct_pt_flags_it() -> None:
    """The thick-slice motion nuisance (≈ 4 mm of head motion, corrected): the primary CT U-Net
    (trained without motion) finds little of the lesion and says so (`outside_training_domain`,
    verdict unreliable); without `--weights` the study goes to the bundled moving-study specialist
    `ct-moving.pt` (routing by training domain), which finds the lesion and its core, unflagged
    by the domain check; oSVD on the same corrected series is not flagged either."""
    study = nuisance.build("motion_thick_slice_ct")
    judge = functools.partial(nuisance.judge, nuisance.NUISANCES["motion_thick_slice_ct"], study)
    primary = perfnet.analyze(study.series, "cnn", weights=bundled_weights("CT"), device="cpu")
    prov = primary.maps.provenance
    assert "outside_training_domain" in _codes(primary) and prov["verdict"] == "unreliable"
    assert prov["reliable"] is False and "routed" not in prov
    bound = domain.limit("head_motion_mm", prov["training_domain"])
    assert prov["study_descriptors"]["head_motion_mm"] > bound
    flag = next(f for f in prov["qc_flags"] if f["code"] == "outside_training_domain")
    assert "head motion" in flag["message"] and "frame interval" not in flag["message"]
    before = judge(primary.maps, primary.maps.provenance["qc_flags"])

    routed = perfnet.analyze(study.series, "cnn", device="cpu")
    prov = routed.maps.provenance
    assert prov["routed"]["weights"] == "ct-moving.pt" and prov["weights"].endswith("ct-moving.pt")
    assert prov["routed"]["instead_of"] == "ct.pt" and "head motion" in prov["routed"]["because"]
    assert "outside_training_domain" not in _codes(routed) and "large_motion" in _codes(routed)
    after = judge(routed.maps, prov["qc_flags"])
    # measured at stop 42: hypoperfused Dice 0.16 -> 0.70 (oSVD 0.85), Tmax MAEC 2.0 -> 1.4 s
    # (oSVD 2.5), core 0 -> 20.7 of 48 mL, none outside the lesion; stop 43's specialist (trained on
    # cut acquisitions too): 0.79, 1.3 s, core 38.2 mL
    assert before.dice < 0.3 and after.dice > 0.65 and after.tmax_maec < before.tmax_maec - 0.4
    assert after.core_ml > 10.0 and after.false_core_ml <= 5.0
    osvd = perfnet.analyze(study.series, "osvd", device="cpu")
    assert "outside_training_domain" not in _codes(osvd)


def test_a_moving_mr_study_goes_to_the_mr_specialist() -> None:
    """The MR motion nuisance (3.5 mm / 3° on 6 mm slices): outside ``mr.pt``'s training domain
    (trained on static studies; flagged, verdict unreliable, although with the bolus patch kept off
    the slab's edge it reads the lesion), so without ``--weights`` it goes to ``mr-moving.pt`` (stop
    44), which trained on moving and cut-short studies: the lesion found, not flagged outside its
    domain (still ``large_motion``: review)."""
    study = nuisance.build("motion_mr")
    judge = functools.partial(nuisance.judge, nuisance.NUISANCES["motion_mr"], study)
    forced = perfnet.analyze(study.series, "cnn", weights=bundled_weights("MR"), device="cpu")
    assert "outside_training_domain" in _codes(forced) and forced.verdict == "unreliable"
    routed = perfnet.analyze(study.series, "cnn", device="cpu")
    prov = routed.maps.provenance
    assert prov["routed"]["weights"] == "mr-moving.pt" and prov["routed"]["instead_of"] == "mr.pt"
    assert "head motion" in prov["routed"]["because"]
    assert "outside_training_domain" not in _codes(routed) and routed.verdict == "review"
    after = judge(routed.maps, prov["qc_flags"])
    assert after.dice > 0.85 and after.false_core_ml <= 5.0


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_a_slow_bolus_is_outside_the_networks_domain(modality: str) -> None:
    """A broad, near-symmetric first pass (gamma-variate shape 12, FWHM 16 s; the bundled cohorts
    drew shape 2–5 at 4–10 s) rises for ~25 s in the brain: beyond what the networks trained on,
    so the primary network keeps the study (no specialist holds it) and flags it. The same study
    with a bolus of the cohorts' kind is inside. Measured at stop 46 (128² × 8 slices, two seeds):
    the networks read such a study's healthy Tmax late (MR 4.2–4.9 s, CT 2.1–2.4 s); oSVD's bias
    does not follow."""
    acquisition = {"matrix": 64, "slices": 4, "frames": 90, "frame_interval_s": 1.2, "timing": "uniform"}
    results = {}
    for alpha, fwhm in ((3.0, 8.0), (12.0, 16.0)):
        cfg = PhantomConfig.draw(
            4242, modality, motion=False, lesion="penumbra", aif_alpha=alpha, aif_fwhm_s=fwhm, **acquisition
        )
        results[fwhm] = perfnet.analyze(simulate_study(cfg).series, "cnn", device="cpu")
    usual, slow = results[8.0].maps.provenance, results[16.0].maps.provenance
    limit = domain.limit("bolus_rise_s", slow["training_domain"])
    assert usual["study_descriptors"]["bolus_rise_s"] < limit < slow["study_descriptors"]["bolus_rise_s"]
    assert "outside_training_domain" not in _codes(results[8.0])
    flag = next(f for f in slow["qc_flags"] if f["code"] == "outside_training_domain")
    assert "(bolus rise from arrival to the brain curve's peak" in flag["message"]
    assert results[16.0].verdict == "unreliable"
    primary = f"{modality.lower()}.pt"
    assert "routed" not in slow and "routed" not in usual and slow["weights"].endswith(primary)


def test_cnn_on_a_static_study_and_on_long_frame_intervals() -> None:
    clean = nuisance.build("clean_ct")
    result = perfnet.analyze(clean.series, "cnn", device="cpu")
    assert "outside_training_domain" not in _codes(result) and result.maps.provenance["verdict"] == "ok"
    # 3 s frames: inside since stop 43 (its last stage read every 4th frame of its 1 s grid for a
    # quarter of the samples; benchmarks/frame_interval.py: Tmax MAEC 0.76 -> 0.84 s from 1 to 3 s
    # frames on style A, 0.57 -> 0.68 s on style B); 6 s frames: coarser than anything it read
    for interval, outside in ((3.0, False), (6.0, True)):
        slow_frames = {"frames": 30, "frame_interval_s": interval, "timing": "uniform", "motion": False}
        cfg = PhantomConfig.draw(6, "CT", matrix=64, slices=4, **slow_frames)
        series = simulate_study(cfg).series
        assert np.allclose(np.diff(series.times), interval)
        slow = perfnet.analyze(series, "cnn", device="cpu")
        flags = [f for f in slow.maps.provenance["qc_flags"] if f["code"] == "outside_training_domain"]
        assert bool(flags) == outside and "routed" not in slow.maps.provenance
    assert "frame interval 6 s, trained on ≤ 4" in flags[0]["message"]


def test_frame_thinning_widens_the_recorded_frame_intervals() -> None:
    """A network trained with ``--thin 1,1,2,4`` on its 1 s grid read curves sampled every 4 s:
    its domain's longest interval reaches 4 s (limit 5 s), and the source says why; without
    thinning, or where the studies already reach it, nothing changes."""
    widened = domain.thinned(STATIC | {"source": "12 training studies"}, [1, 1, 2, 4], 1.0)
    assert (
        widened["max_frame_interval_s"] == [0.5, 4.0] and domain.limit("max_frame_interval_s", widened) == 5.0
    )
    assert (
        widened["source"]
        == "12 training studies; frame intervals to 4 s by thinning (every 4th frame of the 1 s grid)"
    )
    assert widened["head_motion_mm"] == STATIC["head_motion_mm"]
    assert domain.thinned(STATIC, [1], 1.0) is STATIC and domain.thinned(None, [4], 1.0) is None
    assert (
        domain.thinned(STATIC | {"max_frame_interval_s": [0.5, 6.0]}, [2], 1.0)["max_frame_interval_s"][1]
        == 6.0
    )
    # perfnet train records it (its --thin on its --frame-interval grid), before joining the init's
    from types import SimpleNamespace

    from perfnet.training.run import training_domain

    studies = [
        SimpleNamespace(descriptors={"max_frame_interval_s": v, "head_motion_mm": 0.1}) for v in (0.7, 1.8)
    ]
    assert training_domain(studies, None)["max_frame_interval_s"] == [0.7, 1.8]
    assert training_domain(studies, None, [1, 2, 4], 1.0)["max_frame_interval_s"] == [0.7, 4.0]
    start = SimpleNamespace(config={"domain": STATIC})
    assert training_domain(studies, start, [1, 2], 1.0)["max_frame_interval_s"] == [0.5, 2.0]


def test_cnn_on_a_cut_off_acquisition_names_it_and_a_late_bolus_is_inside() -> None:
    """Stopped 12 s after the bolus arrival: outside what ``ct.pt`` saw (its training studies ran
    ≥ 30 s past the arrival; hypoperfused Dice 0.14), so it is routed to the specialist trained on
    acquisitions cut 12–40 s after the arrival (stop 43; Dice 0.69, flagged ``truncated_bolus`` and
    ``late_bolus``: review); the late-bolus study (22 s of 45) is inside ``ct.pt``'s domain by its
    margin only, not flagged, and read by the specialist."""
    study = nuisance.build("truncated_ct")
    judge = functools.partial(nuisance.judge, nuisance.NUISANCES["truncated_ct"], study)
    forced = perfnet.analyze(study.series, "cnn", weights=bundled_weights("CT"), device="cpu")
    flag = next(f for f in forced.maps.provenance["qc_flags"] if f["code"] == "outside_training_domain")
    assert "acquisition after the bolus arrival" in flag["message"] and forced.verdict == "unreliable"
    cut = perfnet.analyze(study.series, "cnn", device="cpu")
    assert cut.maps.provenance["routed"]["weights"] == "ct-moving.pt"
    assert "acquisition after the bolus arrival" in cut.maps.provenance["routed"]["because"]
    assert "outside_training_domain" not in _codes(cut) and cut.verdict == "review"
    before = judge(forced.maps, forced.maps.provenance["qc_flags"])
    after = judge(cut.maps, cut.maps.provenance["qc_flags"])
    assert before.dice < 0.2 and after.dice > 0.6 and after.false_core_ml <= 5.0
    late = perfnet.analyze(nuisance.build("late_bolus_ct").series, "cnn", device="cpu")
    assert "outside_training_domain" not in _codes(late)
    # 22 s after the arrival: inside ct.pt's domain by its margin only, so read by the specialist
    # that trained on such acquisitions (stop 43: hypoperfused Dice 0.81 -> 0.89)
    assert late.maps.provenance["routed"]["because"].startswith("inside ct.pt's margin only: ")
    assert late.maps.provenance["study_descriptors"]["after_arrival_s"] > domain.limit(
        "after_arrival_s", late.maps.provenance["training_domain"]
    )


def test_a_study_outside_the_primary_network_goes_to_a_specialist_that_holds_it(
    tmp_path, monkeypatch
) -> None:
    """Routing by training domain (docs/cnn.md): with a specialist shipped beside ct.pt (here the same
    tensors with a domain reaching 10 mm of head motion), the moving nuisance study goes to it,
    unflagged, and provenance says why; a static study stays with ct.pt; explicit weights are
    never rerouted."""
    from perfnet.inference import weights as bundled

    model, config = load_weights(bundled_weights("CT"))
    (tmp_path / "ct.pt").write_bytes(bundled_weights("CT").read_bytes())
    moving_domain = config["domain"] | {"head_motion_mm": [0.0, 10.0]}
    bundled.save_weights(tmp_path / "ct-moving.pt", model, config | {"domain": moving_domain})
    monkeypatch.setattr(bundled, "BUNDLED", tmp_path)
    monkeypatch.setattr(bundled, "SPECIALISTS", {"CT": ("ct-moving.pt", "absent.pt")})
    assert [p.name for p in bundled.bundled_networks("CT")] == ["ct.pt", "ct-moving.pt"]

    moving = nuisance.build("motion_thick_slice_ct").series
    result = perfnet.analyze(moving, "cnn", device="cpu")
    provenance = result.maps.provenance
    assert provenance["routed"]["weights"] == "ct-moving.pt" and provenance["weights"].endswith(
        "ct-moving.pt"
    )
    assert provenance["routed"]["instead_of"] == "ct.pt" and "head motion" in provenance["routed"]["because"]
    assert "outside_training_domain" not in _codes(result)
    static = perfnet.analyze(nuisance.build("clean_ct").series, "cnn", device="cpu")
    assert "routed" not in static.maps.provenance and static.maps.provenance["weights"].endswith("ct.pt")
    explicit = perfnet.analyze(moving, "cnn", weights=tmp_path / "ct.pt", device="cpu")
    assert "routed" not in explicit.maps.provenance and "outside_training_domain" in _codes(explicit)


def test_routing_takes_the_network_whose_domain_the_study_leaves_least(tmp_path, monkeypatch) -> None:
    """Outside every network's domain (style B's two-phase studies with 3 s frames, moving): the
    specialist that holds the motion and not the frame interval leaves its domain on one count where
    the primary leaves it on two, so it is chosen (still flagged for the interval); a tie keeps the
    primary; a study the specialist holds goes to it, one the primary holds stays."""
    from perfnet.inference import cnn
    from perfnet.inference import weights as bundled

    model, config = load_weights(bundled_weights("CT"))
    primary = {"head_motion_mm": [0.0, 0.3], "max_frame_interval_s": [0.5, 2.0], "tissue_cnr": [0.3, 2.0]}
    moving = primary | {"head_motion_mm": [0.0, 9.6], "max_frame_interval_s": [0.5, 2.2]}
    bundled.save_weights(tmp_path / "ct.pt", model, config | {"domain": primary})
    bundled.save_weights(tmp_path / "ct-moving.pt", model, config | {"domain": moving})
    monkeypatch.setattr(bundled, "BUNDLED", tmp_path)
    monkeypatch.setattr(bundled, "SPECIALISTS", {"CT": ("ct-moving.pt",)})

    def chosen(motion: float, interval: float) -> tuple[str, dict | None]:
        described = {"head_motion_mm": motion, "max_frame_interval_s": interval, "tissue_cnr": 1.0}
        monkeypatch.setattr(cnn.domain, "describe", lambda prepared: described)
        path, why = cnn.route(None, "CT")
        return path.name, why

    name, why = chosen(8.9, 3.3)  # outside both; the primary on two counts, the specialist on one
    assert name == "ct-moving.pt" and "head motion 8.9 mm" in why["because"]
    assert "frame interval 3.3 s" in why["because"]  # the primary's reasons
    assert chosen(0.1, 3.3) == ("ct.pt", None)  # one count each: the primary keeps it
    assert chosen(5.0, 1.0)[0] == "ct-moving.pt" and chosen(0.1, 1.0) == ("ct.pt", None)
    # a flag-only descriptor never routes: a bolus beyond the primary's rise and inside the
    # specialist's stays with the primary; a moving one goes to the specialist for its motion
    rise = {"bolus_rise_s": [7.0, 14.0]}
    bundled.save_weights(tmp_path / "ct.pt", model, config | {"domain": primary | rise})
    bundled.save_weights(
        tmp_path / "ct-moving.pt", model, config | {"domain": moving | {"bolus_rise_s": [7.0, 16.0]}}
    )
    for motion, expected in ((0.1, "ct.pt"), (5.0, "ct-moving.pt")):
        described = {
            "head_motion_mm": motion,
            "max_frame_interval_s": 1.0,
            "tissue_cnr": 1.0,
            "bolus_rise_s": 19.0,
        }
        monkeypatch.setattr(cnn.domain, "describe", lambda prepared, d=described: d)
        path, why = cnn.route(None, "CT")
        assert path.name == expected and (why is None or "bolus rise" not in why["because"])


def test_a_study_inside_the_primary_only_by_its_margin_goes_to_a_specialist_trained_on_it(
    tmp_path, monkeypatch
) -> None:
    """An acquisition ending 25 s after the arrival: inside ``ct.pt``'s domain only by its margin
    (trained on >= 30 s, flagged below 20 s), and ``ct.pt`` fails there unflagged
    (benchmarks/truncation.py); a specialist trained on such acquisitions (envelope >= 12 s) reads
    it, unflagged, and says why; one that never saw them (>= 28 s) does not take it; a study inside
    the primary's envelope stays, and so does one beyond it only in head motion."""
    from perfnet.inference import cnn
    from perfnet.inference import weights as bundled

    model, config = load_weights(bundled_weights("CT"))
    primary = {"head_motion_mm": [0.0, 0.3], "after_arrival_s": [30.0, 100.0], "tissue_cnr": [0.3, 2.0]}
    bundled.save_weights(tmp_path / "ct.pt", model, config | {"domain": primary})
    monkeypatch.setattr(bundled, "BUNDLED", tmp_path)
    monkeypatch.setattr(bundled, "SPECIALISTS", {"CT": ("ct-moving.pt",)})

    def chosen(specialist_from: float, after: float, motion: float = 0.1) -> tuple[str, dict | None]:
        cut = primary | {"head_motion_mm": [0.0, 9.6], "after_arrival_s": [specialist_from, 100.0]}
        bundled.save_weights(tmp_path / "ct-moving.pt", model, config | {"domain": cut})
        described = {"head_motion_mm": motion, "after_arrival_s": after, "tissue_cnr": 1.0}
        monkeypatch.setattr(cnn.domain, "describe", lambda prepared: described)
        path, why = cnn.route(None, "CT")
        return path.name, why

    name, why = chosen(12.0, 25.0)
    assert name == "ct-moving.pt" and why["because"].startswith("inside ct.pt's margin only: ")
    assert "acquisition after the bolus arrival 25 s, trained on ≥ 30" in why["because"]
    assert chosen(28.0, 25.0) == ("ct.pt", None)  # the specialist never saw it either
    assert chosen(12.0, 35.0) == ("ct.pt", None)  # inside what ct.pt trained on
    assert chosen(12.0, 15.0)[0] == "ct-moving.pt"  # outside ct.pt's domain: routed as before
    # head motion inside ct.pt's margin only (a static study's estimate, 0.3-0.35 mm): not routed,
    # the specialist is the weaker network on static studies (domain.ROUTED_WITHIN_MARGIN["CT"])
    assert chosen(12.0, 35.0, motion=0.4) == ("ct.pt", None)
    assert chosen(12.0, 25.0, motion=0.4)[0] == "ct-moving.pt"
    # MR routes nothing within the margin (domain.ROUTED_WITHIN_MARGIN["MR"] is empty: mr-moving.pt
    # read two of three such static studies worse, stop 44); outside mr.pt's domain it takes them
    cut = primary | {"head_motion_mm": [0.0, 9.6], "after_arrival_s": [12.0, 100.0]}
    bundled.save_weights(tmp_path / "mr.pt", model, config | {"domain": primary, "modality": "MR"})
    bundled.save_weights(tmp_path / "mr-moving.pt", model, config | {"domain": cut, "modality": "MR"})
    monkeypatch.setattr(bundled, "SPECIALISTS", {"MR": ("mr-moving.pt",)})
    for after, name in ((25.0, "mr.pt"), (15.0, "mr-moving.pt")):
        described = {"head_motion_mm": 0.1, "after_arrival_s": after, "tissue_cnr": 1.0}
        monkeypatch.setattr(cnn.domain, "describe", lambda prepared, d=described: d)
        assert cnn.route(None, "MR")[0].name == name


def test_weights_domain_tool_adds_one_descriptor_and_redraws_a_recipe_s_cohorts(monkeypatch) -> None:
    """``tools/weights_domain.py --only``: one descriptor measured and added, the rest of the stored
    domain kept; the recipe's studies re-drawn with their cohort's own draw options and count."""
    from tests.tool_modules import load_tool

    tool = load_tool("weights_domain")
    configs = tool.cohort_configs("mr-bolus", 40)  # 32 replayed + 32 wide-bolus studies: capped at 32
    assert len(configs) == 64 and configs[32].seed == 26000
    wide = PhantomConfig.draw(26000, "MR", slices=10, motion=False, wide_bolus=True)
    assert (configs[32].aif_fwhm_s, configs[32].aif_alpha) == (wide.aif_fwhm_s, wide.aif_alpha)
    assert configs[0].aif_alpha == PhantomConfig.draw(21000, "MR", slices=10, motion=False).aif_alpha
    monkeypatch.setattr(
        tool, "measure", lambda name, k: {"bolus_rise_s": [7.0, 15.0], "head_motion_mm": [0, 9]}
    )
    stored = load_weights(bundled_weights("MR"))[1]["domain"]
    added = tool.with_descriptor("mr", "bolus_rise_s", 3)
    assert added["bolus_rise_s"] == [7.0, 15.0] and added["head_motion_mm"] == stored["head_motion_mm"]
    assert added["source"].endswith(
        "bolus_rise_s from tools/weights_domain.py --only (the first 3 studies of each cohort)"
    )
