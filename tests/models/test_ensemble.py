"""CNN ensembles (``predict(weights=[...])``, ``analyze --weights A --weights B``): the maps are the
members' mean, the uncertainty the Laplace scale of their mixture, and mismatched members are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perfnet.cli import main
from perfnet.errors import PerfnetInputError
from perfnet.inference import predict
from perfnet.inference.weights import bundled_weights, load_weights, save_weights
from perfnet.io import save_series_nifti
from phantoms import small_study


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bundled MR network and a second member: the same with its last layers' weights × 1.1."""
    folder = tmp_path_factory.mktemp("ensemble")
    a = bundled_weights("MR")
    model, config = load_weights(a)
    with torch.no_grad():
        last = [p for name, p in model.named_parameters() if p.ndim > 1][-1]
        last.mul_(1.1)
    b = save_weights(folder / "b.pt", model, config)
    return a, b


def test_ensemble_maps_are_the_members_mean(members: tuple[Path, Path]) -> None:
    a, b = members
    series = small_study(5353, "MR", matrix=64, slices=3, lesion="penumbra", motion=False).series
    run = {"device": "cpu", "flips": False, "skip_frames": 0, "consistency": False}
    one, two = predict(series, a, **run), predict(series, b, **run)
    both = predict(series, [a, b], **run | {"consistency": True})
    same = predict(series, [a, a], **run)
    assert not np.allclose(one["tmax"], two["tmax"])  # two different members
    for name in ("cbf", "cbv", "mtt", "tmax", "ttp"):
        np.testing.assert_array_equal(same[name], one[name])  # the mean of one model twice is the model
        np.testing.assert_allclose(both[name], (one[name] + two[name]) / 2, rtol=1e-5, atol=1e-5)
        # the mixture's Laplace scale: mean of b² plus half the spread of the members' means
        u1, u2 = one[f"{name}_uncertainty"].astype(np.float64), two[f"{name}_uncertainty"].astype(np.float64)
        spread = ((one[name] - two[name]).astype(np.float64) / 2) ** 2
        expected = np.sqrt((u1**2 + u2**2) / 2 + spread / 2)
        np.testing.assert_allclose(both[f"{name}_uncertainty"], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(same[f"{name}_uncertainty"], one[f"{name}_uncertainty"], rtol=1e-6)
    prov = both.provenance
    assert prov["weights"] == [str(a), str(b)] and prov["ensemble"] == {"members": 2, "combine": "mean"}
    assert one.provenance["weights"] == str(a) and "ensemble" not in one.provenance
    assert prov["shift_consistency"]["region_ml"] >= 0  # the shift check runs on the mean


def test_mismatched_members_are_refused(members: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = members
    series = small_study(5353, "MR", matrix=64, slices=3, lesion="penumbra", motion=False).series
    with pytest.raises(PerfnetInputError, match="trained on CT"):
        predict(series, [a, bundled_weights("CT")], device="cpu", flips=False)
    model, config = load_weights(a)
    fewer = save_weights(tmp_path / "fewer.pt", model, config | {"maps": config["maps"][:-1]})
    with pytest.raises(PerfnetInputError, match=r"fewer\.pt.*maps"):
        predict(series, [a, fewer], device="cpu", flips=False)
    # one core rule reads the mean: members whose calibrations differ only by an offset are refused
    calibration = dict(config.get("core_calibration") or {"factor": 1.1})
    same, shifted = (
        save_weights(tmp_path / f"{name}.pt", model, config | {"core_calibration": calibration | extra})
        for name, extra in (("same", {}), ("shifted", {"offset": 6.0, "references": [20.0, 45.0]}))
    )
    if calibration.get("offset"):
        shifted = save_weights(tmp_path / "shifted.pt", model, config | {"core_calibration": {"factor": 1.1}})
    with pytest.raises(PerfnetInputError, match=r"shifted\.pt.*core calibration"):
        predict(series, [same, shifted], device="cpu", flips=False)


def test_analyze_takes_repeated_weights(
    members: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = members
    study = small_study(5353, "MR", matrix=64, slices=3, lesion="penumbra", motion=False)
    path = save_series_nifti(study.series, tmp_path / "dsc.nii.gz")
    out = tmp_path / "out"
    args = [
        "analyze",
        str(path),
        "--out",
        str(out),
        "--method",
        "cnn",
        "--no-report",
        "--no-motion-correction",
    ]
    assert main([*args, "--weights", str(a), "--weights", str(b)]) == 0
    capsys.readouterr()
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["weights"] == [str(a), str(b)] and provenance["ensemble"]["members"] == 2
