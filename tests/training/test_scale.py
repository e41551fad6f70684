"""Training at scale: conventional targets computed once per cohort by the cohort runner (the maps
of ``perfnet analyze``, resumable, a failed study stopping the run before training), ranks that
wait for rank 0's preparation, datasets that read one slice at a time from disk (memory bounded
whatever the cohort's size), and a 2-process CPU DDP run on osvd targets."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from perfnet.cli import main
from perfnet.errors import PerfnetInputError
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.cohort import write_study
from perfnet.runner import Study, run_cohort
from perfnet.training.data import StudySlices, discover
from perfnet.training.dataset import Augmentation, Normalisation, SliceDataset
from perfnet.training.prepare import (
    PreparedStudy,
    SliceRecipe,
    prepare_cohort,
    study_moments,
    write_prepared,
)

TINY = {"matrix": 40, "slices": 2, "frames": 30, "coverage_mm": 24.0, "motion": False}
MAPS = ["cbf", "cbv", "mtt", "tmax", "ttp"]


def _write(root: Path, seeds: list[int]) -> Path:
    for i, seed in enumerate(seeds):
        cfg = PhantomConfig.draw(seed, "CT", **TINY)
        write_study(simulate_study(cfg), root / f"sub-{i:04d}" / "ses-01", f"sub-{i:04d}")
    return root


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("cohort"), [820, 821, 822])


def _recipe(targets: str = "truth") -> SliceRecipe:
    return SliceRecipe(MAPS, targets, 1.0, 20, None, 6.0, {"cbf": 1.0})


def _synthetic(name: str, slices: int, seed: int) -> StudySlices:
    g = torch.Generator().manual_seed(seed)
    inputs = (torch.rand(slices, 20, 64, 64, generator=g) * 50).half()
    targets = torch.rand(slices, len(MAPS), 64, 64, generator=g) * 10
    brain = torch.rand(slices, 64, 64, generator=g) > 0.3
    bolus = torch.rand(20, 3, 5, 5, generator=g)
    return StudySlices(name, name[:8], inputs, targets, brain, bolus, np.arange(20.0), 1.5)


def test_a_rank_reads_single_slices_from_disk_with_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten prepared studies (13 MB of inputs): the dataset pickles (as to a loader worker) to a
    few kB and holds no array, reads exactly what np.load gives, its samples equal those of the
    same studies in memory, and a sample reads only its own slice from disk."""
    memory = [_synthetic(f"sub-{i:04d}_ses-01", 8, i) for i in range(10)]
    offsets = {"cbf": 1.0}
    prepared = [
        write_prepared(s, tmp_path / s.name, "k", study_moments(s.inputs, s.targets, s.brain, MAPS, offsets))
        for s in memory
    ]
    np.testing.assert_array_equal(
        prepared[3].read("inputs", 5), np.load(tmp_path / memory[3].name / "inputs.npy")[5]
    )
    np.testing.assert_array_equal(prepared[3].read("bolus"), memory[3].bolus.numpy())
    # the normalisation from per-study sums equals the one over all voxels in memory
    norm = Normalisation.from_moments([p.moments for p in prepared], MAPS, offsets)
    x = torch.cat([s.inputs.permute(0, 2, 3, 1)[s.brain].float().reshape(-1)[::7] for s in memory])
    assert norm.input_scale == pytest.approx(float(x.double().std()), rel=1e-9)
    y = torch.cat([torch.log(s.targets[:, 0][s.brain] + 1.0).double() for s in memory])  # float32 log
    assert norm.target_mean["cbf"] == pytest.approx(float(y.mean()), rel=1e-9)
    assert norm.target_sd["cbf"] == pytest.approx(float(y.std()), rel=1e-9)

    augment = Augmentation(enabled=True, thin=(1, 2))
    on_disk = SliceDataset(prepared, MAPS, norm, 1.0, crop=32, augment=augment, seed=4)
    in_memory = SliceDataset(memory, MAPS, norm, 1.0, crop=32, augment=augment, seed=4)
    cohort_bytes = sum(s.inputs.numel() * 2 + s.targets.numel() * 4 for s in memory)
    assert cohort_bytes > 12e6
    assert len(pickle.dumps(on_disk)) < 20e3  # names, offsets, sums: nothing of the data
    held = [v for s in prepared for v in vars(s).values() if isinstance(v, np.ndarray | torch.Tensor)]
    assert all(v.size <= 20 for v in held)  # only the time grid
    for item in (0, 17, 79):
        a, b = on_disk[(2, item)], in_memory[(2, item)]
        for key in a:
            assert torch.equal(a[key], b[key]), key
    # every read from disk: a sample reads its own slice (and the study's small bolus), nothing more
    reads: list[int] = []
    fromfile = np.fromfile

    def counted(*args: Any, **kwargs: Any) -> np.ndarray:
        data = fromfile(*args, **kwargs)
        reads.append(data.nbytes)
        return data

    monkeypatch.setattr(np, "fromfile", counted)
    for item in range(len(on_disk)):
        on_disk[(1, item)]
    sample = 20 * 64 * 64 * 2 + len(MAPS) * 64 * 64 * 4 + 64 * 64 + 20 * 3 * 5 * 5 * 4
    assert len(reads) == 4 * len(on_disk) and sum(reads) == sample * len(on_disk)
    assert max(reads) == 20 * 64 * 64 * 2 < cohort_bytes / 100  # the largest read: one input slice


