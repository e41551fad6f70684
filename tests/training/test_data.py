"""Training sees exactly what inference sees: the network input of a study made for training
(``load_study``, cached in the run folder) equals the one ``analyze --method cnn`` gives the model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import perfnet.inference.cnn as cnn
import perfnet.inference.series as series_module
from perfnet.inference import analyze_cnn
from perfnet.inference.inputs import bolus_rule_of, resize_slices
from perfnet.inference.weights import bundled_weights, load_weights
from perfnet.io import load_series
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.cohort import write_study
from perfnet.training.data import discover, load_study

MAPS = ["cbf", "cbv", "mtt", "tmax", "ttp"]
#: MR frames brighter before T1 steady state (the first two), as a real DSC series starts.
LEADING = 2


@pytest.fixture(scope="module")
def moving_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A small MR phantom with head motion and two non-steady-state leading frames."""
    cfg = PhantomConfig.draw(
        4711, "MR", matrix=64, slices=4, coverage_mm=48.0, frames=40, frame_interval_s=1.5, motion=True
    )
    study = simulate_study(cfg)
    data = study.series.data.copy()
    data[..., :LEADING] *= np.array([1.6, 1.25], dtype=np.float32)  # T1 saturation not yet reached
    study = replace(study, series=study.series.with_data(data))
    root = tmp_path_factory.mktemp("cohort")
    write_study(study, root / "sub-0001" / "ses-01", "sub-0001")
    return root, study


def test_training_input_equals_inference_input(moving_study: tuple[Path, Any], tmp_path: Path, monkeypatch):
    root, study = moving_study
    weights = bundled_weights("MR")
    _, config = load_weights(weights)
    (entry,) = discover(root)
    cache = tmp_path / "run" / "inputs"
    train = load_study(
        entry, MAPS, "truth", config["frame_interval"], config["frames"], None,
        config["pixel_mm"], config["align_lead_s"], input_cache=cache, bolus_rule=bolus_rule_of(config),
    )  # fmt: skip
    assert (cache / "sub-0001_ses-01.npz").is_file()

    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(cnn_prepare(*args, **kwargs))
        return seen[-1]

    cnn_prepare = cnn.input_of
    monkeypatch.setattr(cnn, "input_of", spy)
    maps, _ = analyze_cnn(load_series(entry.series_path), weights, device="cpu")
    monkeypatch.undo()
    inp = seen[0]  # the main pass's input (the shift-consistency passes follow with other grid starts)
    steady = maps.provenance["non_steady_state_frames"]
    assert steady["frames"] == LEADING  # dropped before the motion correction, in both
    assert max(maps.provenance["motion"]["displacement_mm"]) > 0.3  # the head moved and was corrected
    expected = torch.from_numpy(np.moveaxis(inp.curves, (2, 3), (0, 1))).half()
    assert train.inputs.shape == expected.shape
    assert torch.equal(train.inputs, expected)  # bit for bit (training keeps float16)
    assert torch.equal(train.bolus, torch.from_numpy(inp.bolus))
    assert np.array_equal(train.grid, inp.grid)
    assert train.offset_s == pytest.approx(inp.offset_s + steady["offset_s"], abs=1e-3)
    # TTP targets on the network's grid: the truth (from the first acquired frame) − the offset
    shifted = np.moveaxis(study.truth.maps["ttp"] - np.float32(train.offset_s), 2, 0)[:, None]
    expected_ttp = resize_slices(
        torch.from_numpy(np.ascontiguousarray(shifted)), tuple(train.inputs.shape[-2:])
    )
    assert torch.allclose(train.targets[:, MAPS.index("ttp")], expected_ttp[:, 0], atol=1e-4)

    # a resumed run reads the cached input instead of redoing the motion correction
    def fail(*_: Any, **__: Any) -> Any:
        raise AssertionError("input made again although it is cached")

    monkeypatch.setattr(series_module, "model_input", fail)
    again = load_study(
        entry, MAPS, "truth", config["frame_interval"], config["frames"], None,
        config["pixel_mm"], config["align_lead_s"], input_cache=cache, bolus_rule=bolus_rule_of(config),
    )  # fmt: skip
    assert torch.equal(again.inputs, train.inputs) and again.offset_s == train.offset_s
    # other settings: the cache entry does not match and the input is made anew
    with pytest.raises(AssertionError, match="made again"):
        load_study(entry, MAPS, "truth", 2.0, 40, None, config["pixel_mm"], None, input_cache=cache)
