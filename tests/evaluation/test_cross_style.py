"""benchmarks/cross_style.py: the cross-style gap both ways, from the simulated cohorts to the
table, on a toy scale (4 studies a style, 40² × 2, two epochs of a width-4 U-Net)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TOY = [
    *("--modality", "ct", "--cases", "4", "--studies", "1"),
    *("--simulate-args", "--size 40 --slices 2 --frames 30", "--score-args", "--size 40 --slices 2"),
    "--train-args",
    "--width 4 --pixel-mm 6 --crop 32 --pretrain-size 32 --pretrain-epochs 1 --epochs 2 --batch-size 2"
    " --folds 2 --frames 20",
]


def _series(cohort: Path, subject: str) -> np.ndarray:
    return np.asarray(nib.load(cohort / subject / "ses-01" / f"{subject}_ses-01_ctp.nii.gz").dataobj)


def test_each_style_and_both_trained_and_scored_on_both_and_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import cross_style

    work, table = tmp_path / "work", tmp_path / "table.json"
    assert cross_style.main([*TOY, "--work", str(work), "--json", str(table)]) == 0
    printed = capsys.readouterr().out
    # AB: the first half of each one-style cohort (the same studies), style B renumbered from 1001
    ab = work / "ct-AB-cohort"
    assert sorted(p.name for p in ab.glob("sub-*")) == ["sub-0001", "sub-0002", "sub-1001", "sub-1002"]
    for subject, source in (
        ("sub-0002", work / "ct-A-cohort" / "sub-0002"),
        ("sub-1002", work / "ct-B-cohort" / "sub-0002"),
    ):
        assert np.array_equal(_series(ab, subject), _series(source.parent, source.name))
    styles = {
        p.parents[2].name: json.loads(p.read_text())["style"]
        for p in ab.glob("sub-*/ses-01/truth/parameters.json")
    }
    assert styles == {"sub-0001": "geometric", "sub-0002": "geometric", "sub-1001": "mni", "sub-1002": "mni"}
    # every network scored on both styles against the phantoms' truth; the table is those scores
    means = json.loads(table.read_text())["means"]
    for training, trained in (("A", "geometric"), ("B", "mni"), ("AB", "geometric + mni")):
        scored = json.loads((work / f"ct-{training}-seed0.json").read_text())
        assert scored["trained_on"] == {"CT cnn": trained}
        for style, name in (("A", "geometric"), ("B", "mni")):
            rows = [r for r in scored["rows"] if r["style"] == name]
            assert len(rows) == 1 and 0.0 < rows[0]["tmax_maec"] < 20.0
            assert means[training][style]["tmax_maec"] == pytest.approx(rows[0]["tmax_maec"])
        a, b = means[training]["A"], means[training]["B"]
        row = next(line for line in printed.splitlines() if line.strip().startswith(f"{training} "))
        assert f"{a['tmax_maec']:.2f}" in row and f"{b['tmax_maec']:.2f}" in row
        assert f"{b['tmax_maec'] - a['tmax_maec']:+.2f}" in row and f"({trained})" in row
    # a second run finds every step done: nothing simulated or trained again, the same table
    monkeypatch.setattr(cross_style.train_weights, "perfnet", lambda *a: pytest.fail(f"ran {a}"))
    again = tmp_path / "again.json"
    assert cross_style.main([*TOY, "--work", str(work), "--json", str(again)]) == 0
    assert json.loads(again.read_text()) == json.loads(table.read_text())


def test_the_training_sets_are_checked() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import cross_style

    with pytest.raises(SystemExit):
        cross_style.main(["--modality", "ct", "--train", "A,C"])
