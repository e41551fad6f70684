"""The CNN's core cross-checked against a deconvolution method (perfnet.inference.crosscheck)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perfnet import qc
from perfnet.cli import main
from perfnet.errors import PerfnetInputError
from perfnet.inference.crosscheck import compare_cores, cross_check_flags
from perfnet.study import analyze


def _lesions(core: np.ndarray, hypo: np.ndarray) -> tuple[dict, dict]:
    volumes = {"core": float(core.sum()) * 0.1, "hypoperfused": float(hypo.sum()) * 0.1}
    return {"volumes_ml": volumes, "core_rule": "rule"}, {"core": core, "hypoperfused": hypo}


def _box(shape: tuple[int, ...], x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[x0:x1] = True
    return mask


def test_a_core_the_network_misses_inside_its_own_hypoperfusion_is_flagged() -> None:
    """0.1 mL voxels: the network's hypoperfused region 200 voxels (20 mL); the deconvolution's
    core 80 voxels (8 mL) inside it and the network's core 0 or 2 mL: flagged; the network's core
    at 5 mL (the deconvolution's 8 under twice that): not; the same 8 mL outside the network's
    hypoperfusion (deconvolution's false core in tissue the network reads as normal): not."""
    shape = (400, 1, 1)
    hypo = _box(shape, 0, 200)
    none = np.zeros(shape, dtype=bool)
    other = _lesions(_box(shape, 50, 130), _box(shape, 0, 220))
    for cnn_core, flagged in ((none, True), (_box(shape, 60, 80), True), (_box(shape, 60, 110), False)):
        cnn = _lesions(cnn_core, hypo)
        record = compare_cores(cnn[0], other[0], cnn[1], other[1], 0.1, "osvd", 1.0)
        assert record["core_in_cnn_hypoperfused_ml"] == pytest.approx(8.0)
        assert record["disagrees"] is flagged
        flags = cross_check_flags(record)
        assert [f["code"] for f in flags] == (["cnn_core_disagrees"] if flagged else [])
    missed, missed_masks = _lesions(none, hypo)
    record = compare_cores(missed, other[0], missed_masks, other[1], 0.1, "osvd", 1.0)
    message = cross_check_flags(record)[0]["message"]
    assert "0.0 mL" in message and "osvd" in message and "8.0 mL" in message
    assert qc.verdict([{"code": "cnn_core_disagrees"}]) == "review"
    outside = _lesions(_box(shape, 300, 380), _box(shape, 300, 390))
    record = compare_cores(missed, outside[0], missed_masks, outside[1], 0.1, "osvd", 1.0)
    assert record["core_ml"] == pytest.approx(8.0) and record["core_in_cnn_hypoperfused_ml"] == 0.0
    assert not record["disagrees"] and cross_check_flags(record) == []


def test_a_core_the_deconvolution_does_not_support_is_flagged() -> None:
    """The other direction: the network calls 8 mL of core inside its 20 mL of hypoperfusion. The
    deconvolution's core there 2 mL (or 0, or 3 mL outside that region): ``cnn_core_unsupported``;
    3 mL there (over a third of the network's) or 5 mL: not; a network core of 4.5 mL: not."""
    shape = (400, 1, 1)
    hypo = _box(shape, 0, 200)
    cnn = _lesions(_box(shape, 20, 100), hypo)
    for other_core, flagged in (
        (_box(shape, 40, 60), True),
        (np.zeros(shape, dtype=bool), True),
        (_box(shape, 300, 330), True),
        (_box(shape, 40, 70), False),
        (_box(shape, 40, 90), False),
    ):
        other = _lesions(other_core, _box(shape, 0, 220))
        record = compare_cores(cnn[0], other[0], cnn[1], other[1], 0.1, "osvd", 1.0)
        assert record["unsupported"] is flagged and not record["disagrees"], record
        flags = cross_check_flags(record)
        assert [f["code"] for f in flags] == (["cnn_core_unsupported"] if flagged else [])
    message = cross_check_flags(record | {"unsupported": True})[0]["message"]
    assert "8.0 mL" in message and "5.0 mL" in message and "over-called" in message
    assert qc.verdict([{"code": "cnn_core_unsupported"}]) == "review"
    small, none = _lesions(_box(shape, 20, 65), hypo), _lesions(np.zeros(shape, dtype=bool), hypo)
    record = compare_cores(small[0], none[0], small[1], none[1], 0.1, "osvd", 1.0)
    assert record["cnn_core_ml"] == pytest.approx(4.5) and not record["unsupported"]


def test_cross_check_is_for_a_cnn_against_a_conventional_method(tmp_path: Path, capsys) -> None:
    series = tmp_path / "missing.nii.gz"
    with pytest.raises(PerfnetInputError, match="not a CNN"):
        analyze(series, "osvd", cross_check="osvd")
    with pytest.raises(PerfnetInputError, match="conventional method"):
        analyze(series, "cnn", cross_check="cnn")
    out = tmp_path / "out"
    assert main(["analyze", str(series), "--out", str(out), "--method", "osvd", "--cross-check", "osvd"]) == 2
    err = capsys.readouterr().err
    assert "--cross-check" in err and len(err.strip().splitlines()) == 1 and not out.exists()
