"""Output folders replaced whole or not at all, one run at a time, never deleting foreign files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfnet.errors import PerfnetInputError
from perfnet.io import output as output_module
from perfnet.io.output import MANIFEST, FolderLock, OutputFolder, read_manifest, staged_files


def _write_set(destination: Path, files: dict[str, str], **kw) -> str:
    with OutputFolder(destination, **kw) as out:
        for name, text in files.items():
            path = out.staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return out.run_id


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_new_set_appears_whole_with_manifest(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "out"
    run = _write_set(dest, {"cbf.nii.gz": "1", "figures/x.png": "2"})
    manifest = read_manifest(dest)
    assert manifest is not None and manifest["run_id"] == run
    assert manifest["files"] == ["cbf.nii.gz", "figures/x.png"]
    assert _leftovers(tmp_path / "a") == []


def test_rerun_replaces_the_whole_set_and_drops_stale_files(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _write_set(dest, {"cbf.nii.gz": "old", "aif.json": "old", "cbf_uncertainty.nii.gz": "old"})
    run = _write_set(dest, {"cbf.nii.gz": "new"})
    assert sorted(p.name for p in dest.iterdir()) == sorted([MANIFEST, "cbf.nii.gz"])
    assert (dest / "cbf.nii.gz").read_text() == "new" and read_manifest(dest)["run_id"] == run
    assert _leftovers(tmp_path) == []


def test_foreign_files_are_never_deleted_without_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _write_set(dest, {"cbf.nii.gz": "old"})
    (dest / "figures").mkdir()
    (dest / "figures" / "old.png").write_text("mine")
    ran = []
    with pytest.raises(PerfnetInputError, match=r"did not write \(figures/old.png\)"):
        with OutputFolder(dest):
            ran.append(True)  # never reached: checked before any work
    assert not ran and (dest / "figures" / "old.png").read_text() == "mine"
    _write_set(dest, {"cbf.nii.gz": "new"}, overwrite=True)
    assert not (dest / "figures").exists()


def test_non_empty_folder_that_perfnet_did_not_write_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "thesis.tex").write_text("x")
    with pytest.raises(PerfnetInputError, match="not a perfnet output folder"):
        _write_set(dest, {"a": "1"})
    assert (dest / "thesis.tex").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_set(empty, {"a": "1"})
    assert (empty / "a").exists()


@pytest.mark.parametrize("case", ["file", "under-file", "link", "mount", "unwritable", "input-inside"])
def test_bad_destinations_are_refused_before_any_work(tmp_path: Path, monkeypatch, case: str) -> None:
    dest = tmp_path / "out"
    protect = []
    if case == "file":
        dest.write_text("x")
    elif case == "under-file":
        (tmp_path / "f").write_text("x")
        dest = tmp_path / "f" / "out"
    elif case == "link":
        (tmp_path / "real").mkdir()
        dest.symlink_to(tmp_path / "real")
    elif case == "mount":
        dest.mkdir()
        monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == dest)
    elif case == "unwritable":  # (root ignores permission bits: ask os.access as a user would)
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path)
    elif case == "input-inside":
        dest.mkdir()
        (dest / "ctp.nii.gz").write_text("x")
        protect = [dest / "ctp.nii.gz"]
    ran = []
    with pytest.raises(PerfnetInputError) as info:
        with OutputFolder(dest, protect=protect, overwrite=case == "input-inside"):
            ran.append(True)
    assert not ran and "\n" not in str(info.value)
    assert {
        "file": "not a folder",
        "under-file": "which is a file",
        "link": "symbolic link",
        "mount": "mount point",
        "unwritable": "not writable",
        "input-inside": "lies inside the output folder",
    }[case] in str(info.value)
    assert _leftovers(tmp_path) == []


def test_lock_refuses_a_second_run_and_dies_with_its_process(tmp_path: Path, monkeypatch) -> None:
    from perfnet.io import output

    monkeypatch.setattr(output, "LOCK_WAIT_S", 0.3)  # refused after a short wait
    dest = tmp_path / "out"
    with OutputFolder(dest) as first:
        with pytest.raises(PerfnetInputError, match="another perfnet run"):
            OutputFolder(dest).open()
        (first.staging / "a").write_text("1")
    # a process that holds the lock and is killed: the kernel releases it
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from perfnet.io.output import FolderLock; import time; FolderLock({str(dest)!r}).acquire(); "
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(PerfnetInputError, match="another perfnet run"):
        FolderLock(dest).acquire()
    holder.kill()
    holder.wait()
    _write_set(dest, {"b": "2"})
    assert (dest / "b").exists() and not (dest / "a").exists()


def test_a_run_waits_for_a_lock_whose_holder_is_dying(tmp_path: Path, monkeypatch) -> None:
    """A cohort killed and restarted at once: the study process it was running still holds the
    study's lock for a moment (a process killed inside fsync dies when the call returns), and the
    restarted run's analysis of that study must wait for it, not fail as "another run"."""
    from perfnet.io import output

    monkeypatch.setattr(output, "LOCK_WAIT_S", 10.0)
    dest = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from perfnet.io.output import FolderLock; import time; FolderLock({str(dest)!r}).acquire(); "
            "print('locked', flush=True); time.sleep(1.0)",  # exits, releasing the lock, after 1 s
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    _write_set(dest, {"c": "3"})
    assert (dest / "c").read_text() == "3" and 0.3 < time.monotonic() - started < 9.0
    holder.wait()


