"""benchmarks/generalisation.py --set NAME=VALUE: one drawn parameter overridden on every study (a
factor ablation), every other drawn as before; a bad name fails before any study runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from perfnet.errors import PerfnetInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_values_read_as_json_else_as_strings() -> None:
    from generalisation import parse_overrides

    got = parse_overrides(
        ["residue=exponential", "truncated=false", "aif_stretch=1.5", "residue_shape=[0.1, 0.9]"]
    )
    assert got == {
        "residue": "exponential",
        "truncated": False,
        "aif_stretch": 1.5,
        "residue_shape": (0.1, 0.9),
    }
    with pytest.raises(PerfnetInputError, match="NAME=VALUE"):
        parse_overrides(["truncated"])


def test_an_override_changes_the_truth_it_names_and_is_recorded(tmp_path: Path) -> None:
    from generalisation import main

    common = ["--modality", "ct", "--styles", "mni", "--studies", "1", "--methods", "truth"]
    common += ["--size", "48", "--slices", "4"]
    main([*common, "--json", str(tmp_path / "drawn.json")])
    main([*common, "--set", "lesion=none", "--json", str(tmp_path / "set.json")])
    drawn, changed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("drawn", "set"))
    assert drawn["overrides"] == {} and changed["overrides"] == {"lesion": "none"}
    # study 0 is drawn with a core (the benchmark's stratification); the override wins over it
    (before,), (after,) = drawn["rows"], changed["rows"]
    assert before["true_core_ml"] > 5 and before["true_hypoperfused_ml"] > before["true_core_ml"]
    assert after["true_core_ml"] == 0 and after["true_hypoperfused_ml"] == 0
    with pytest.raises(PerfnetInputError, match="residu"):
        main([*common, "--set", "residu=gamma"])
