"""Seeded fuzzing of the readers and `perfnet analyze`: hundreds of random header, sidecar, array
and DICOM corruptions of a small valid study. Each must end in exit 0 with finite maps, or in
exit 2 with one line on stderr and nothing written: never a traceback, an internal error, or a
partial output folder."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_factory import write_volume_series
from perfnet.cli import main
from perfnet.io import load_map
from perfnet.io.output import MANIFEST, read_manifest
from phantoms import small_study

CASES_NIFTI = 130
CASES_DICOM = 70


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny but analysable CT stroke study: 64² phantom thinned to 21², 3 slices, 24 frames."""
    study = small_study(41, "CT", matrix=64, slices=3, frames=24, motion=False, lesion="core")
    series = study.series
    data = series.data[::3, ::3].copy()
    affine = series.affine.copy()
    affine[:3, :2] *= 3
    return {"data": data, "affine": affine, "times": series.times.copy()}


def _write_nifti(folder: Path, data: np.ndarray, affine: np.ndarray, sidecar: dict) -> Path:
    path = folder / "ctp.nii.gz"
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    (folder / "ctp.json").write_text(json.dumps(sidecar))
    return path


def _analyze(capsys: pytest.CaptureFixture[str], path: Path, out: Path, label: str) -> int:
    code = main(["analyze", str(path), "--out", str(out), "--no-report"])
    _, err = capsys.readouterr()
    assert code in (0, 2), (label, code, err)
    assert "Traceback" not in err and "internal error" not in err, (label, err)
    hidden = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not hidden, (label, hidden)
    lines = [x for x in err.strip().splitlines() if not x.startswith("perfnet: warning: ")]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("perfnet: error: "), (label, err)
        assert not out.exists(), label
    else:
        assert not lines, (label, err)
        manifest = read_manifest(out)
        assert manifest is not None, label
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
        assert files == manifest["files"], label
        for name in ("cbf", "cbv", "mtt", "ttp", "tmax"):
            values, _ = load_map(out / f"{name}.nii.gz")
            assert np.isfinite(values).all(), (label, name)
        shutil.rmtree(out)
    return code


# --- NIfTI ------------------------------------------------------------------------------------


