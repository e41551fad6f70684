"""tools/train_weights.py's options for experiments: ``--prepare-only`` simulates every stage's
cohort and prepares its slices (with ``--jobs``) and trains nothing; ``--candidate`` keeps a bundled
recipe out of the package."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tool_modules import load_tool


@pytest.fixture
def tool(monkeypatch: pytest.MonkeyPatch):
    module = load_tool("train_weights")
    small = ["--slices", "4", "--size", "64", "--frames", "40"]
    tiny = {
        "bundle": True,
        "core_calibration": True,
        "cohorts": [module._cohort("mr", 5, 20000, *small), module._cohort("mr", 5, 21000, *small)],
        "stages": [
            {"cohort": 0, "train": [*module.TEMPORAL, *module.SCRATCH, *module.ARTERIAL], "minutes": 1},
            {"cohort": 1, "train": [*module.TEMPORAL, *module.FINE_TUNE, *module.ARTERIAL], "minutes": 1},
        ],
    }
    monkeypatch.setitem(module.SETTINGS, "mr", tiny)
    return module


@pytest.mark.slow
def test_prepare_only_simulates_and_prepares_every_stage_and_trains_nothing(
    tool, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(
        sys, "argv", ["train_weights.py", "mr", "--work", str(tmp_path), "--prepare-only", "--jobs", "2"]
    )
    assert tool.main() == 0
    for stage, cohort in ((0, "mr-cohort"), (1, "mr-cohort-2")):
        run = tmp_path / ("mr-run" if stage == 0 else "mr-run-2")
        assert len(list((tmp_path / cohort).glob("sub-*/ses-01/*_dsc.nii.gz"))) == 5
        assert sorted(p.name for p in (run / "slices").iterdir()) == [
            f"sub-{i:04d}_ses-01" for i in range(1, 6)
        ]
        assert not (run / "plan.json").exists() and not (run / "weights.pt").exists()
    assert not list(tmp_path.glob("*.pt"))  # nothing trained, nothing bundled


def test_candidate_keeps_a_bundled_recipe_out_of_the_package(tool, tmp_path, monkeypatch) -> None:
    """``--candidate`` on a bundled recipe: trained into --work (here: the bundling step only, on
    stand-in run folders), the package's weights untouched, no core calibration run."""
    calls: list[list[str]] = []
    monkeypatch.setattr(tool.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(tool, "WEIGHTS", tmp_path / "package")
    monkeypatch.setattr(tool, "model_card", lambda *a, **k: "card")
    monkeypatch.setattr("perfnet.inference.weights.load_weights", lambda path: (None, {}))
    for run in ("mr-run", "mr-run-2"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "plan.json").write_text('{"config": {}}')
        (tmp_path / run / "weights.pt").write_bytes(b"weights of " + run.encode())
    argv = ["train_weights.py", "mr", "--work", str(tmp_path), "--candidate", "--bundle-only"]
    monkeypatch.setattr(sys, "argv", argv)
    assert tool.main() == 0
    assert (tmp_path / "mr.pt").read_bytes() == b"weights of mr-run-2"
    assert (tmp_path / "mr.md").read_text() == "card"
    assert not (tmp_path / "package").exists() and calls == []  # not bundled, not calibrated


def test_stages_trains_a_candidate_of_the_first_stages(tool, tmp_path, monkeypatch) -> None:
    """``--stages 1``: only stage 1, as a candidate (in --work, not bundled, nothing fitted after)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(tool.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(tool, "WEIGHTS", tmp_path / "package")
    monkeypatch.setattr(
        tool, "model_card", lambda modality, plans, settings, *a: f"{len(settings['stages'])}"
    )
    monkeypatch.setattr("perfnet.inference.weights.load_weights", lambda path: (None, {}))
    (tmp_path / "mr-run").mkdir()
    (tmp_path / "mr-run" / "plan.json").write_text('{"config": {}}')
    (tmp_path / "mr-run" / "weights.pt").write_bytes(b"stage 1")
    monkeypatch.setattr(
        sys, "argv", ["train_weights.py", "mr", "--work", str(tmp_path), "--stages", "1", "--bundle-only"]
    )
    assert tool.main() == 0
    assert (tmp_path / "mr.pt").read_bytes() == b"stage 1" and (tmp_path / "mr.md").read_text() == "1"
    assert not (tmp_path / "package").exists() and calls == []
    monkeypatch.setattr(sys, "argv", ["train_weights.py", "mr", "--stages", "3"])
    with pytest.raises(SystemExit):
        tool.main()


def test_a_stage_on_an_earlier_stage_s_cohort_adopts_its_slices(tool, tmp_path) -> None:
    """CT stage 3 trains on stage 1's cohort again: it adopts stage 1's prepared slices
    (``perfnet train --reuse-slices``) instead of preparing the same studies again."""
    stages = tool.SETTINGS["ct"]["stages"]
    assert [s["cohort"] for s in stages] == [0, 1, 0]
    assert tool._reuse(tmp_path, "ct", stages, 0) == [] and tool._reuse(tmp_path, "ct", stages, 1) == []
    assert tool._reuse(tmp_path, "ct", stages, 2) == ["--reuse-slices", str(tmp_path / "ct-run")]


def test_a_variant_on_another_recipe_s_linked_cohort_adopts_its_slices(tool, tmp_path) -> None:
    """A variant whose cohort folder links another recipe's (the same studies) is handed that
    recipe's run on it; runs on other cohorts are not."""
    import json

    for name, cohort in (("ct-run", "ct-cohort"), ("ct-run-2", "ct-cohort-2")):
        (tmp_path / cohort).mkdir()
        (tmp_path / name).mkdir()
        (tmp_path / name / "plan.json").write_text(json.dumps({"cohort": str(tmp_path / cohort)}))
    (tmp_path / "ct-x-cohort").symlink_to(tmp_path / "ct-cohort")
    stages = tool.SETTINGS["ct"]["stages"]
    assert tool._reuse(tmp_path, "ct-x", stages, 0) == ["--reuse-slices", str(tmp_path / "ct-run")]
    assert tool._reuse(tmp_path, "ct-x", stages, 1) == []  # ct-x-cohort-2 not linked (nor simulated)
    assert tool._reuse(tmp_path, "ct-x", stages, 2) == [
        "--reuse-slices",
        str(tmp_path / "ct-x-run"),
        "--reuse-slices",
        str(tmp_path / "ct-run"),
    ]


def _seed_ranges(tool) -> list[tuple[str, int, int, tuple[str, ...]]]:
    """Every `perfnet simulate` call of every recipe: (modality, first seed, end, the other arguments)."""
    calls = []
    for recipe in tool.SETTINGS.values():
        for cohort in recipe["cohorts"]:
            for args in cohort if isinstance(cohort[0], list) else [cohort]:
                i = {k: args[args.index(k) + 1] for k in ("--modality", "--cases", "--seed")}
                seed, rest = int(i["--seed"]), tuple(a for a in args if a not in i.values() and a not in i)
                calls.append((i["--modality"], seed, seed + int(i["--cases"]), rest))
    return calls


def test_recipe_seeds_stay_clear_of_the_tests_and_benchmarks_and_of_each_other() -> None:
    """Every recipe's studies are seeded in [10000, 70000): the tests draw seeds below 10000, the
    benchmarks 70000 and above. Two calls whose seeds overlap use the same arguments (a replay of
    the same studies) or differ only in how the draw is widened (the lesion-delay decoupling, wider
    residue families: a control on the same seeds)."""
    module = load_tool("train_weights", "train_weights_seeds")
    calls = _seed_ranges(module)
    assert len(calls) > 10
    decoupling = {"--delay-power", "--delay-mix", *module._APART[1::2], "--wide-residue"}
    for modality, first, end, rest in calls:
        assert 10000 <= first < end <= 70000, (modality, first, end)
        for other in calls:
            if other[0] == modality and other[1] < end and first < other[2]:
                same = [{a for a in r if a not in decoupling} for r in (rest, other[3])]
                assert same[0] == same[1], ((first, end, rest), other)


def _build_specialist(primary: str, tmp_path: Path, monkeypatch) -> tuple[Any, list[list[str]], Path]:
    """``train_weights.py <primary>-moving`` with its training run already in ``tmp_path`` and the
    bundled ``<primary>.pt`` copied into a stand-in package: the tool, the commands it ran
    (subprocesses recorded, not run) and the package folder."""
    from perfnet.inference.weights import BUNDLED

    tool = load_tool("train_weights", f"train_weights_{primary}_specialist")
    calls: list[list[str]] = []
    monkeypatch.setattr(tool.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    package = tmp_path / "package"
    package.mkdir()
    (package / f"{primary}.pt").write_bytes((BUNDLED / f"{primary}.pt").read_bytes())
    monkeypatch.setattr(tool, "WEIGHTS", package)
    monkeypatch.setattr(tool, "model_card", lambda *a, **k: "card")
    monkeypatch.setattr("perfnet.inference.weights.load_weights", lambda path: (None, {}))
    name = f"{primary}-moving"
    (tmp_path / f"{name}-cohort").mkdir()
    (tmp_path / f"{name}-run").mkdir()
    (tmp_path / f"{name}-run" / "plan.json").write_text('{"config": {}}')
    (tmp_path / f"{name}-run" / "weights.pt").write_bytes(b"specialist")
    monkeypatch.setattr(sys, "argv", ["train_weights.py", name, "--work", str(tmp_path)])
    assert tool.main() == 0
    return tool, calls, package


def test_the_ct_specialist_fine_tunes_the_ct_network_just_built(tmp_path, monkeypatch) -> None:
    """``ct-moving`` (bundled since stop 42) starts from the ``ct.pt`` in the package (the one
    `make weights` has just built, its heads dropped), not from a commit, and fits its own scale
    head (on cohort 11000's held-out patients only) and core rule on its own file, both calibrated
    on moving studies (the only ones routing gives it)."""
    import torch

    _, calls, package = _build_specialist("ct", tmp_path, monkeypatch)
    train, scale, calibrate = calls
    init = tmp_path / "ct-moving-init.pt"
    assert train[train.index("--init") + 1] == str(init) and "--freeze-norm" in train
    assert train[train.index("--truncate") + 1] == "12,40"  # cut-short acquisitions (stop 43)
    state = torch.load(init, weights_only=True)["state_dict"]
    built = torch.load(package / "ct.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("scale_head.") for k in state)  # the backbone, its heads dropped
    assert all(torch.equal(v, built[k]) for k, v in state.items())
    assert scale[scale.index("--weights") + 1] == str(package / "ct-moving.pt")
    assert scale[scale.index("--fit-cohorts") + 1] == "11000" and "--calibration-motion" in scale
    assert calibrate[calibrate.index("--weights") + 1] == str(package / "ct-moving.pt")
    assert calibrate[-1] == "--motion"
    assert (package / "ct-moving.pt").read_bytes() == b"specialist"


def test_the_mr_specialist_fine_tunes_the_mr_network_just_built(tmp_path, monkeypatch) -> None:
    """``mr-moving`` (stop 44) starts from the ``mr.pt`` in the package, trains on cut acquisitions
    with the primary's arterial bolus patch, and calibrates its own core rule on moving studies; the
    temporal network has no scale head to fit."""
    import torch

    tool, calls, package = _build_specialist("mr", tmp_path, monkeypatch)
    train, calibrate = calls
    init = tmp_path / "mr-moving-init.pt"
    assert train[train.index("--init") + 1] == str(init)
    assert train[train.index("--truncate") + 1] == "12,40"
    assert train[train.index("--bolus-rule") + 1] == "arterial"
    assert train[train.index("--model") + 1] == "temporal"
    state = torch.load(init, weights_only=True)["state_dict"]
    built = torch.load(package / "mr.pt", weights_only=True)["state_dict"]
    assert state.keys() == built.keys() and all(torch.equal(v, built[k]) for k, v in state.items())
    assert calibrate[calibrate.index("--weights") + 1] == str(package / "mr-moving.pt")
    assert calibrate[-1] == "--motion"
    assert (package / "mr-moving.pt").read_bytes() == b"specialist"
    # its cohort: the primary's own static studies replayed, and moving ones on new seeds
    replay, moving = tool.SETTINGS["mr-moving"]["cohorts"][0]
    assert replay[replay.index("--seed") + 1] == "21000" and "--no-motion" in replay
    assert "--motion" in moving and int(moving[moving.index("--seed") + 1]) == 25000


def test_the_mr_recipe_calibrates_its_core_rule_with_an_offset() -> None:
    """The MR network reads no flow as a floor (stop 45): its recipe fits the core rule with an offset
    (``calibrate_core.py --offsets``) and the card states it; CT's recipes keep the factor alone."""
    tool = load_tool("train_weights", "train_weights_offsets")
    assert tool.SETTINGS["mr"]["core_calibration"] == ["--offsets"]
    assert tool.SETTINGS["ct"]["core_calibration"] is True
    core = {"source": "s", "factor": 0.6667, "offset": 6.0, "references": [21.0, 43.5]}
    assert tool._offset_text(core) == ", offset 6 (held at reference CBFs 21–43.5)"
    assert tool._offset_text({"factor": 1.2}) == ""


def test_bundled_plans_name_no_absolute_path_of_the_build_machine(tmp_path) -> None:
    tool = load_tool("train_weights", "train_weights_public")
    work = tmp_path / "work"
    plan = {"cohort": str(work / "ct-cohort"), "config": {"init": str(work / "ct-moving-init.pt"), "lr": 1}}
    assert tool._public(plan, work) == {"config": {"init": "<work>/ct-moving-init.pt", "lr": 1}}
    inside = {"config": {"init": str(tool.ROOT / "build" / "weights" / "ct-run" / "weights.pt")}}
    assert tool._public(inside, work)["config"]["init"] == "build/weights/ct-run/weights.pt"
    assert tool._public({"config": {"init": None}}, work) == {"config": {"init": None}}
