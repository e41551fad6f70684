"""The core rule's calibration for a network's CBF: the threshold choice (issue 12, item 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perfnet.training.core_calibration import (
    FALSE_CORE_ML,
    THRESHOLDS,
    bootstrap,
    choose,
    choose_cbv_weight,
    choose_offset,
    score_maps,
)


def _row(peak_at: float, has_core: bool = True, false_from: float | None = None) -> dict:
    """Scores over THRESHOLDS: a Dice curve peaking at ``peak_at``, or a false core volume that
    rises past FALSE_CORE_ML from ``false_from`` on."""
    if has_core:
        return {"has_core": True, "scores": list(1.0 - np.abs(THRESHOLDS - peak_at))}
    false = np.where(THRESHOLDS >= (9.0 if false_from is None else false_from), 2 * FALSE_CORE_ML, 0.0)
    return {"has_core": False, "scores": list(false)}


def test_choose_takes_the_best_mean_dice_within_the_false_core_bound() -> None:
    threshold, curve = choose([_row(0.40), _row(0.44)])
    assert threshold == pytest.approx(0.40) or threshold == pytest.approx(0.44)
    assert curve["0.42"] == pytest.approx(1 - 0.02)
    # a study without a core that gets > 5 mL of it from 0.38 on caps the choice at 0.37
    threshold, _ = choose([_row(0.42), _row(0.42), _row(0.0, has_core=False, false_from=0.38)])
    assert threshold == pytest.approx(0.37)
    # when the rule itself gives false core, the largest threshold below it that does not is taken
    threshold, _ = choose([_row(0.50), _row(0.0, has_core=False, false_from=0.25)])
    assert threshold == pytest.approx(0.24)
    # and when every threshold does, the rule stays
    threshold, _ = choose([_row(0.50), _row(0.0, has_core=False, false_from=0.0)])
    assert threshold == pytest.approx(0.30)


def _box_maps(core_cbf: float) -> tuple:
    """CNN maps of a 40 × 60 × 10 brain (2 × 2 × 5 mm) with CBF 50, a hypoperfused block (Tmax 10 s)
    whose first 10 rows read ``core_cbf``: the maps and that truth core (48 mL)."""
    from perfnet.io.types import PerfusionMaps

    brain = np.zeros((60, 80, 10), dtype=bool)
    brain[10:50, 10:70] = True
    cbf = np.where(brain, 50.0, 0.0).astype(np.float32)
    tmax = np.where(brain, 2.0, 0.0).astype(np.float32)
    tmax[35:50, 20:60, 2:8] = 10.0
    cbf[35:45, 20:60, 2:8] = core_cbf
    truth = np.zeros_like(brain)
    truth[35:45, 20:60, 2:8] = True
    maps = PerfusionMaps(
        maps={"cbf": cbf, "tmax": tmax}, affine=np.diag([2.0, 2.0, 5.0, 1.0]), brain_mask=brain, method="cnn"
    )
    return maps, truth


def test_score_maps_on_a_hand_built_core() -> None:
    """A core at 40 % of the reference is found from the 0.41 threshold on (Dice 1 there, 0
    below); a study whose truth has no core scores the volume found instead."""
    maps, truth = _box_maps(20.0)
    scored = score_maps(maps, truth)
    scores = dict(zip(THRESHOLDS.round(2), scored["scores"], strict=True))
    assert scored["has_core"] and scores[0.40] == 0.0 and scores[0.41] == pytest.approx(1.0, abs=0.01)
    volumes = dict(zip(THRESHOLDS.round(2), score_maps(maps, np.zeros_like(truth))["scores"], strict=True))
    assert volumes[0.30] == 0.0 and volumes[0.45] == pytest.approx(48.0, rel=0.02)


def test_score_maps_with_offsets_finds_a_core_read_above_the_rule() -> None:
    """A core read at 16 of a reference 50 (32 %): without an offset found from 0.33 on; with an
    offset of 8, CBF − 8 < t × 42 from t = 0.20 on (8 / 42 = 0.19). The reference is recorded."""
    maps, truth = _box_maps(16.0)
    scored = score_maps(maps, truth, offsets=[8.0])
    assert scored["reference"] == pytest.approx(50.0) and set(scored["offset_scores"]) == {"0", "8"}
    plain = dict(zip(THRESHOLDS.round(2), scored["offset_scores"]["0"], strict=True))
    shifted = dict(zip(THRESHOLDS.round(2), scored["offset_scores"]["8"], strict=True))
    assert scored["offset_scores"]["0"] == scored["scores"]
    assert plain[0.32] == 0.0 and plain[0.33] == pytest.approx(1.0, abs=0.01)
    assert shifted[0.19] == 0.0 and shifted[0.20] == pytest.approx(1.0, abs=0.01)


def _offset_row(curves: dict[str, tuple[float, float]], has_core: bool = True) -> dict:
    """A row scored at offsets: per offset ``a`` a Dice curve peaking at ``curves[a] = (t, height)``,
    or (``has_core`` False) a false core of 2 × the bound from ``t`` on; volumes that never over-call."""
    scores = {}
    for a, (peak, height) in curves.items():
        if has_core:
            scores[a] = list(height - np.abs(THRESHOLDS - peak))
        else:
            scores[a] = list(np.where(THRESHOLDS >= peak, 2 * FALSE_CORE_ML, 0.0))
    volumes = {a: [5.0] * len(THRESHOLDS) for a in curves}
    return {
        "has_core": has_core,
        "true_ml": 10.0 if has_core else 0.0,
        "reference": 30.0,
        "scores": scores["0"],
        "volumes": volumes["0"],
        "offset_scores": scores,
        "offset_volumes": volumes,
    }


def test_choose_offset_takes_the_best_pair_within_the_bounds() -> None:
    """An offset is taken where it scores better within both bounds, and not where it puts false
    core into a study without one; ties go to the smaller offset."""
    better = [_offset_row({"0": (0.40, 0.8), "4": (0.22, 1.0)})] * 3
    assert choose_offset(better)[:2] == (4.0, pytest.approx(0.22))
    false = _offset_row({"0": (0.5, 0), "4": (0.15, 0)}, has_core=False)
    offset, threshold, curve = choose_offset([*better, false])
    assert offset == 0.0 and threshold == pytest.approx(0.40) and curve["0.40"] == pytest.approx(0.8)
    tie = [_offset_row({"0": (0.35, 1.0), "4": (0.25, 1.0)})]
    assert choose_offset(tie)[:2] == (0.0, pytest.approx(0.35))


def test_score_maps_with_cbv_weights_finds_a_core_by_its_blood_volume() -> None:
    """A core read at 45 % of the reference flow, with a quarter of its blood volume: rCBF alone
    finds it from the 0.46 threshold on; weighing in rCBV (w = 2) from (0.45 · 0.25²)^(1/3) =
    0.304 on. Without a CBV map the weighted rule cannot be applied."""
    from perfnet.errors import PerfnetInputError

    maps, truth = _box_maps(22.5)
    maps.maps["cbv"] = np.where(maps.brain_mask, 4.0, 0.0).astype(np.float32)
    maps.maps["cbv"][truth] = 1.0
    scored = score_maps(maps, truth, cbv_weights=[2.0])
    assert set(scored["cbv_scores"]) == {"0", "2"} and scored["cbv_scores"]["0"] == scored["scores"]
    plain = dict(zip(THRESHOLDS.round(2), scored["cbv_scores"]["0"], strict=True))
    weighed = dict(zip(THRESHOLDS.round(2), scored["cbv_scores"]["2"], strict=True))
    assert plain[0.45] == 0.0 and plain[0.46] == pytest.approx(1.0, abs=0.01)
    assert weighed[0.30] == 0.0 and weighed[0.31] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="not both"):
        score_maps(maps, truth, offsets=[4.0], cbv_weights=[2.0])
    del maps.maps["cbv"]
    with pytest.raises(PerfnetInputError, match="CBV map"):
        score_maps(maps, truth, cbv_weights=[2.0])


def test_choose_cbv_weight_takes_the_best_pair_within_the_bounds() -> None:
    """As for the offset: a weight is taken where it scores better within both bounds, not where it
    puts false core into a study without one; ties go to the smaller weight (0: rCBF alone)."""

    def as_cbv(row: dict) -> dict:
        return row | {"cbv_scores": row.pop("offset_scores"), "cbv_volumes": row.pop("offset_volumes")}

    better = [as_cbv(_offset_row({"0": (0.36, 0.6), "2": (0.55, 0.8)})) for _ in range(3)]
    assert choose_cbv_weight(better)[:2] == (2.0, pytest.approx(0.55))
    false = as_cbv(_offset_row({"0": (0.5, 0), "2": (0.3, 0)}, has_core=False))
    weight, threshold, curve = choose_cbv_weight([*better, false])
    assert weight == 0.0 and threshold == pytest.approx(0.36) and curve["0.36"] == pytest.approx(0.6)
    tie = [as_cbv(_offset_row({"0": (0.35, 1.0), "2": (0.5, 1.0)}))]
    assert choose_cbv_weight(tie)[:2] == (0.0, pytest.approx(0.35))
    assert bootstrap(better, resamples=20)["cbv_weight_p95"] == 2.0


def test_choose_never_calls_more_core_than_there_is() -> None:
    """The Dice optimum at 0.45 calls more core than the truth holds from 0.41 on: 0.40 is chosen."""
    rows = [
        _row(0.45) | {"volumes": list(np.where(THRESHOLDS > 0.40, 30.0, 20.0)), "true_ml": 25.0},
        _row(0.45) | {"volumes": list(np.where(THRESHOLDS > 0.40, 12.0, 8.0)), "true_ml": 10.0},
    ]
    threshold, _ = choose(rows)
    assert threshold == pytest.approx(0.40)


def test_choose_takes_the_least_over_calling_threshold_when_all_over_call() -> None:
    """A network that reads the core too low over-calls it at every threshold: the lowest volume
    within the false-core bound is taken (here the smallest threshold), not the rule."""
    volumes = list(100.0 + 200.0 * (THRESHOLDS - THRESHOLDS[0]))
    rows = [_row(0.30) | {"volumes": volumes, "true_ml": 50.0}]
    threshold, _ = choose(rows)
    assert threshold == pytest.approx(THRESHOLDS[0])


def test_bootstrap_says_how_firmly_the_studies_fix_the_threshold() -> None:
    """Studies that agree (every Dice peak at 0.40) fix the choice on every resample; studies
    that disagree (peaks at 0.32 and 0.50, two each) give an interval spanning both, and the
    same rows give the same answer (seeded)."""
    from perfnet.training.core_calibration import bootstrap

    firm = bootstrap([_row(0.40) for _ in range(6)], resamples=50)
    assert firm["threshold_p5"] == firm["threshold_p95"] == pytest.approx(0.40)
    assert firm["share_choosing_it"] == 1.0 and firm["resamples"] == 50
    rows = [_row(0.32), _row(0.50), _row(0.32), _row(0.50), _row(0.0, has_core=False, false_from=0.9)]
    loose = bootstrap(rows, resamples=100)
    assert loose["threshold_p5"] == pytest.approx(0.32) and loose["threshold_p95"] == pytest.approx(0.50)
    assert 0.0 < loose["share_choosing_it"] < 1.0
    assert bootstrap(rows, resamples=100) == loose


def _calibrate_core_tool(monkeypatch, scored: list | None = None):
    """tools/calibrate_core.py with stand-in scores (cores peaking at 0.36, none where the lesion is
    "none"); ``scored`` collects the weights each study was scored with."""
    from tool_modules import load_tool

    tool = load_tool("calibrate_core")

    def stand_in(
        seed: int,
        lesion: str,
        weights,
        modality: str,
        motion: bool | None = None,
        offsets: bool = False,
        cut: tuple[float, float] | None = None,
        cbv: bool = False,
    ) -> dict:
        if scored is not None:
            scored.append(weights)
        assert motion in (None, True)
        row = _row(0.36, has_core=lesion != "none")
        if cut is not None:
            row["cut_after_s"] = cut[0]
        row |= {
            "seed": seed,
            "lesion": lesion,
            "true_ml": 10.0 if row["has_core"] else 0.0,
            "volumes": list(np.where(THRESHOLDS > 0.36, 12.0, 9.0)),
            "reference": 20.0 + seed % 10,
        }
        if offsets:  # with an offset of 4 the Dice peaks higher, at 0.25
            shifted = _row(0.25, has_core=row["has_core"])["scores"]
            row["offset_scores"] = {
                "0": row["scores"],
                "4": [1.05 * v for v in shifted] if row["has_core"] else shifted,
            }
            row["offset_volumes"] = {"0": row["volumes"], "4": list(np.where(THRESHOLDS > 0.25, 12.0, 9.0))}
        if cbv:  # weighing in rCBV (w = 2) the Dice peaks higher, at 0.55
            weighed = _row(0.55, has_core=row["has_core"])["scores"]
            row["cbv_scores"] = {
                "0": row["scores"],
                "2": [1.05 * v for v in weighed] if row["has_core"] else weighed,
            }
            row["cbv_volumes"] = {"0": row["volumes"], "2": list(np.where(THRESHOLDS > 0.55, 12.0, 8.0))}
        return row

    monkeypatch.setattr(tool, "score_study", stand_in)
    return tool


def _calibrate_mr(monkeypatch, tmp_path: Path, studies: int, *extra: str) -> tuple[Any, list[str], dict]:
    """tools/calibrate_core.py (stand-in scores) on the bundled mr.pt with ``extra`` options, written
    to ``tmp_path``: the tool, its arguments without ``extra`` and the record it wrote."""
    import sys

    from perfnet.inference.weights import BUNDLED, load_weights

    tool = _calibrate_core_tool(monkeypatch)
    out = tmp_path / "calibrated.pt"
    argv = ["calibrate_core.py", "--weights", str(BUNDLED / "mr.pt"), "--studies", str(studies)]
    argv += ["--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, *extra])
    assert tool.main() == 0
    return tool, argv, load_weights(out)[1]["core_calibration"]


def test_calibrate_core_records_the_choice_and_its_spread(tmp_path, monkeypatch) -> None:
    """tools/calibrate_core.py on stand-in scores (four cores peaking at 0.36, one without a core):
    the weights it writes carry the factor, the per-study volumes and the bootstrap, and the
    source line states the spread; the bundled file it read is untouched."""
    import sys

    from perfnet.inference.weights import BUNDLED, load_weights

    tool = _calibrate_core_tool(monkeypatch)
    bundled = BUNDLED / "mr.pt"
    before = bundled.read_bytes()
    out = tmp_path / "calibrated.pt"
    monkeypatch.setattr(
        sys, "argv", ["calibrate_core.py", "--weights", str(bundled), "--studies", "5", "--out", str(out)]
    )
    assert tool.main() == 0
    record = load_weights(out)[1]["core_calibration"]
    assert record["threshold"] == pytest.approx(0.36) and record["factor"] == pytest.approx(1.2)
    assert record["bootstrap"]["threshold_p5"] == record["bootstrap"]["threshold_p95"] == pytest.approx(0.36)
    assert "36–36 % (5th–95th percentile)" in record["source"] and len(record["studies"]) == 5
    assert bundled.read_bytes() == before
    assert record["motion"] is False and "motion forced" not in record["source"]


def test_calibrate_core_with_offsets_records_the_offset_and_its_references(tmp_path, monkeypatch) -> None:
    """``--offsets`` (the MR recipe): the pair scoring best is recorded (offset 4 at 25 %, above the
    36 % without one in the stand-in scores), with the calibration studies' reference range that
    inference holds the offset's share to, the spread of both, and a source line that names it."""
    import sys

    tool, argv, record = _calibrate_mr(monkeypatch, tmp_path, 5, "--offsets")
    assert record["offset"] == 4.0 and record["threshold"] == pytest.approx(0.25)
    assert record["factor"] == pytest.approx(0.25 / 0.30, abs=1e-4) and record["references"] == [20.0, 24.0]
    assert record["bootstrap"]["offset_p5"] == record["bootstrap"]["offset_p95"] == 4.0
    assert "25 % with an offset of 4" in record["source"]
    assert [s["core_ml"] for s in record["studies"]] == [9.0] * 5
    rows = tmp_path / "rows.json"  # rows scored without offsets cannot be re-read with them
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", str(rows)])
    assert tool.main() == 0
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", str(rows), "--offsets"])
    with pytest.raises(SystemExit):
        tool.main()