def _nifti_case(rng: np.random.Generator, folder: Path, base: dict) -> tuple[str, Path]:
    data = np.array(base["data"], copy=True)
    affine = np.array(base["affine"], copy=True)
    sidecar: dict = {"Modality": "CT", "FrameTimes": [float(t) for t in base["times"]]}
    kind = rng.choice(["array", "sidecar", "header", "bytes", "affine"])
    label = str(kind)
    if kind == "array":
        what = rng.choice(["nan", "inf", "huge", "zeros", "constant", "negative", "noise", "spike", "frames"])
        label += f":{what}"
        index = tuple(int(rng.integers(n)) for n in data.shape)
        if what == "nan":
            data[index] = np.nan
        elif what == "inf":
            data[index] = np.inf * rng.choice([-1, 1])
        elif what == "huge":
            data[index] = float(rng.choice([3e38, -3e38, 1e6, 65535.0]))
        elif what == "zeros":
            data[:] = 0
        elif what == "constant":
            data[:] = float(rng.uniform(-1000, 1000))
        elif what == "negative":
            data = -data
        elif what == "noise":
            data = rng.normal(0, float(rng.uniform(1, 500)), data.shape)
        elif what == "spike":
            data[..., int(rng.integers(data.shape[3]))] += float(rng.uniform(-2000, 2000))
        else:  # fewer frames, times kept consistent
            n = int(rng.integers(1, data.shape[3]))
            data = data[..., :n]
            sidecar["FrameTimes"] = sidecar["FrameTimes"][:n]
        return label, _write_nifti(folder, data, affine, sidecar)
    if kind == "sidecar":
        what = rng.choice(
            ["missing", "json", "modality", "times-str", "times-len", "times-order", "ms", "te", "tr", "list"]
        )
        label += f":{what}"
        path = _write_nifti(folder, data, affine, sidecar)
        side = folder / "ctp.json"
        if what == "missing":
            side.unlink()
        elif what == "json":
            side.write_text(side.read_text()[: int(rng.integers(1, 30))])
        elif what == "modality":
            sidecar["Modality"] = rng.choice(["PET", "", None, 5, "mri", "MR"]).__str__()
            side.write_text(json.dumps(sidecar))
        elif what == "times-str":
            sidecar["FrameTimes"] = "0,1,2"
            side.write_text(json.dumps(sidecar))
        elif what == "times-len":
            sidecar["FrameTimes"] = sidecar["FrameTimes"][: int(rng.integers(0, 20))]
            side.write_text(json.dumps(sidecar))
        elif what == "times-order":
            times = list(sidecar["FrameTimes"])
            i = int(rng.integers(1, len(times)))
            times[i] = times[i - 1] - float(rng.uniform(0, 2))
            sidecar["FrameTimes"] = times
            side.write_text(json.dumps(sidecar))
        elif what == "ms":
            sidecar["FrameTimes"] = [1000 * t for t in sidecar["FrameTimes"]]
            side.write_text(json.dumps(sidecar))
        elif what == "te":
            sidecar |= {"Modality": "MR", "EchoTime": rng.choice(["x", "-1", "1e9", "0"]).item()}
            side.write_text(json.dumps(sidecar))
        elif what == "tr":
            del sidecar["FrameTimes"]
            sidecar["RepetitionTime"] = rng.choice(["0", "-2", "abc", "1e5", "1.5"]).item()
            side.write_text(json.dumps(sidecar))
        else:
            side.write_text(json.dumps([1, 2, 3]))
        return label, path
    if kind == "affine":
        what = rng.choice(["zero-col", "nan", "huge", "shear", "flip"])
        label += f":{what}"
        if what == "zero-col":
            affine[:3, int(rng.integers(3))] = 0
        elif what == "nan":
            affine[int(rng.integers(3)), int(rng.integers(4))] = np.nan
        elif what == "huge":
            affine[:3, :3] *= float(rng.choice([1e-4, 1e4, 1e9]))
        elif what == "shear":
            affine[:3, 1] = affine[:3, 0] * 0.999
        else:
            affine[:3, 0] *= -1
        header = nib.Nifti1Header()
        header.set_data_shape(data.shape)
        header.set_data_dtype(np.float32)
        header.set_xyzt_units("mm", "sec")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header.set_sform(affine, code=1)
            header.set_qform(None, code=0)
        path = folder / "ctp.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), None, header=header), str(path))
        (folder / "ctp.json").write_text(json.dumps(sidecar))
        return label, path
    # header fields or raw bytes of an uncompressed file
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    path = folder / "ctp.nii"
    nib.save(image, str(path))
    (folder / "ctp.json").write_text(json.dumps(sidecar))
    raw = bytearray(path.read_bytes())
    if kind == "header":
        field = rng.choice(["dim", "pixdim", "datatype", "vox_offset", "scl", "magic", "units", "sizeof"])
        label += f":{field}"
        offsets = {  # NIfTI-1 byte offsets and formats
            "dim": (40 + 2 * int(rng.integers(0, 8)), "<i2"),
            "pixdim": (76 + 4 * int(rng.integers(0, 8)), "<f4"),
            "datatype": (70, "<i2"),
            "vox_offset": (108, "<f4"),
            "scl": (112 + 4 * int(rng.integers(0, 2)), "<f4"),
            "magic": (344, "S4"),
            "units": (123, "u1"),
            "sizeof": (0, "<i4"),
        }
        offset, fmt = offsets[str(field)]
        if fmt == "S4":
            value = np.array(b"xyz\0", dtype="S4")
        elif fmt == "u1":
            value = np.array(int(rng.integers(0, 256)), dtype=fmt)
        elif fmt == "<f4":
            value = np.array(rng.choice([0.0, -1.0, np.nan, np.inf, 1e9, 1e-9, 3.0]), dtype=fmt)
        else:
            value = np.array(int(rng.choice([0, -1, 1, 2, 7, 16, 4096, 32767, 348, 64])), dtype=fmt)
        blob = value.tobytes()
        raw[offset : offset + len(blob)] = blob
    else:
        what = rng.choice(["truncate", "flip-header", "flip-data", "append"])
        label += f":{what}"
        if what == "truncate":
            raw = raw[: int(rng.integers(0, len(raw)))]
        elif what == "flip-header":
            for _ in range(int(rng.integers(1, 6))):
                raw[int(rng.integers(0, 348))] = int(rng.integers(0, 256))
        elif what == "flip-data":
            for _ in range(int(rng.integers(1, 50))):
                raw[int(rng.integers(352, len(raw)))] = int(rng.integers(0, 256))
        else:
            raw += bytes(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8))
    path.write_bytes(bytes(raw))
    return label, path


