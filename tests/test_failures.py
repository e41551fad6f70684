"""Failure behaviour of the command line (issue 10's audit, one regression test per finding):
bad input ends in one line naming the file and exit 2 with nothing written; output folders are
replaced whole, by one run at a time; internal errors leave one line and a log file."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from perfnet.cli import main
from perfnet.io import save_series_nifti
from perfnet.io.output import MANIFEST, FolderLock, read_manifest
from phantoms import small_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CT stroke study as NIfTI + sidecar (64×64×4, 40 frames)."""
    folder = tmp_path_factory.mktemp("study")
    s = small_study(31, "CT", matrix=64, slices=4, frames=40, motion=False, lesion="core")
    return save_series_nifti(s.series, folder / "ctp.nii.gz", dtype=np.int16)


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("perfnet: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert "weights_only=False" not in err and "Traceback" not in err
    return lines[0]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != MANIFEST)


# --- output folders (findings 5–11) ------------------------------------------------------------


def test_rerun_with_another_method_replaces_the_whole_set(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _run(capsys, "analyze", study, "--out", out, "--no-report")[0] == 0
    assert (out / "aif.json").is_file()
    assert _run(capsys, "analyze", study, "--out", out, "--method", "cnn", "--no-report")[0] == 0
    manifest = read_manifest(out)
    assert manifest is not None
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert names == manifest["files"]  # nothing stale: no oSVD aif.json beside the CNN's maps
    assert not (out / "aif.json").exists()
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["method"] == "cnn" and provenance["run_id"] == manifest["run_id"]
    assert _hidden(tmp_path) == []
    # a file of the user's inside the folder: refused before any work, nothing touched
    (out / "figures").mkdir()
    (out / "figures" / "old.png").write_bytes(b"mine")
    started = time.perf_counter()
    code, _, err = _run(capsys, "analyze", study, "--out", out)
    _one_line_error(code, err, str(out), "figures/old.png", "--overwrite")
    assert time.perf_counter() - started < 5 and (out / "figures" / "old.png").read_bytes() == b"mine"
    assert read_manifest(out)["run_id"] == manifest["run_id"]


@pytest.mark.parametrize("case", ["file", "under-file", "input-inside"])
def test_output_paths_are_checked_before_the_analysis(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    out = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "out", "input-inside": study.parent}[case]
    (tmp_path / "f").write_text("x")
    started = time.perf_counter()
    code, _, err = _run(capsys, "analyze", study, "--out", out, "--overwrite")
    _one_line_error(
        code, err, {"file": "not a folder", "under-file": "a file", "input-inside": "inside"}[case]
    )
    assert time.perf_counter() - started < 5  # before loading or computing anything
    assert (tmp_path / "f").read_text() == "x" and study.is_file()


def test_concurrent_run_into_the_same_folder_is_refused(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("perfnet.io.output.LOCK_WAIT_S", 0.3)  # refused after its wait, here short
    out = tmp_path / "out"
    with FolderLock(out):
        code, _, err = _run(capsys, "analyze", study, "--out", out)
    _one_line_error(code, err, "another perfnet run")
    assert not out.exists()


def test_sigterm_during_analysis_leaves_nothing(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "perfnet.cli", "analyze", str(study), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the series is loaded: the analysis is running
    assert line.startswith("perfnet analyze:"), line
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "perfnet: terminated"
    assert not out.exists() and _hidden(tmp_path) == []


@pytest.mark.parametrize("stop, expected", [("term", (143, "terminated")), ("int", (130, "interrupted"))])
def test_an_error_raised_while_stopping_reports_the_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop: str, expected: tuple[int, str]
) -> None:
    """A worker that died of the same signal can be noticed first, as a RuntimeError raised while
    the interruption is being handled: the command still ends as stopped, not as an internal
    error with a crash log."""
    import perfnet.cli as cli

    def stopped(args: object) -> int:
        try:
            raise cli.Terminated if stop == "term" else KeyboardInterrupt
        except BaseException as exc:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.") from exc

    monkeypatch.setattr(cli, "_crash_log", lambda argv: pytest.fail("no crash log for a stop"))
    parser = types.SimpleNamespace(parse_args=lambda argv: types.SimpleNamespace(func=stopped))
    monkeypatch.setattr("perfnet.cli.parser.build_parser", lambda: parser)
    code = main(["train", "x"])
    assert (code, capsys.readouterr().err.strip()) == (expected[0], f"perfnet: {expected[1]}")
    assert cli._stopped_by(RuntimeError("an error of its own")) is None


def test_convert_never_deletes_a_folder_named_like_its_output(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "x.nii.gz"
    target.mkdir()
    (target / "precious").write_text("mine")
    code, _, err = _run(capsys, "convert", study, target)
    _one_line_error(code, err, str(target), "is a folder")
    assert (target / "precious").read_text() == "mine" and _hidden(tmp_path) == []


# --- errors (findings 12–14) -------------------------------------------------------------------


def _nifti(
    path: Path, data: np.ndarray, sidecar: dict | None = None, affine: np.ndarray | None = None
) -> Path:
    if affine is None:
        image = nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 5.0, 1.0]))
    else:  # an affine nibabel cannot decompose into a qform: stored as the sform only
        header = nib.Nifti1Header()
        header.set_data_shape(data.shape)
        header.set_data_dtype(np.float32)
        header.set_sform(affine, code=1)
        header.set_qform(None, code=0)
        image = nib.Nifti1Image(data.astype(np.float32), None, header=header)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    times = [float(t) for t in np.arange(data.shape[-1])]
    content = {"Modality": "CT", "FrameTimes": times} | (sidecar or {})
    path.with_name(path.name.split(".nii")[0] + ".json").write_text(json.dumps(content))
    return path


