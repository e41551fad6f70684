"""benchmarks/tmax_convention.py: each style's Tmax convention measured on noise-free curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_conventions_of_both_styles_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind one arterial input the residues that hold their tracer before it leaves (style B's
    gamma with a minimum transit and lagged-normal) put Tmax nearer the tissue's peak than the
    exponential one does, style A's box (plug flow, no dispersion) furthest from it; the kernel
    table is the noise-free physics of ``tests/phantom/test_truth.py``; style B's own inputs with a
    gamma-variate first pass (``aif_model="gamma"``) read most of B − A away."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("tmax_convention", None)
    import tmax_convention

    out = tmp_path / "conv.json"
    assert tmax_convention.main(["--draws", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    narrow = result["common"][0]
    assert narrow["fwhm_s"] == 5.0
    rows = {k: v["mean"] for k, v in narrow["families"].items()}
    for plateau in ("B gamma", "B lagged-normal"):
        assert rows[plateau] > rows["B exponential"] + 0.3, rows
    assert rows["A box"] < rows["A exponential"] < rows["A lognormal"], rows
    assert 0.1 < narrow["difference_s"] < 0.8  # B maps a curve to a later Tmax than A
    own = result["own"]
    assert set(own) == {"A", "B", "B gamma first pass", "difference_s", "gamma_difference_s"}
    # the same configs and transit times with a gamma-variate first pass: most of the gap goes
    assert own["B gamma first pass"]["mean"] < own["B"]["mean"] - 0.3, own
    kernel = result["kernel"]["rows"]["exponential, beta 0.3 s"]
    assert kernel["tmax_s"] == [0.90, 0.79, 0.72, 0.61]
    assert max(kernel["tissue_peak_lag_s"]) - min(kernel["tissue_peak_lag_s"]) <= 0.02