def test_fuzz_nifti_reader_and_analyze(
    base: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(20261202)
    outcomes: dict[int, int] = {0: 0, 2: 0}
    for i in range(CASES_NIFTI):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        label, path = _nifti_case(rng, folder, base)
        code = _analyze(capsys, path, folder / "out", f"{i} {label}")
        outcomes[code] += 1
        shutil.rmtree(folder)
    assert outcomes[0] > 10 and outcomes[2] > 30, outcomes  # both paths exercised


# --- DICOM ------------------------------------------------------------------------------------


def _dicom_case(rng: np.random.Generator, template: Path, folder: Path) -> str:
    shutil.copytree(template, folder)
    files = sorted(folder.iterdir())
    what = str(
        rng.choice(
            [
                "delete-tag",
                "garbage-tag",
                "truncate",
                "random-bytes",
                "remove-file",
                "duplicate",
                "shape",
                "empty",
                "text-file",
                "time-clash",
            ]
        )
    )
    victims = [files[int(i)] for i in rng.choice(len(files), size=int(rng.integers(1, 6)), replace=False)]
    tags = [
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "AcquisitionTime",
        "RescaleSlope",
        "RescaleIntercept",
        "Rows",
        "SeriesInstanceUID",
        "PixelData",
        "Modality",
    ]
    garbage: dict[str, object] = {
        "ImagePositionPatient": ["a", "b", "c"],
        "ImageOrientationPatient": [0.0] * 6,
        "PixelSpacing": [0.0, -1.0],
        "AcquisitionTime": "99x",
        "RescaleSlope": "nan",
        "RescaleIntercept": "1e40",
        "Rows": 0,
        "SeriesInstanceUID": "9.9",
        "PixelData": b"\x00\x01",
        "Modality": "PT",
    }
    for path in victims:
        if what in ("delete-tag", "garbage-tag", "time-clash", "shape"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
                tag = str(rng.choice(tags))
                if what == "delete-tag" and tag in ds:
                    delattr(ds, tag)
                elif what == "garbage-tag":
                    try:
                        setattr(ds, tag, copy.deepcopy(garbage[tag]))
                    except Exception:
                        continue
                elif what == "time-clash":
                    ds.AcquisitionTime = "100000.000000"
                else:
                    ds.Rows = int(ds.Rows) + 1
                try:
                    ds.save_as(path)
                except Exception:
                    path.write_bytes(b"DICM")
        elif what == "truncate":
            raw = path.read_bytes()
            path.write_bytes(raw[: int(rng.integers(0, len(raw)))])
        elif what == "random-bytes":
            path.write_bytes(bytes(rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8)))
        elif what == "remove-file":
            path.unlink()
        elif what == "duplicate":
            shutil.copy(path, path.with_name(path.stem + "_copy.dcm"))
        elif what == "empty":
            path.write_bytes(b"")
        else:
            path.write_text("not dicom\n")
    return what


def test_fuzz_dicom_reader_and_analyze(
    base: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "template"
    write_volume_series(template, base["data"], base["affine"], base["times"])
    assert _analyze(capsys, template, tmp_path / "out-valid", "valid DICOM") == 0
    rng = np.random.default_rng(1202)
    outcomes: dict[int, int] = {0: 0, 2: 0}
    for i in range(CASES_DICOM):
        folder = tmp_path / f"case{i}"
        label = _dicom_case(rng, template, folder / "dicom")
        outcomes[_analyze(capsys, folder / "dicom", folder / "out", f"{i} {label}")] += 1
        shutil.rmtree(folder)
    assert outcomes[2] > 10, outcomes  # one bad file refuses the series (with the file's name)
