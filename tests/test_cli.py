"""The perfnet command: JSON output, cohort writing and one-line errors without partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_factory import BASE_TIMES, N_FRAMES, N_SLICES, write_series
from perfnet.cli import main
from perfnet.io import load_map, load_series, save_series_nifti
from perfnet.io.types import PerfusionSeries
from perfnet.phantom import PhantomConfig


def _nifti_series(path: Path) -> Path:
    data = np.random.default_rng(0).normal(30, 5, (8, 8, 3, 10)).astype(np.float32)
    series = PerfusionSeries(data, np.arange(10) * 1.5, np.diag([1.0, 1.0, 4.0, 1.0]), "CT")
    return save_series_nifti(series, path)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_nifti(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _nifti_series(tmp_path / "s.nii.gz")
    code, out, _ = _run(capsys, "info", path)
    assert code == 0
    info = json.loads(out)
    assert info["shape"] == [8, 8, 3, 10] and info["frames"] == 10
    assert info["frame_times"][:3] == [0.0, 1.5, 3.0]
    assert info["modality"] == "CT" and info["voxel_size"] == [1.0, 1.0, 4.0]


def test_info_dicom_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(tmp_path / "dcm")
    code, out, _ = _run(capsys, "info", tmp_path / "dcm", "--compact")
    assert code == 0
    info = json.loads(out)
    assert info["shape"][2:] == [N_SLICES, N_FRAMES]
    np.testing.assert_allclose(info["frame_times"], BASE_TIMES - BASE_TIMES[0], atol=1e-3)
    assert "DOE" not in out and "SECRET" not in out


def test_convert_dicom_to_nifti(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(tmp_path / "dcm")
    code, _, _ = _run(capsys, "convert", tmp_path / "dcm", tmp_path / "out" / "ctp.nii.gz")
    assert code == 0
    a, b = load_series(tmp_path / "dcm"), load_series(tmp_path / "out" / "ctp.nii.gz")
    np.testing.assert_allclose(a.data, b.data)
    np.testing.assert_allclose(a.times, b.times, atol=1e-5)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name → (path, words the error must contain)."""
    cases: dict[str, tuple[Path, str]] = {}
    three_d = tmp / "3d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4)), str(three_d))
    (tmp / "3d.json").write_text('{"Modality": "CT", "RepetitionTime": 1}')
    cases["3d"] = (three_d, "expected a 4D series")
    frames = tmp / "frames"
    write_series(frames, slices=[0, 1], frames=range(N_FRAMES))
    write_series(frames, slices=[2], frames=range(N_FRAMES - 1), series_uid=_uid_of(frames), seed=1)
    cases["frame counts"] = (frames, "frames")
    no_times = tmp / "notimes.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 5), np.float32), np.eye(4)), str(no_times))
    (tmp / "notimes.json").write_text('{"Modality": "CT"}')
    cases["no frame times"] = (no_times, "no frame times")
    nan = tmp / "nan.nii.gz"
    data = np.zeros((4, 4, 3, 5), np.float32)
    data[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    (tmp / "nan.json").write_text('{"Modality": "CT", "RepetitionTime": 1}')
    cases["nan"] = (nan, "NaN")
    truncated = _nifti_series(tmp / "trunc.nii.gz")
    truncated.write_bytes(truncated.read_bytes()[:3000])
    cases["truncated"] = (truncated, "truncated or corrupt")
    empty = tmp / "empty"
    empty.mkdir()
    cases["empty folder"] = (empty, "empty folder")
    text = tmp / "notes.txt"
    text.write_text("not an image\n")
    cases["non-DICOM"] = (text, "not a DICOM")
    return cases


def _uid_of(folder: Path) -> str:
    import pydicom

    first = next(p for p in folder.rglob("*") if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def test_bad_inputs_give_one_line_errors_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, (path, words) in _bad_inputs(inputs).items():
        for command in (["info", path], ["convert", path, tmp_path / name / "out.nii.gz"]):
            code, out, err = _run(capsys, *command)
            assert code == 2, (name, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1, (name, err)
            assert lines[0].startswith("perfnet: error: ")
            assert str(path) in lines[0], (name, lines[0])
            assert words.lower() in lines[0].lower(), (name, lines[0])
            assert "Traceback" not in err and out == ""
        assert not (tmp_path / name).exists(), name


def test_console_script_exit_code_and_no_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "perfnet.cli", "info", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"perfnet: error: {missing}: no such file or folder"


def test_simulate_writes_cohort_with_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    args = "--modality mr --cases 2 --seed 5 --size 64 --slices 4 --frames 40 --lesion core".split()
    code, stdout, _ = _run(capsys, "simulate", out, *args)
    assert code == 0 and "wrote 2 studies" in stdout
    rows = (out / "participants.tsv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("participant_id\tseed")
    for i, name in enumerate(["sub-0001", "sub-0002"]):
        ses = out / name / "ses-01"
        series = load_series(ses / f"{name}_ses-01_dsc.nii.gz")
        assert series.shape == (64, 64, 4, 40) and series.modality == "MR" and series.echo_time
        truth = ses / "truth"
        for item in (
            "cbf",
            "cbv",
            "mtt",
            "tmax",
            "ttp",
            "brain",
            "core",
            "hypoperfused",
            "penumbra",
            "labels",
        ):
            array, affine = load_map(truth / f"{item}.nii.gz")
            assert array.shape == (64, 64, 4)
            np.testing.assert_allclose(affine, series.affine, atol=1e-5)
        params = json.loads((truth / "parameters.json").read_text())
        assert params["config"]["seed"] == 5 + i
        aif = json.loads((truth / "aif.json").read_text())
        assert len(aif["aif"]) == 40 and len(aif["times"]) == 40
    assert json.loads((out / "dataset_description.json").read_text())["Cases"] == 2


def test_simulate_rejects_bad_parameters_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cohort"
    code, _, err = _run(capsys, "simulate", out, "--size", "8")
    assert code == 2 and "matrix" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = _run(capsys, "simulate", out, "--style", "mni", "--delay-power", "0.3,2")
    assert code == 2 and "--delay-power" in err and "style A" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = _run(capsys, "simulate", out, "--style", "mni", "--wide-bolus")
    assert code == 2 and "--wide-bolus" in err and "style A" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    for bad in ("0.5,1.5", "0.8,0.2", "x"):
        code, _, err = _run(capsys, "simulate", out, "--delay-mix", bad)
        assert code == 2 and "--delay-mix" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_simulate_draws_a_lesion_delay_apart_from_its_flow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cohort"
    args = ["--cases", "2", "--seed", "14000", "--size", "48", "--slices", "3", "--lesion", "core"]
    code, _, _ = _run(capsys, "simulate", out, *args, "--delay-power", "0.3,2", "--delay-mix", "0,0.8")
    assert code == 0
    for i in (1, 2):
        drawn = PhantomConfig.draw(13999 + i, "CT", delay_power=(0.3, 2.0), delay_mix=(0.0, 0.8))
        truth = out / f"sub-{i:04d}" / "ses-01" / "truth"
        config = json.loads((truth / "parameters.json").read_text())["config"]
        assert config["lesion_delay_power"] == drawn.lesion_delay_power != 1.0
        assert config["lesion_delay_mix"] == drawn.lesion_delay_mix != 0.0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DelayPowerRange"] == [0.3, 2.0] and description["DelayMixRange"] == [0.0, 0.8]
    assert "WideBolus" not in description


def test_simulate_draws_a_wide_bolus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--wide-bolus``: each study's arterial first pass from the wider family, recorded."""
    out = tmp_path / "cohort"
    args = ["--modality", "mr", "--cases", "2", "--seed", "14010", "--size", "48", "--slices", "3"]
    assert _run(capsys, "simulate", out, *args, "--wide-bolus")[0] == 0
    for i in (1, 2):
        drawn = PhantomConfig.draw(14009 + i, "MR", wide_bolus=True)
        config = json.loads((out / f"sub-{i:04d}" / "ses-01" / "truth" / "parameters.json").read_text())[
            "config"
        ]
        assert (config["aif_fwhm_s"], config["aif_alpha"]) == (drawn.aif_fwhm_s, drawn.aif_alpha)
        assert config["aif_fwhm_s"] != PhantomConfig.draw(14009 + i, "MR").aif_fwhm_s
    assert json.loads((out / "dataset_description.json").read_text())["WideBolus"] is True


@pytest.mark.parametrize(
    ("option", "fields", "description"),
    [
        ("--wide-dispersion", ("dispersion_shape",), "WideDispersion"),
        ("--wide-residue", ("gamma_shape", "lognormal_sigma"), "WideResidue"),
    ],
)
def test_simulate_draws_a_wide_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, fields: tuple[str, ...], description: str
) -> None:
    """``--wide-dispersion`` (the tissue dispersion kernel's shape) and ``--wide-residue`` (the gamma
    residue's shape, the log-normal σ): each study's values drawn as the draw's option draws them,
    other than the plain draw's, and recorded; style B refuses both."""
    out = tmp_path / "cohort"
    args = ["--cases", "2", "--seed", "14020", "--size", "48", "--slices", "3"]
    assert _run(capsys, "simulate", out, *args, option)[0] == 0
    keyword = option.removeprefix("--").replace("-", "_")
    for i in (1, 2):
        drawn = PhantomConfig.draw(14019 + i, "CT", **{keyword: True})
        plain = PhantomConfig.draw(14019 + i, "CT")
        config = json.loads((out / f"sub-{i:04d}" / "ses-01" / "truth" / "parameters.json").read_text())[
            "config"
        ]
        for name in fields:
            assert config[name] == getattr(drawn, name) != getattr(plain, name)
    assert json.loads((out / "dataset_description.json").read_text())[description] is True
    code, _, err = _run(capsys, "simulate", tmp_path / "b", *args, "--style", "mni", option)
    assert code == 2 and option in err and not (tmp_path / "b").exists()


def test_every_draw_option_is_a_simulate_flag() -> None:
    """Each :class:`DrawOptions` field is the ``dest`` of the ``simulate`` flag its metadata names
    (``_draw_options`` reads the parsed flags by field name), and style B refuses it by that flag."""
    import dataclasses

    from perfnet.cli.cohort_commands import _draw_options
    from perfnet.cli.parser import build_parser
    from perfnet.errors import PerfnetInputError
    from perfnet.phantom.config import DrawOptions
    from perfnet.phantom.styles import draw_config

    parser = build_parser()
    assert _draw_options(parser.parse_args(["simulate", "out"])) == DrawOptions()
    for f in dataclasses.fields(DrawOptions):
        flag = f.metadata["flag"]
        argv = [flag] if f.type == "bool" else [flag, "0.5,1"]
        options = _draw_options(parser.parse_args(["simulate", "out", *argv]))
        assert options.chosen() == [f] and f.metadata["bids"] in options.description()
        with pytest.raises(PerfnetInputError, match=flag):
            draw_config("mni", 1, "CT", options)
