"""BIDS derivatives: `analyze --bids` writes derivatives/perfnet/sub-X/ses-Y/perf/ (several methods
side by side), with sidecars and a derivative dataset_description.json; evaluate reads it back."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest

from perfnet.cli import main
from perfnet.io.output import read_manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bids") / "dataset"
    args = "--modality ct --cases 1 --seed 77 --size 64 --slices 4 --frames 36 --lesion core --no-motion"
    assert main(["simulate", str(root), *args.split()]) == 0
    return root


def test_analyze_bids_writes_derivatives_beside_other_methods(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = dataset / "sub-0001" / "ses-01" / "sub-0001_ses-01_ctp.nii.gz"
    for method in ("osvd", "cnn"):
        assert main(["analyze", str(series), "--bids", "--method", method, "--no-report"]) == 0, (
            capsys.readouterr().err
        )
    capsys.readouterr()
    root = dataset / "derivatives" / "perfnet"
    perf = root / "sub-0001" / "ses-01" / "perf"
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "perfnet"
    for method in ("osvd", "cnn"):  # the second method's run kept the first one's files
        stem = f"sub-0001_ses-01_desc-{method}"
        for name in ("cbf", "cbv", "mtt", "ttp", "tmax"):
            image = nib.load(perf / f"{stem}_{name}.nii.gz")
            assert image.header.get_intent()[0] == "estimate"
            sidecar = json.loads((perf / f"{stem}_{name}.json").read_text())
            assert sidecar["Method"] == method and sidecar["Units"] in ("mL/100 g/min", "mL/100 g", "s")
            assert sidecar["Sources"] == ["bids::sub-0001/ses-01/perf/sub-0001_ses-01_ctp.nii.gz"]
        assert "mL/100 g/min" in nib.load(perf / f"{stem}_cbf.nii.gz").header["descrip"].item().decode()
        for mask in ("core", "penumbra", "hypoperfused"):
            path = perf / f"sub-0001_ses-01_label-{mask}_desc-{method}_mask.nii.gz"
            assert nib.load(path).header.get_intent()[0] == "label"
        assert (perf / f"{stem}_lesions.json").is_file() and (perf / f"{stem}_provenance.json").is_file()
    assert json.loads((perf / "sub-0001_ses-01_desc-osvd_aif.json").read_text())["source"] == "automatic"
    manifest = read_manifest(perf)
    assert "sub-0001_ses-01_desc-osvd_cbf.nii.gz" in manifest["files"]
    assert "sub-0001_ses-01_desc-cnn_cbf.nii.gz" in manifest["files"]
    # evaluate reads the BIDS layout, one method at a time
    out = tmp_path / "eval"
    assert main(["evaluate", str(root), str(dataset), "--out", str(out), "--desc", "osvd"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["studies"] == 1 and 0 < summary["metrics"]["hypoperfused_dice"]["mean"] <= 1
    code = main(["evaluate", str(root), str(dataset), "--out", str(tmp_path / "eval2")])
    assert code == 2 and "--desc" in capsys.readouterr().err


def test_bids_needs_a_bids_like_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from perfnet.io import save_series_nifti
    from phantoms import small_study

    path = save_series_nifti(small_study(3).series, tmp_path / "scan.nii.gz")
    assert main(["analyze", str(path), "--bids"]) == 2
    assert "sub-<label>" in capsys.readouterr().err
