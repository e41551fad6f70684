"""`perfnet demo` (the README's first command) end to end: both methods, their reports, the
comparison against the phantom's truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfnet.cli import main
from perfnet.inference.weights import bundled_weights


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`perfnet demo` run once: its folder and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_demo_writes_both_analyses_and_compares_them_with_truth(demo: tuple[Path, str]) -> None:
    out, printed = demo
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["truth"]["core"] > 1 and comparison["truth"]["penumbra"] > 1
    for method in ("cnn", "osvd"):
        c = comparison[method]
        assert (out / method / "report.html").is_file() and (out / method / "lesions.json").is_file()
        assert c["report"] in printed
        assert 0 <= c["tmax_maec_s"] < 5 and 0.3 < c["hypoperfused_dice"] <= 1
    assert comparison["cnn"]["tmax_maec_s"] < comparison["osvd"]["tmax_maec_s"]
    assert comparison["weights"] == "bundled"
    # the CNN's core rule carries its weights' calibration factor, oSVD's is the plain rule
    assert "×" in comparison["cnn"]["core_rule"] and "×" not in comparison["osvd"]["core_rule"]
    assert "core mL" in printed and "penumbra mL" in printed
    # never silently wrong: the CNN finds half the true core, or its cross-check with oSVD flags it
    cnn, truth = comparison["cnn"], comparison["truth"]["core"]
    check = cnn["cross_check"]
    assert check["method"] == "osvd" and check["cnn_core_ml"] == cnn["volumes_ml"]["core"]
    assert check["core_ml"] == comparison["osvd"]["volumes_ml"]["core"]  # oSVD's own analysis, same core
    assert cnn["volumes_ml"]["core"] >= 0.5 * truth or "cnn_core_disagrees" in cnn["qc_flags"], cnn
    assert ("cnn_core_disagrees" in cnn["qc_flags"]) == check["disagrees"]
    assert check["disagrees"] == ("cross-check:" in printed) and "cross_check" not in comparison["osvd"]


@pytest.mark.xfail(
    strict=True,
    reason="issue 12: the bundled CT network reads the demo core's CBF at ~45 % of healthy tissue (truth"
    " 26 %): its core sits at a short delay (Tmax 8 s), and in its training lesions the lowest flow"
    " always had the longest delay (docs/cnn.md 'The CNN's core', stop 31); 0.4 of 11 mL found",
)
def test_the_demo_s_cnn_finds_half_the_true_core(demo: tuple[Path, str]) -> None:
    """The issue's Done criterion: the demo finds the demo study's core (here: at least half its
    volume, with a Dice of 0.5). Strict: when a new network passes, this marker must go."""
    comparison = json.loads((demo[0] / "comparison.json").read_text())
    cnn, truth = comparison["cnn"], comparison["truth"]["core"]
    assert cnn["volumes_ml"]["core"] >= 0.5 * truth and cnn["core_dice"] >= 0.5, cnn


def test_demo_takes_candidate_weights(tmp_path: Path) -> None:
    """`perfnet demo --weights FILE`: a trained candidate compared with oSVD on the demo study."""
    from perfnet.cli.parser import build_parser

    args = build_parser().parse_args(["demo", "--out", str(tmp_path), "--weights", "candidate.pt"])
    assert args.weights == Path("candidate.pt")
    assert main(["demo", "--out", str(tmp_path / "d"), "--weights", str(tmp_path / "missing.pt")]) == 2
    assert main(["demo", "--out", str(tmp_path / "d"), "--weights", str(bundled_weights("MR"))]) == 2
    assert not (tmp_path / "d").exists()  # refused before anything is written
