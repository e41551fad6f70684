"""Metrics and statistics against hand-computed values; `perfnet evaluate` on a phantom cohort."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from perfnet.cli import main
from perfnet.evaluation import (
    bland_altman,
    coefficient_of_repeatability,
    dice,
    friedman,
    icc1k,
    mae,
    maec,
    mse,
    pearson,
    psnr,
    ssim,
)


def test_map_metrics_by_hand() -> None:
    ref = np.array([0.0, 2.0, 4.0, 30.0])
    pred = np.array([1.0, 2.0, 2.0, 25.0])
    mask = np.array([True, True, True, False])
    assert mse(pred, ref, mask) == pytest.approx((1 + 0 + 4) / 3)
    assert mae(pred, ref, mask) == pytest.approx(1.0)
    assert maec(pred, ref, None, (0, 20)) == pytest.approx((1 + 0 + 2 + 0) / 4)  # 30, 25 clip to 20
    assert psnr(pred, ref, mask) == pytest.approx(10 * math.log10(16 / (5 / 3)))
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_ssim_identity_and_a_constant_offset() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(32, 32, 3))
    assert ssim(img, img) == pytest.approx(1.0)
    ref = np.full((20, 20, 2), 10.0)
    # constant images: structure term 1, luminance (2·10·12 + C1)/(10² + 12² + C1), C1 = (0.01·1)²
    assert ssim(ref + 2.0, ref) == pytest.approx((240 + 1e-4) / (244 + 1e-4))
    assert ssim(img + rng.normal(scale=2.0, size=img.shape), img) < 0.5


def test_agreement_statistics_by_hand() -> None:
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4)
    ba = bland_altman(a, b)
    sd = math.sqrt(((0 - 1.5) ** 2 + (1 - 1.5) ** 2 + (2 - 1.5) ** 2 + (3 - 1.5) ** 2) / 3)
    assert ba["bias"] == pytest.approx(1.5) and ba["sd"] == pytest.approx(sd)
    assert ba["loa_low"] == pytest.approx(1.5 - 1.96 * sd) and ba["loa_high"] == pytest.approx(
        1.5 + 1.96 * sd
    )
    assert coefficient_of_repeatability(a, b) == pytest.approx(1.96 * sd)
    x, y = np.array([1.0, 2, 3, 5, 8]), np.array([2.0, 3, 5, 4, 9])
    assert pearson(x, y)["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    # Shrout & Fleiss (1979), Table 2: 6 targets × 4 judges; ICC(1,4) = 0.44
    table = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    icc = icc1k(table)
    msb, msw = 11.24, 6.26  # the paper's mean squares (between targets, within targets)
    assert icc["icc"] == pytest.approx((msb - msw) / msb, abs=0.005) and icc["icc"] == pytest.approx(
        0.44, abs=0.01
    )
    assert icc["F"] == pytest.approx(msb / msw, abs=0.01)
    assert icc["ci_low"] < icc["icc"] < icc["ci_high"]
    assert icc1k(np.column_stack([x, x]))["icc"] == 1.0
    # perfectly consistent ranks of 3 methods over 4 studies: χ² = 12/(n·k·(k+1))·ΣR² − 3n(k+1) = 8
    res = friedman(np.array([1.0, 2, 3, 4]), np.array([2.0, 3, 4, 5]), np.array([3.0, 4, 5, 6]))
    assert res["statistic"] == pytest.approx(8.0) and res["p"] == pytest.approx(math.exp(-4.0))


def test_evaluate_cli_on_a_phantom_cohort(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cohort = tmp_path / "cohort"
    args = ["simulate", str(cohort), "--cases", "3", "--seed", "310", "--size", "64", "--slices", "4"]
    assert main([*args, "--no-motion", "--lesion", "penumbra"]) == 0
    pred = tmp_path / "pred"
    for series in sorted(cohort.rglob("*_ctp.nii.gz")):
        name = series.name.split("_ctp")[0]
        assert (
            main(
                [
                    "analyze",
                    str(series),
                    "--out",
                    str(pred / name),
                    "--method",
                    "csvd",
                    "--no-motion-correction",
                ]
            )
            == 0
        )
    # the truth as a "prediction" scores perfectly
    perfect = tmp_path / "perfect"
    for truth in cohort.rglob("truth"):
        shutil.copytree(truth, perfect / f"{truth.parent.parent.name}_{truth.parent.name}")
    assert main(["evaluate", str(perfect), str(cohort), "--out", str(tmp_path / "ev0")]) == 0
    summary = json.loads((tmp_path / "ev0" / "summary.json").read_text())
    assert summary["studies"] == 3
    assert (
        summary["metrics"]["tmax_maec"]["mean"] == 0 and summary["metrics"]["hypoperfused_dice"]["mean"] == 1
    )
    assert summary["volumes"]["hypoperfused"]["icc1k"]["icc"] == 1.0
    # the conventional maps against the truth
    capsys.readouterr()
    code = main(
        [
            "evaluate",
            str(pred),
            str(cohort),
            "--out",
            str(tmp_path / "ev"),
            "--compare",
            f"truth={perfect}",
            "--compare",
            str(pred),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "evaluated 3 studies" in out and "hypoperfused" in out
    with (tmp_path / "ev" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["study"] for r in rows] == ["sub-0001_ses-01", "sub-0002_ses-01", "sub-0003_ses-01"]
    for r in rows:
        assert 0 <= float(r["tmax_maec"]) < 5 and 0 <= float(r["hypoperfused_dice"]) <= 1
        assert float(r["hypoperfused_ml_ref"]) > 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert set(summary["volumes"]) == {"core", "hypoperfused", "penumbra"}
    assert summary["friedman_tmax_maec"]["methods"] == ["prediction", "truth", "pred"]
    assert (tmp_path / "ev" / "figures" / "bland_altman_hypoperfused.png").stat().st_size > 5000
    # no common names: one-line error, nothing written
    assert main(["evaluate", str(pred), str(tmp_path / "ev"), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