def test_waiting_ranks_take_rank_zeros_preparation(cohort: Path, tmp_path: Path) -> None:
    """A rank ≠ 0 started together with rank 0 (torchrun, SLURM) waits for its marker and opens
    the same prepared studies; a failure of rank 0 reaches it as one line."""
    studies = discover(cohort)
    run = tmp_path / "run"
    seen: dict[str, object] = {}

    def other_rank() -> None:
        try:
            seen["studies"] = prepare_cohort(studies, cohort, run, _recipe(), writer=False)
        except PerfnetInputError as exc:
            seen["error"] = exc

    thread = threading.Thread(target=other_rank)
    thread.start()
    mine = prepare_cohort(studies, cohort, run, _recipe(), writer=True)
    thread.join(timeout=120)
    assert [s.name for s in seen["studies"]] == [s.name for s in mine] == [s.name for s in studies]
    assert all(a.key == b.key and a.moments == b.moments for a, b in zip(seen["studies"], mine, strict=True))
    first = [(s.folder / "meta.json").stat().st_mtime_ns for s in mine]
    again = prepare_cohort(studies, cohort, run, _recipe(), writer=True)  # nothing to redo
    assert [(s.folder / "meta.json").stat().st_mtime_ns for s in again] == first
    # an input rank 0 cannot read: the waiting rank stops with its message instead of waiting on
    broken = _write(tmp_path / "broken", [830])
    series = next(broken.rglob("*_ctp.nii.gz"))
    series.write_bytes(series.read_bytes()[:3000])
    studies = discover(broken)
    errors: list[PerfnetInputError] = []

    def failing_rank() -> None:
        with pytest.raises(PerfnetInputError) as caught:
            prepare_cohort(studies, broken, tmp_path / "r2", _recipe(), writer=False)
        errors.append(caught.value)

    thread = threading.Thread(target=failing_rank)
    thread.start()
    with pytest.raises(PerfnetInputError, match="sub-0000_ses-01_ctp"):
        prepare_cohort(studies, broken, tmp_path / "r2", _recipe(), writer=True)
    thread.join(timeout=120)
    (error,) = errors
    assert "rank 0 failed while preparing the slices" in str(error) and "sub-0000_ses-01_ctp" in str(error)


DDP = textwrap.dedent(
    """
    import sys
    from perfnet.training.run import TrainConfig, train

    cohort, run, config = sys.argv[1], sys.argv[2], eval(sys.argv[3])
    train(cohort, run, TrainConfig(**config), resume=True)
    """
)
CONFIG = dict(
    model="unet",
    width=4,
    frames=20,
    epochs=1,
    pretrain_epochs=0,
    crop=32,
    batch_size=2,
    folds=2,
    fold=0,
    seed=5,
    accelerator="cpu",
    targets="osvd",
    model_kwargs={"norm": False},
    progress=False,
)


