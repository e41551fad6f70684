"""A later stage on the same cohort adopts the slices an earlier run prepared (``--reuse-slices``)
instead of preparing them again: the same arrays (hard links), sums in its own target domain."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.cohort import write_study
from perfnet.training import prepare
from perfnet.training.run import TrainConfig, train

TINY = {"matrix": 40, "slices": 2, "frames": 30, "coverage_mm": 20.0, "motion": False}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for i in range(3):
        write_study(
            simulate_study(PhantomConfig.draw(730 + i, "CT", **TINY)),
            root / f"sub-{i:04d}" / "ses-01",
            f"sub-{i:04d}",
        )
    return root


def _config(**kw) -> TrainConfig:
    base = {"model": "unet", "frames": 24, "folds": 3, "fold": 0, "accelerator": "cpu", "progress": False}
    return TrainConfig(**(base | kw))


def _meta(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((run / "slices").glob("*/meta.json"))}


def test_a_later_stage_adopts_the_slices_an_earlier_run_prepared(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, fresh, later = tmp_path / "stage-1", tmp_path / "fresh", tmp_path / "stage-3"
    assert train(cohort, first, _config(log_maps=[]), prepare_only=True)["prepared"] == 3
    assert train(cohort, fresh, _config(log_maps=["cbf", "cbv"]), prepare_only=True)["prepared"] == 3

    def no_preparing(*args, **kwargs):
        raise AssertionError("a study was prepared again")

    monkeypatch.setattr(prepare, "load_study", no_preparing)
    cfg = _config(log_maps=["cbf", "cbv"], reuse_slices=[str(first)])
    assert train(cohort, later, cfg, prepare_only=True)["prepared"] == 3
    made, adopted, donor = _meta(fresh), _meta(later), _meta(first)
    assert set(adopted) == set(made) == set(donor)
    for name, meta in adopted.items():
        # the key and the sums of a run that prepared them itself (log CBF / CBV), not the donor's
        assert meta["key"] == made[name]["key"] != donor[name]["key"]
        for kind, sums in made[name]["moments"].items():
            np.testing.assert_allclose(meta["moments"][kind], sums, rtol=1e-12)
        assert meta["moments"]["cbf"] != donor[name]["moments"]["cbf"]
        assert meta["adopted_from"] == str((first / "slices" / name).resolve())
        for kind in prepare.ARRAYS:  # the donor's files themselves, not copies
            assert (
                os.stat(later / "slices" / name / f"{kind}.npy").st_ino
                == os.stat(first / "slices" / name / f"{kind}.npy").st_ino
            )
    # the run trains on them as on its own (its held-out fold validated)
    monkeypatch.undo()
    plan = train(
        cohort,
        later,
        _config(
            log_maps=["cbf", "cbv"],
            reuse_slices=[str(first)],
            epochs=1,
            pretrain_epochs=0,
            width=4,
            crop=32,
            batch_size=2,
        ),
    )
    assert plan["folds"]["0"]["epochs"] == 1


def test_slices_of_other_arrays_are_prepared_again(cohort: Path, tmp_path: Path) -> None:
    """Another frame count (other arrays) is not adopted: the study is prepared anew."""
    first, other = tmp_path / "stage-1", tmp_path / "other"
    train(cohort, first, _config(log_maps=[]), prepare_only=True)
    train(cohort, other, _config(log_maps=[], frames=20, reuse_slices=[str(first)]), prepare_only=True)
    for name, meta in _meta(other).items():
        assert "adopted_from" not in meta
        shape = meta["arrays"]["inputs"]["shape"]
        assert shape[1] == 20 and _meta(first)[name]["arrays"]["inputs"]["shape"][1] == 24