def test_calibrate_core_with_cbv_records_the_weight(tmp_path, monkeypatch) -> None:
    """``--cbv``: the (weight, threshold) pair scoring best is recorded (w = 2 at 55 %, above the
    36 % of rCBF alone in the stand-in scores) with its spread, the source line names the index,
    the per-study volumes are the weighted rule's; not with ``--offsets``, nor on rows scored
    without CBV weights."""
    import sys

    tool, argv, record = _calibrate_mr(monkeypatch, tmp_path, 5, "--cbv")
    assert record["cbv_weight"] == 2.0 and record["threshold"] == pytest.approx(0.55)
    assert "offset" not in record and record["bootstrap"]["cbv_weight_p5"] == 2.0
    assert "55 % of (rCBF · rCBV^2)^(1/3)" in record["source"] and "CBV weight 2–2" in record["source"]
    assert [s["core_ml"] for s in record["studies"]] == [8.0] * 5
    monkeypatch.setattr(sys, "argv", [*argv, "--cbv", "--offsets"])
    with pytest.raises(SystemExit):
        tool.main()
    rows = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", str(rows)])
    assert tool.main() == 0
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", str(rows), "--cbv"])
    with pytest.raises(SystemExit):
        tool.main()


def _stop_and_keep(kept: list, message: str) -> Any:
    """A stand-in that keeps its first argument in ``kept`` and stops the caller there."""

    def stop(first: Any, *args: Any, **kwargs: Any) -> Any:
        kept.append(first)
        raise RuntimeError(message)

    return stop