def _provenance(tree: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(tree.rglob("*_desc-osvd_provenance.json"))}


def _map(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.mark.slow
def test_two_process_ddp_on_osvd_targets_computed_once_by_the_cohort_runner(
    cohort: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    tree = run / "targets" / "osvd"
    # a target step killed after one study: its output is complete, the others missing
    first = Study(next(cohort.rglob("sub-0000_ses-01_ctp.nii.gz")), "0000", "01")
    run_cohort(cohort, tree, "osvd", options=["--no-report"], studies=[first])
    before = _provenance(tree)
    log_before = (tree / "logs" / "sub-0000_ses-01_desc-osvd.json").stat().st_mtime_ns
    assert list(before) == ["sub-0000_ses-01_desc-osvd_provenance.json"]

    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    config = CONFIG | {"devices": 2, "strategy": "ddp"}
    proc = subprocess.run(
        [sys.executable, str(script), str(cohort), str(run), repr(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = _provenance(tree)
    assert (
        len(written) == 3
        and written[first.name + "_desc-osvd_provenance.json"]
        == before["sub-0000_ses-01_desc-osvd_provenance.json"]
    )  # the complete study was not redone
    logs = {p.name: p.stat().st_mtime_ns for p in (tree / "logs").iterdir()}
    assert sorted(logs) == [f"sub-{i:04d}_ses-01_desc-osvd.json" for i in range(3)]
    assert logs["sub-0000_ses-01_desc-osvd.json"] == log_before  # not run again
    plan = json.loads((run / "plan.json").read_text())
    assert plan["folds"]["0"]["epochs"] == 1 and 0 <= plan["cross_validation"]["val_tmax_maec"] < 20
    # the targets are `perfnet analyze --method osvd`'s maps, bit for bit (run as the runner runs
    # it: its own process, BLAS/torch threads = cores / jobs), and what training read
    series = next(cohort.rglob("sub-0001_ses-01_ctp.nii.gz"))
    threads = str(os.cpu_count() or 1)
    env = os.environ | dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), threads)
    analyze = [sys.executable, "-m", "perfnet.cli", "analyze", str(series), "--out", str(tmp_path / "osvd")]
    subprocess.run([*analyze, "--method", "osvd", "--no-report"], env=env, check=True, capture_output=True)
    slices = PreparedStudy.open(run / "slices" / "sub-0001_ses-01")
    for i, m in enumerate(MAPS):
        expected = _map(tmp_path / "osvd" / f"{m}.nii.gz")
        np.testing.assert_array_equal(
            _map(tree / "sub-0001" / "ses-01" / "perf" / f"sub-0001_ses-01_desc-osvd_{m}.nii.gz"), expected
        )
        if m != "ttp":  # TTP is moved to the model grid's start
            np.testing.assert_allclose(slices.read("targets")[:, i], np.moveaxis(expected, 2, 0), atol=1e-4)
    # a second run (one more epoch, one process) resumes: no target is computed again
    config = CONFIG | {"epochs": 2, "devices": 1}
    proc = subprocess.run(
        [sys.executable, str(script), str(cohort), str(run), repr(config)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _provenance(tree) == written
    assert {p.name: p.stat().st_mtime_ns for p in (tree / "logs").iterdir()} == logs


@pytest.mark.slow
def test_a_failed_target_stops_training_with_one_line_naming_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _write(tmp_path / "cohort", [840, 841])
    broken = root / "sub-0001" / "ses-01" / "sub-0001_ses-01_ctp.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])
    run = tmp_path / "run"
    args = ["train", str(root), "--out", str(run), "--targets", "osvd", "--folds", "2", "--fold", "0"]
    args += [
        "--width",
        "4",
        "--frames",
        "16",
        "--epochs",
        "1",
        "--pretrain-epochs",
        "0",
        "--accelerator",
        "cpu",
    ]
    assert main([*args, "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sub-0001_ses-01: osvd target failed" in err[0] and "truncated" in err[0], err
    assert not (run / "fold-0").exists() and not (run / "slices").exists()  # before any training
    done = _provenance(run / "targets" / "osvd")
    assert list(done) == ["sub-0000_ses-01_desc-osvd_provenance.json"]  # the good study is kept