def test_leftovers_of_killed_runs_are_cleaned_and_an_aside_is_restored(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _write_set(dest, {"cbf.nii.gz": "old"})
    # a run killed between the two renames of the fallback swap: destination gone, old set aside
    os.rename(dest, tmp_path / ".out.old-999")
    (tmp_path / ".out.partial-999-abc").mkdir()
    (tmp_path / ".out.partial-999-abc" / "cbf.nii.gz").write_text("half")
    with OutputFolder(dest) as out:
        assert (dest / "cbf.nii.gz").read_text() == "old"  # restored before anything else
        (out.staging / "cbf.nii.gz").write_text("new")
    assert (dest / "cbf.nii.gz").read_text() == "new" and _leftovers(tmp_path) == []


def test_swap_without_renameat2_uses_two_renames(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(output_module, "_exchange", lambda a, b: False)
    dest = tmp_path / "out"
    _write_set(dest, {"a": "1"})
    _write_set(dest, {"b": "2"})
    assert sorted(p.name for p in dest.iterdir()) == [MANIFEST, "b"] and _leftovers(tmp_path) == []


def _run_and_crash(dest: Path, crash_at: int, exchange: bool) -> bool:
    """Replace ``dest`` in a forked child that dies (``os._exit``: no cleanup, as under SIGKILL)
    just before or after its ``crash_at``-th file-system step; True when it ran to the end."""
    pid = os.fork()
    if pid == 0:  # child
        calls = [0]

        def wrap(fn):
            def inner(*a, **k):
                for _ in range(2):
                    calls[0] += 1
                    if calls[0] == crash_at:
                        os._exit(9)
                    if _ == 0:
                        out = fn(*a, **k)
                return out

            return inner

        output_module._exchange = wrap(output_module._exchange if exchange else (lambda a, b: False))
        os.rename = wrap(os.rename)
        shutil.rmtree = wrap(shutil.rmtree)
        output_module._fsync_tree = wrap(output_module._fsync_tree)
        try:
            with OutputFolder(dest) as out:
                for i in range(3):
                    (out.staging / f"new{i}.nii.gz").write_text("new")
        finally:
            os._exit(0 if calls[0] < crash_at else 3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), code
    return code == 0


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_crash_at_any_instant_leaves_a_complete_set(tmp_path: Path, exchange: bool) -> None:
    crash_at, completed = 1, False
    while not completed:
        dest = tmp_path / f"out{crash_at}"
        _write_set(dest, {f"old{i}.nii.gz": "old" for i in range(4)})
        completed = _run_and_crash(dest, crash_at, exchange)
        # the destination (after the next run's recovery) holds exactly one complete set
        with OutputFolder(dest) as out:
            manifest = read_manifest(dest)
            assert manifest is not None
            names = sorted(p.name for p in dest.iterdir() if p.name != MANIFEST)
            assert names == manifest["files"], (crash_at, names)
            assert {n[:3] for n in names} in ({"old"}, {"new"}), (crash_at, names)
            if completed:
                assert names == [f"new{i}.nii.gz" for i in range(3)]
            (out.staging / "next").write_text("x")
        assert _leftovers(tmp_path) == [], crash_at
        crash_at += 1
    assert crash_at > 6  # the crash points covered the swap, not only the start


def test_staged_files_refuse_a_folder_and_replace_both_files(tmp_path: Path) -> None:
    folder = tmp_path / "x.nii.gz"
    folder.mkdir()
    (folder / "keep").write_text("mine")
    with pytest.raises(PerfnetInputError, match="is a folder"):
        with staged_files(folder, tmp_path / "x.json"):
            pass
    assert (folder / "keep").exists()
    target, side = tmp_path / "y.nii.gz", tmp_path / "y.json"
    target.write_text("old")
    with staged_files(target, side) as staging:
        (staging / "y.nii.gz").write_text("new")
        (staging / "y.json").write_text(json.dumps({"a": 1}))
    assert target.read_text() == "new" and json.loads(side.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with staged_files(target, side) as staging:
            (staging / "y.nii.gz").write_text("newer")
            raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