def test_calibrate_core_on_moving_studies_for_the_motion_specialist(tmp_path, monkeypatch) -> None:
    """``--motion`` (the recipe of ``ct-moving.pt``, which routing gives moving studies only):
    every calibration study is drawn with head motion, and the record says so."""
    from perfnet.inference.weights import BUNDLED
    from perfnet.phantom import styles
    from tool_modules import load_tool

    _, _, record = _calibrate_mr(monkeypatch, tmp_path, 3, "--motion")
    assert record["motion"] is True and "head motion forced on" in record["source"]

    drawn: list = []
    monkeypatch.setattr(styles, "simulate", _stop_and_keep(drawn, "drawn"))
    real = load_tool("calibrate_core", "calibrate_core_real")
    for motion in (True, None):
        with pytest.raises(RuntimeError, match="drawn"):
            real.score_study(16004, "none", BUNDLED / "ct.pt", "CT", motion)
    assert drawn[0].motion is True and drawn[0].motion_translation_mm == drawn[1].motion_translation_mm


def test_calibrate_core_cuts_every_second_block_of_studies(tmp_path, monkeypatch) -> None:
    """``--cut LO,HI`` (the recipe of ``ct-moving.pt``, which routing also gives acquisitions cut
    short): studies 6–11, 18–23, … end a drawn LO–HI s after the phantom's arterial arrival, the
    record and its source say how many; a bad range is refused."""
    import sys

    from perfnet.inference import cnn as cnn_inference
    from perfnet.inference.weights import BUNDLED
    from tool_modules import load_tool

    tool, argv, record = _calibrate_mr(monkeypatch, tmp_path, 14, "--cut", "12,30")
    assert record["cut"] == [12.0, 30.0]
    assert [i for i, s in enumerate(record["studies"]) if "cut_after_s" in s] == list(range(6, 12))
    assert "6 cut 12–30 s after the arterial arrival" in record["source"]
    for bad in ("30,12", "0,5", "x"):
        monkeypatch.setattr(sys, "argv", [*argv, "--cut", bad])
        with pytest.raises(SystemExit):
            tool.main()

    seen: list = []
    monkeypatch.setattr(cnn_inference, "analyze_cnn", _stop_and_keep(seen, "read"))
    real = load_tool("calibrate_core", "calibrate_core_cut")
    for cut in (None, (12.0, 30.0)):
        with pytest.raises(RuntimeError, match="read"):
            real.score_study(16004, "none", BUNDLED / "ct.pt", "CT", None, False, cut)
    from perfnet.phantom.styles import draw_config

    cfg = draw_config("geometric", 16004, "CT", matrix=128, slices=8, lesion="none")
    full, cut_short = seen
    assert full.times[-1] == pytest.approx(cfg.frame_times()[-1])
    after = cut_short.times[-1] - cfg.arrival_s
    assert 12.0 - 3.0 < after <= 30.0 and len(cut_short.times) < len(full.times)
    assert cut_short.data.shape[-1] == len(cut_short.times)