def _study_data(study: Path) -> np.ndarray:
    return np.asarray(nib.load(str(study)).dataobj, dtype=np.float32)


def _raw_nifti_pixdim0(path: Path, data: np.ndarray) -> Path:
    """pixdim 0 and no qform/sform, written byte by byte (nibabel would repair it on saving)."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header.set_qform(None, code=0)
    header.set_sform(None, code=0)
    header["vox_offset"] = 352
    block = bytearray(header.binaryblock)
    pixdim = np.frombuffer(bytes(block[76:108]), np.float32).copy()
    pixdim[1:4] = 0
    block[76:108] = pixdim.tobytes()
    path.write_bytes(bytes(block) + b"\0" * 4 + data.astype(np.float32).tobytes(order="F"))
    path.with_name(path.stem + ".json").write_text(json.dumps({"Modality": "CT", "RepetitionTime": 1.0}))
    return path


def _huge_header(path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((4096, 4096, 64, 100))  # 430 GB as float32
    header.set_data_dtype(np.float32)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(4000)))
    path.with_name("huge.json").write_text(json.dumps({"Modality": "CT", "RepetitionTime": 1.0}))
    return path


rng = np.random.default_rng(0)
BAD: dict[str, tuple[Callable[[Path, Path], list[object]], str]] = {
    "two frames": (
        lambda d, s: [_nifti(d / "two.nii.gz", rng.normal(30, 5, (16, 16, 2, 2)))],
        "at least 8",
    ),
    "EchoTime text": (
        lambda d, s: [
            _nifti(
                d / "te.nii.gz", rng.normal(300, 5, (16, 16, 2, 20)), {"Modality": "MR", "EchoTime": "thirty"}
            )
        ],
        "EchoTime must be a number",
    ),
    "singular affine": (
        lambda d, s: [
            _nifti(d / "sing.nii.gz", rng.normal(30, 5, (16, 16, 2, 20)), affine=np.diag([2, 2, 0, 1.0]))
        ],
        "voxel size along z",
    ),
    "rank-2 affine": (
        lambda d, s: [
            _nifti(
                d / "rank2.nii.gz",
                rng.normal(30, 5, (16, 16, 2, 20)),
                affine=np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
            )
        ],
        "singular",
    ),
    "400 GB header": (lambda d, s: [_huge_header(d / "huge.nii.gz")], "more than this machine's memory"),
    "all zero": (lambda d, s: [_nifti(d / "zero.nii.gz", np.zeros((32, 32, 4, 20)))], "bolus"),
    "constant": (lambda d, s: [_nifti(d / "const.nii.gz", np.full((32, 32, 4, 20), 40.0))], "bolus"),
    "4x4 pixels": (lambda d, s: [_nifti(d / "tiny.nii.gz", rng.normal(30, 5, (4, 4, 2, 20)))], "too small"),
    "milliseconds": (
        lambda d, s: [_nifti(d / "ms.nii.gz", _study_data(s), {"FrameTimes": list(np.arange(40) * 1000.0)})],
        "milliseconds",
    ),
    "pixdim 0": (lambda d, s: [_raw_nifti_pixdim0(d / "pix0.nii", _study_data(s))], "voxel size missing"),
    "km voxels": (
        lambda d, s: [_nifti(d / "km.nii.gz", _study_data(s), affine=np.diag([2.3e6, 2.3e6, 5.0, 1.0]))],
        "voxel size along x",
    ),
    "one voxel 3e38": (
        lambda d, s: [
            _nifti(
                d / "hot.nii.gz",
                _study_data(s) + np.pad(np.full((1, 1, 1, 1), 3e38), ((5, 58), (5, 58), (1, 2), (3, 36))),
            )
        ],
        "corrupt",
    ),
    "CT labelled MR": (
        lambda d, s: [_nifti(d / "ctmr.nii.gz", _study_data(s), {"Modality": "MR", "EchoTime": 0.03})],
        "--modality CT",
    ),
    "--frame-interval 1e-6": (lambda d, s: [s, "--frame-interval", "1e-6"], "frame interval"),
    "--tissue-density inf": (lambda d, s: [s, "--tissue-density", "inf"], "tissue density"),
    "--temporal-smoothing -1": (lambda d, s: [s, "--temporal-smoothing", "-1"], "temporal smoothing"),
    "--temporal-smoothing nan": (lambda d, s: [s, "--temporal-smoothing", "nan"], "temporal smoothing"),
    "--device cuda": (
        lambda d, s: [s, "--device", "cuda" if not torch.cuda.is_available() else "cuda:99"],
        "--device",
    ),
    "--device bogus": (lambda d, s: [s, "--device", "bogus"], "unknown device"),
    "--time-scaling osvd": (
        lambda d, s: [s, "--method", "osvd", "--time-scaling", "gated"],
        "only with --method cnn",
    ),
    "corrupt weights": (
        lambda d, s: [s, "--method", "cnn", "--weights", _write(d / "w.pt", b"PK\x03\x04" + bytes(64))],
        "w.pt",
    ),
    "usage": (lambda d, s: [s, "--method", "magic"], "invalid choice"),
}


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    make, words = BAD[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = make(inputs, study)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "analyze", *args, "--out", out)
    line = _one_line_error(code, err, words)
    if case != "usage" and not case.startswith("--"):
        assert str(inputs) in line  # names the file with the problem (series, sidecar or weights)
    assert not out.exists() and _hidden(tmp_path) == []


def test_internal_error_is_one_line_and_a_log_without_the_input_path(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import perfnet.lesions

    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(perfnet.lesions, "segment_map_set", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "analyze", study, "--out", out, "--no-motion-correction")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "internal error: RuntimeError: a bug" in lines[0]
    log = Path(lines[0].split("traceback in ")[1].split(" ")[0])
    text = log.read_text()
    assert "Traceback" in text and "a bug" in text and str(study) not in text
    assert not out.exists() and _hidden(tmp_path) == []


def test_ctrl_c_during_start_up_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    class Interrupting(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "perfnet.cli", Interrupting("perfnet.cli"))
    from perfnet import launch

    with pytest.raises(SystemExit) as exit_info:
        launch.main()
    assert exit_info.value.code == 130 and capsys.readouterr().err == "perfnet: interrupted\n"


def test_usage_errors_are_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "perfnet.cli", "analyze", "x.nii.gz"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--out" in proc.stderr and "required" in proc.stderr


def test_hidden_temporary_files_never_linger_after_success(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "copy.nii.gz"
    assert _run(capsys, "convert", study, target)[0] == 0
    assert _run(capsys, "convert", study, target)[0] == 0  # an existing file is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json", "copy.nii.gz"]
    shutil.rmtree(tmp_path / "copy.nii.gz", ignore_errors=True)
    os.remove(target)
