"""Training that really resumes: a run killed after any epoch and started again continues from
its last completed epoch, gives the weights of an uninterrupted run, survives a corrupt
checkpoint, keeps a finished run's results, and runs data-parallel (2-process CPU DDP, gloo)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.cohort import write_study
from perfnet.training.run import TrainConfig, train

TINY = {"matrix": 40, "slices": 2, "frames": 30, "coverage_mm": 24.0, "motion": False}
CONFIG = dict(
    model="unet",
    width=4,
    frames=20,
    epochs=5,
    pretrain_epochs=1,
    pretrain_size=32,
    crop=32,
    batch_size=2,
    lr=3e-3,
    lr_step_epochs=2,
    folds=2,
    fold=0,
    seed=5,
    accelerator="cpu",
    devices=1,
    progress=False,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for i in range(4):
        cfg = PhantomConfig.draw(800 + i, "CT", **TINY)
        write_study(simulate_study(cfg), root / f"sub-{i:04d}" / "ses-01", f"sub-{i:04d}")
    return root


@pytest.fixture(scope="module")
def uninterrupted(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    train(cohort, run, TrainConfig(**CONFIG), resume=True)
    return run


def _epochs(run: Path) -> list[int]:
    with (run / "fold-0" / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "fold-0" / "weights.pt", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path, tolerance: float = 1e-6) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel())
    assert worst <= tolerance, worst


KILL_AFTER_EPOCH = textwrap.dedent(
    """
    import os, sys
    from perfnet.training import checkpoints
    from perfnet.training.run import TrainConfig, train

    kill_after, cohort, run, config = int(sys.argv[1]), sys.argv[2], sys.argv[3], eval(sys.argv[4])
    save = checkpoints.EpochCheckpoint.on_train_epoch_end

    def save_then_die(self, trainer, module):
        save(self, trainer, module)
        if trainer.current_epoch == kill_after:
            os._exit(9)  # as SIGKILL: nothing is cleaned up

    checkpoints.EpochCheckpoint.on_train_epoch_end = save_then_die
    train(cohort, run, TrainConfig(**config), resume=True)
    """
)


def _train_and_kill(
    cohort: Path, run: Path, tmp_path: Path, after_epoch: int, config: dict | None = None
) -> None:
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_EPOCH)
    proc = subprocess.run(
        [sys.executable, str(script), str(after_epoch), str(cohort), str(run), repr(config or CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr[-2000:]


def test_killed_run_resumes_after_its_last_epoch_with_identical_weights(
    cohort: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _train_and_kill(cohort, run, tmp_path, after_epoch=2)
    assert _epochs(run) == [0, 1, 2] and (run / "fold-0" / "last.ckpt").is_file()
    assert not (run / "fold-0" / "weights.pt").exists()
    plan = train(cohort, run, TrainConfig(**CONFIG), resume=True)
    assert _epochs(run) == [0, 1, 2, 3, 4]
    _assert_same_weights(run, uninterrupted)
    with (run / "fold-0" / "augmentations.csv").open() as f:
        draws = list(csv.DictReader(f))
    with (uninterrupted / "fold-0" / "augmentations.csv").open() as f:
        assert draws == list(csv.DictReader(f))  # the same draws, each epoch once
    assert plan["cross_validation"]["val_tmax_maec"] == pytest.approx(
        json.loads((uninterrupted / "plan.json").read_text())["cross_validation"]["val_tmax_maec"], abs=1e-5
    )


def test_a_resumed_run_counts_the_minutes_trained_before_the_kill(cohort: Path, tmp_path: Path) -> None:
    """--max-minutes caps a fold's training time over all its sessions: the time trained up to the
    last checkpoint is stored in it (Lightning's Timer state) and counted again on resume, so a
    rebuild interrupted and continued stops where an uninterrupted one would."""
    config = {**CONFIG, "max_minutes": 30.0}
    run = tmp_path / "run"
    _train_and_kill(cohort, run, tmp_path, after_epoch=1, config=config)
    last = run / "fold-0" / "last.ckpt"
    blob = torch.load(last, map_location="cpu", weights_only=True)
    (timer,) = [v for k, v in blob["callbacks"].items() if k.startswith("Timer")]
    assert 0 < timer["time_elapsed"]["train"] < 30 * 60
    timer["time_elapsed"]["train"] = 31 * 60  # as if the killed session had trained 31 minutes
    torch.save(blob, last)
    train(cohort, run, TrainConfig(**config), resume=True)
    assert _epochs(run) == [0, 1]  # the cap already spent: no further epoch (5 without the stored time)
    assert (run / "fold-0" / "weights.pt").is_file()


def test_corrupt_last_checkpoint_is_named_and_the_previous_one_used(
    cohort: Path, uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    _train_and_kill(cohort, run, tmp_path, after_epoch=2)
    last = run / "fold-0" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a disk that filled up during the write
    train(cohort, run, TrainConfig(**CONFIG), resume=True)
    err = capsys.readouterr().err
    assert f"{last}: unreadable checkpoint" in err
    assert _epochs(run) == [0, 1, 2, 3, 4]  # epoch 2 redone once from previous.ckpt (epoch 1)
    _assert_same_weights(run, uninterrupted)


def test_rerunning_a_finished_run_keeps_its_results(
    cohort: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    before = json.loads((uninterrupted / "plan.json").read_text())
    weights = (uninterrupted / "weights.pt").read_bytes()
    plan = train(cohort, uninterrupted, TrainConfig(**CONFIG), resume=True)
    after = json.loads((uninterrupted / "plan.json").read_text())
    assert after["cross_validation"] == before["cross_validation"] != {}
    assert plan["folds"]["0"] == before["folds"]["0"]
    assert (uninterrupted / "weights.pt").read_bytes() == weights


def test_the_weights_record_the_phantom_styles_they_trained_on(uninterrupted: Path) -> None:
    """The weights' training record names the phantom styles of its training studies (this
    cohort: style A, geometric), and :func:`trained_styles` collects them over an ``--init`` chain
    (benchmarks/generalisation.py's cross-style gap says what a network trained on)."""
    from perfnet.inference.weights import trained_styles, weights_config

    config = weights_config(uninterrupted / "weights.pt")
    assert config["training"]["phantom_styles"] == ["geometric"] == trained_styles(config)
    init = {"file": "a.pt", "training": config["training"]}
    tuned = {"training": {"phantom_styles": ["mni"], "init": init}}
    assert trained_styles(tuned) == ["geometric", "mni"]
    # weights from before the record (the bundled ones): not recorded; a real cohort: none
    assert trained_styles({"training": {"init": None}}) is None
    assert trained_styles({"training": {"phantom_styles": []}}) == []


def test_prepared_ahead_slices_are_trained_on_without_preparing_again(
    cohort: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """``perfnet train --prepare-only`` (e.g. the next stage's cohort while this one trains, or on
    a CPU node before a GPU run): slices only, no plan and no fold; the run started afterwards in
    the same folder (with another schedule, as a fine-tune's would be) prepares nothing again and
    trains exactly as a run that prepared its own."""
    from perfnet.cli import main

    run = tmp_path / "run"
    assert (
        main(["train", str(cohort), "--out", str(run), "--model", "unet", "--frames", "20", "--prepare-only"])
        == 0
    )
    assert sorted(p.name for p in (run / "slices").iterdir()) == [f"sub-{i:04d}_ses-01" for i in range(4)]
    assert not (run / "plan.json").exists() and not (run / "fold-0").exists()
    written = {p: p.stat().st_mtime_ns for p in (run / "slices").glob("*/meta.json")}
    train(cohort, run, TrainConfig(**CONFIG), resume=True)
    assert {p: p.stat().st_mtime_ns for p in (run / "slices").glob("*/meta.json")} == written
    _assert_same_weights(run, uninterrupted)


def test_slices_prepared_by_worker_processes_train_as_one_process_run(
    cohort: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """``perfnet train --prepare-only --jobs 2``: the studies prepared by two worker processes are
    the arrays one process prepares, bit for bit, and the run trained on them gives its weights."""
    import numpy as np

    from perfnet.cli import main

    run = tmp_path / "run"
    args = ["train", str(cohort), "--out", str(run), "--model", "unet", "--frames", "20", "--prepare-only"]
    assert main([*args, "--jobs", "2"]) == 0
    for study in sorted((uninterrupted / "slices").iterdir()):
        for array in ("inputs", "targets", "brain", "bolus"):
            a, b = study / f"{array}.npy", run / "slices" / study.name / f"{array}.npy"
            assert a.exists() == b.exists()
            if a.exists():
                assert np.array_equal(np.load(a), np.load(b)), (study.name, array)
    train(cohort, run, TrainConfig(**CONFIG), resume=True)
    _assert_same_weights(run, uninterrupted)


def test_loader_worker_processes_train_the_main_process_run(
    cohort: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """Two persistent DataLoader workers (each with its own copy of the dataset, which the main
    process's callbacks never reach) train the same weights and log the same draws: the
    pre-train → fine-tune switch and the augmentations follow each sample's epoch, and
    augmentations.csv is written from the draws' seeds in the main process."""
    run = tmp_path / "run"
    plan = train(cohort, run, TrainConfig(**CONFIG, loader_workers=2), resume=True)
    assert plan["folds"]["0"]["loader_workers"] == 2
    assert json.loads((uninterrupted / "plan.json").read_text())["folds"]["0"]["loader_workers"] == 0
    _assert_same_weights(run, uninterrupted)
    for name in ("augmentations.csv", "metrics.csv"):
        with (run / "fold-0" / name).open() as f, (uninterrupted / "fold-0" / name).open() as g:
            mine, theirs = list(csv.DictReader(f)), list(csv.DictReader(g))
        assert len(mine) == len(theirs) > 0
        if name == "augmentations.csv":
            assert mine == theirs
        else:
            assert [r["resolution"] for r in mine] == ["pretrain"] + ["fine-tune"] * 4
            assert [r["resolution"] for r in mine] == [r["resolution"] for r in theirs]


#: CONFIG as ``perfnet train`` options
CLI = [
    *("--model", "unet", "--width", "4", "--frames", "20", "--epochs", "5", "--pretrain-epochs", "1"),
    *("--pretrain-size", "32", "--crop", "32", "--batch-size", "2", "--lr", "3e-3", "--lr-step", "2"),
    *("--folds", "2", "--fold", "0", "--seed", "5", "--accelerator", "cpu", "--devices", "1"),
]

#: ``perfnet train`` that waits after epoch 1's checkpoint (a marker file says so) for the signal
WAIT_AFTER_EPOCH_1 = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from perfnet.cli import main
    from perfnet.training import checkpoints

    # as a shell starts a foreground command (a test runner's worker may hand SIGINT down ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    save = checkpoints.EpochCheckpoint.on_train_epoch_end

    def save_then_wait(self, trainer, module):
        save(self, trainer, module)
        if trainer.current_epoch == 1:
            Path(sys.argv[1]).write_text("saved")
            time.sleep(120)

    checkpoints.EpochCheckpoint.on_train_epoch_end = save_then_wait
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    "signum, status, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signalled_process_group_stops_cleanly_and_the_rerun_resumes(
    cohort: Path, uninterrupted: Path, tmp_path: Path, signum: int, status: int, word: str
) -> None:
    """A batch scheduler's SIGTERM, or Ctrl-C in a terminal, reaches the whole process group,
    DataLoader workers included. The command stops with its own status and one line (not
    "internal error: DataLoader worker killed", nor Lightning's silent exit 1 on Ctrl-C), and
    the same command again continues after the last completed epoch, to the weights of an
    uninterrupted run."""
    run, marker, script = tmp_path / "run", tmp_path / "epoch-1-saved", tmp_path / "wait.py"
    script.write_text(WAIT_AFTER_EPOCH_1)
    arguments = ["train", str(cohort), "--out", str(run), *CLI, "--loader-workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker), *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not marker.is_file():  # epoch 1 checkpointed; the workers are alive, waiting for epoch 2
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err.strip()) == (status, f"perfnet: {word}")
    again = subprocess.run(
        [sys.executable, "-m", "perfnet.cli", *arguments], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert _epochs(run) == [0, 1, 2, 3, 4]
    _assert_same_weights(run, uninterrupted)


DDP = textwrap.dedent(
    """
    import sys
    from perfnet.training.run import TrainConfig, train

    cohort, run, devices, config = sys.argv[1], sys.argv[2], int(sys.argv[3]), eval(sys.argv[4])
    strategy = "ddp" if devices > 1 else "auto"
    train(cohort, run, TrainConfig(**config, devices=devices, strategy=strategy), resume=True)
    """
)


@pytest.mark.slow
def test_two_process_ddp_gives_the_single_process_weights(cohort: Path, tmp_path: Path) -> None:
    """Without BatchNorm (per-rank statistics on CPU) the 2-rank run matches one process to
    float summation order: every global batch is split across the ranks and the loss is
    normalised by the global batch."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    config = CONFIG | {"epochs": 2, "model_kwargs": {"norm": False}, "batch_size": 4}
    config.pop("devices")
    runs = {}
    for devices in (1, 2):
        run = tmp_path / f"run{devices}"
        proc = subprocess.run(
            [sys.executable, str(script), str(cohort), str(run), str(devices), repr(config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[devices] = run
    _assert_same_weights(runs[1], runs[2], tolerance=1e-4)
    # validation sharded over the two ranks (2 slices each), its sums added: the one-process metrics
    one, two = ({**json.loads((runs[d] / "plan.json").read_text())["cross_validation"]} for d in (1, 2))
    assert one.keys() == two.keys() and "val_mae_cbf" in one
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-3), key
    assert _epochs(runs[2]) == [0, 1]
    assert sorted(p.name for p in (runs[2] / "fold-0").iterdir()) == sorted(
        ["augmentations.csv", "best.pt", "last.ckpt", "metrics.csv", "previous.ckpt", "weights.pt"]
    )


def test_a_run_planned_before_a_new_setting_resumes_unless_it_is_changed(
    cohort: Path, tmp_path: Path
) -> None:
    """plan.json of a run planned by an older perfnet lacks settings added since (here
    ``shift_pad``): they count as their defaults, so the run resumes; a changed one is refused."""
    from perfnet.errors import PerfnetInputError

    run = tmp_path / "run"
    train(cohort, run, TrainConfig(**(CONFIG | {"epochs": 1})), resume=True)
    plan = json.loads((run / "plan.json").read_text())
    del plan["config"]["shift_pad"]
    (run / "plan.json").write_text(json.dumps(plan))
    train(cohort, run, TrainConfig(**(CONFIG | {"epochs": 2})), resume=True)
    assert _epochs(run) == [0, 1]
    with pytest.raises(PerfnetInputError, match="other settings"):
        train(cohort, run, TrainConfig(**(CONFIG | {"epochs": 3, "shift_pad": "edge"})), resume=True)


def _maec_by_epoch(run: Path) -> dict[int, float]:
    with (run / "fold-0" / "metrics.csv").open() as f:
        return {int(r["epoch"]): float(r["val_tmax_maec"]) for r in csv.DictReader(f) if r["val_tmax_maec"]}


def test_keep_best_writes_the_lowest_validation_error_epoch_and_survives_a_kill(
    cohort: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """``--keep best``: every epoch runs and is logged as before, and the fold's weights are the
    validated epoch's with the lowest Tmax MAEC (the temporal network's likelihood overfits long
    before its last epoch). A run killed after an epoch and resumed keeps the same best epoch."""
    config = CONFIG | {"keep": "best"}
    whole = tmp_path / "whole"
    plan = train(cohort, whole, TrainConfig(**config), resume=True)
    maec = _maec_by_epoch(whole)
    assert sorted(maec) == [0, 1, 2, 3, 4] and maec == _maec_by_epoch(uninterrupted)  # same training
    epoch = min(maec, key=lambda e: maec[e])
    kept = plan["folds"]["0"]["kept"]
    assert kept == {
        "rule": "best",
        "epoch": epoch,
        "metric": "val_tmax_maec",
        "value": pytest.approx(maec[epoch]),
    }
    assert plan["cross_validation"]["val_tmax_maec"] == pytest.approx(maec[epoch], abs=1e-5)
    best = torch.load(whole / "fold-0" / "best.pt", weights_only=True)
    assert best["epoch"] == epoch
    state = _state(whole)
    assert all(torch.equal(state[k], best["state_dict"][k]) for k in state)
    if epoch != 4:  # the last epoch's weights are not the ones kept
        assert any(not torch.equal(state[k], _state(uninterrupted)[k]) for k in state)
    meta = torch.load(whole / "fold-0" / "weights.pt", weights_only=True)["config"]
    assert meta["training"]["kept"]["epoch"] == epoch
    assert plan["folds"]["0"]["epochs"] == 5

    killed = tmp_path / "killed"
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_EPOCH)
    proc = subprocess.run(
        [sys.executable, str(script), "3", str(cohort), str(killed), repr(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr[-2000:]
    again = train(cohort, killed, TrainConfig(**config), resume=True)
    assert again["folds"]["0"]["kept"]["epoch"] == epoch
    _assert_same_weights(killed, whole)


def test_keep_and_select_are_checked() -> None:
    with pytest.raises(Exception, match="--keep"):
        TrainConfig(**CONFIG | {"keep": "first"}).resolved()
    with pytest.raises(Exception, match="--select"):
        TrainConfig(**CONFIG | {"select": "val_dice_hypoperfused"}).resolved()  # not an error to minimise
    assert TrainConfig(**CONFIG | {"maps": ["cbf", "cbv"]}).resolved().select == "val_loss"