def test_calibrate_core_calibrates_an_ensemble_with_one_record(tmp_path, monkeypatch) -> None:
    """Two members with different calibrations (inference refuses such an ensemble): the studies
    are scored with both members at once, each uncalibrated, and both are written into --out with
    one shared record that names them; inference then takes them as an ensemble."""
    import sys

    import torch

    from perfnet.inference.cnn import _members
    from perfnet.inference.weights import BUNDLED, load_weights, save_weights

    model, config = load_weights(BUNDLED / "mr.pt")
    members = []
    for name, factor in (("a.pt", 1.1), ("b.pt", 1.3)):
        save_weights(tmp_path / name, model, config | {"core_calibration": {"factor": factor}})
        members.append(tmp_path / name)
    scored: list = []
    tool = _calibrate_core_tool(monkeypatch, scored)
    argv = ["calibrate_core.py", "--weights", *map(str, members), "--studies", "5"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):  # several members need a folder to be written into
        tool.main()
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "cal")])
    assert tool.main() == 0
    assert len(scored) == 5 and all([p.name for p in w] == ["a.pt", "b.pt"] for w in scored)
    assert not scored[0][0].exists()  # the uncalibrated scratch copies are gone
    records = [load_weights(tmp_path / "cal" / m.name)[1]["core_calibration"] for m in members]
    assert records[0] == records[1] and records[0]["ensemble"] == ["a.pt", "b.pt"]
    assert records[0]["factor"] == pytest.approx(1.2)
    assert "an ensemble of 2 (a.pt, b.pt)" in records[0]["source"]
    assert load_weights(members[1])[1]["core_calibration"] == {"factor": 1.3}  # the inputs untouched
    assert len(_members([tmp_path / "cal" / m.name for m in members], "MR", torch.device("cpu"))) == 2
