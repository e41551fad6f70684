"""`perfnet cohort`: a small simulated cohort with one corrupt study, serially, on a Dask
LocalCluster (2 worker processes) and killed-then-resumed: same maps, the corrupt study reported,
the rest complete."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perfnet.cli import main
from perfnet.errors import PerfnetInputError
from perfnet.runner import discover, run_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "data"
    args = "--modality ct --cases 3 --seed 90 --size 48 --slices 3 --frames 30 --no-motion"
    assert main(["simulate", str(root), *args.split()]) == 0
    broken = root / "sub-0003" / "ses-01" / "sub-0003_ses-01_ctp.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])  # truncated
    return root


@pytest.fixture(scope="module")
def serial(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    deriv = tmp_path_factory.mktemp("serial") / "perfnet"
    # one BLAS/torch thread here and on the cluster below: with one per core, the CI machine's
    # maps differed in the 5th digit (float32 sums in an order that several threads do not fix)
    summary = run_cohort(cohort, deriv, "osvd", jobs=1, threads=1, options=["--no-report"])
    return deriv, summary


def _rows(deriv: Path) -> dict[str, dict[str, str]]:
    with (deriv / "cohort.tsv").open() as f:
        return {r["study"]: r for r in csv.DictReader(f, delimiter="\t")}


def _cbf(deriv: Path, study: str) -> np.ndarray:
    sub, ses = study.split("_")
    return np.asarray(nib.load(deriv / sub / ses / "perf" / f"{study}_desc-osvd_cbf.nii.gz").dataobj)


def test_serial_run_reports_the_corrupt_study_and_completes_the_others(serial: tuple[Path, dict]) -> None:
    deriv, summary = serial
    assert summary["studies"] == 3 and summary["done"] == 2 and summary["failed"] == 1
    rows = _rows(deriv)
    bad = rows["sub-0003_ses-01"]
    assert bad["status"] == "failed" and "sub-0003_ses-01_ctp.nii.gz" in bad["error"]
    assert "truncated" in bad["error"]
    for name in ("sub-0001_ses-01", "sub-0002_ses-01"):
        assert rows[name]["status"] == "done" and float(rows[name]["hypoperfused_ml"]) >= 0
        assert float(rows[name]["seconds"]) > 0 and float(rows[name]["peak_memory_gb"]) > 0.05
    assert json.loads((deriv / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_dask_local_cluster_gives_the_serial_maps(
    cohort: Path, serial: tuple[Path, dict], tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster

    deriv = tmp_path / "perfnet"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            summary = run_cohort(cohort, deriv, "osvd", scheduler=client, threads=1, options=["--no-report"])
    assert summary["done"] == 2 and summary["failed"] == 1
    for name in ("sub-0001_ses-01", "sub-0002_ses-01"):
        np.testing.assert_array_equal(_cbf(deriv, name), _cbf(serial[0], name))  # bit for bit


def test_killed_cohort_resumes_with_only_the_missing_studies(cohort: Path, tmp_path: Path) -> None:
    deriv = tmp_path / "perfnet"
    command = [sys.executable, "-m", "perfnet.cli", "cohort", str(cohort), "--out", str(deriv), "--no-report"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first finished study
    assert line.startswith("[1/3]"), line
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sum(1 for p in deriv.rglob("*_desc-osvd_provenance.json"))
    assert 1 <= done_before < 3
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert f"{done_before} already complete" in out
    rows = _rows(deriv)
    outcomes = {k: (r["status"], r.get("error")) for k, r in rows.items()}
    assert sum(r["status"] == "done" for r in rows.values()) == 2, outcomes
    assert rows["sub-0003_ses-01"]["status"] == "failed"
    # a third run has nothing left to do but the failed study
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "2 already complete" in out


def test_bad_cohort_input_is_refused_before_any_work(cohort: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, words in [
        ([str(tmp_path / "missing")], "no such folder"),
        ([str(empty)], "no studies found"),
        ([str(cohort), "--part", "5/4"], "K/N"),
        ([str(cohort), "--scheduler", "tcp://127.0.0.1:9"], "cannot reach"),
        ([str(cohort), "--method", "osvd", "--cross-check", "osvd"], "--method cnn"),
        ([str(cohort), "--method", "osvd", "--time-scaling", "always"], "--method cnn"),
    ]:
        out = tmp_path / "deriv"
        code = main(["cohort", *args, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (args, err)
        assert not out.exists()


def test_cohort_hands_the_cross_check_to_every_study(cohort: Path, tmp_path: Path, monkeypatch) -> None:
    """`perfnet cohort --method cnn --cross-check osvd`: each study's `perfnet analyze` gets it."""
    seen: dict = {}

    def run_cohort(root, out, method, **kw):
        seen.update(method=method, options=kw["options"])
        return {k: 0 for k in ("studies", "done", "failed", "crashed", "pending")} | {
            "this_run": {"done": 0, "failed": 0, "skipped": 0}
        }

    monkeypatch.setattr("perfnet.runner.run_cohort", run_cohort)
    assert (
        main(
            ["cohort", str(cohort), "--out", str(tmp_path / "d"), "--method", "cnn", "--cross-check", "osvd"]
        )
        == 0
    )
    assert seen == {"method": "cnn", "options": ["--cross-check", "osvd"]}
    assert (
        main(
            ["cohort", str(cohort), "--out", str(tmp_path / "e"), "--method", "cnn", "--time-scaling", "off"]
        )
        == 0
    )
    assert seen == {"method": "cnn", "options": ["--time-scaling", "off"]}


def test_dicom_series_folders_are_studies_labelled_by_hash(tmp_path: Path) -> None:
    from dicom_factory import write_series

    write_series(tmp_path / "root" / "Doe^John_CTP")
    write_series(tmp_path / "root" / "second")
    studies = discover(tmp_path / "root")
    assert len(studies) == 2 and all(s.subject.startswith("dcm") for s in studies)
    assert all("Doe" not in s.name for s in studies)  # folder names can be patient names
    shutil.rmtree(tmp_path / "root")


def test_find_adc_takes_each_studys_diffusion_core(tmp_path: Path) -> None:
    """``perfnet cohort --find-adc``: a study with an ADC map in its session folder gets the core
    from it (its truth core here), one without keeps the perfusion core; two ADC maps for one study
    stop the run before any work, naming the study."""
    root = tmp_path / "data"
    args = "--modality mr --cases 2 --seed 91 --size 48 --slices 3 --frames 30 --no-motion --lesion core"
    assert main(["simulate", str(root), *args.split()]) == 0
    session = root / "sub-0001" / "ses-01"
    truth = nib.load(session / "truth" / "core.nii.gz")
    core = np.asarray(truth.dataobj) > 0
    (session / "dwi").mkdir()
    adc = np.where(core, 450, 800).astype(np.int16)
    nib.save(nib.Nifti1Image(adc, truth.affine), str(session / "dwi" / "sub-0001_ses-01_ADC.nii.gz"))
    deriv = tmp_path / "deriv"
    assert main(["cohort", str(root), "--out", str(deriv), "--no-report", "--find-adc"]) == 0
    rows = _rows(deriv)
    assert rows["sub-0001_ses-01"]["core_source"] == "adc"
    assert rows["sub-0002_ses-01"]["core_source"] == "perfusion"
    found = nib.load(
        deriv / "sub-0001" / "ses-01" / "perf" / "sub-0001_ses-01_label-core_desc-osvd_mask.nii.gz"
    )
    found_core = np.asarray(found.dataobj) > 0
    assert 2 * (found_core & core).sum() / (found_core.sum() + core.sum()) > 0.8

    extra = root / "sub-0002" / "ses-01" / "sub-0002_ses-01_adc.nii.gz"
    nib.save(nib.Nifti1Image(adc, truth.affine), str(extra))
    nib.save(nib.Nifti1Image(adc, truth.affine), str(extra.with_name("ADC_copy.nii.gz")))
    with pytest.raises(PerfnetInputError, match="several ADC maps"):
        run_cohort(root, tmp_path / "deriv2", "osvd", find_adc_maps=True)
    assert not (tmp_path / "deriv2").exists()


def test_find_adc_in_dicom_study_folders(tmp_path: Path) -> None:
    """``--find-adc`` on DICOM studies: a study folder that also holds a series named ADC takes its
    core from it (the 4D reader reads the DSC series, the ADC reader the ADC series); a folder
    without one keeps the perfusion core; two ADC series in one folder stop the run before any
    work."""
    from dicom_factory import write_volume_series
    from phantoms import small_study

    study = small_study(5252, "MR", matrix=48, slices=3, frames=30, lesion="core", motion=False)
    series, core = study.series, study.truth.masks["core"]
    adc = np.where(core, 480.0, 820.0)[..., None]
    root = tmp_path / "dicom"
    for name, with_adc in (("case-a", True), ("case-b", False)):
        folder = root / name
        write_volume_series(folder, series.data, series.affine, series.times, "MR", "ep2d_perf", "dsc")
        if with_adc:
            write_volume_series(folder, adc, series.affine, np.zeros(1), "MR", "ep2d_diff_ADC", "adc")
    studies = {s.path.name: s for s in discover(root)}
    deriv = tmp_path / "deriv"
    run_cohort(root, deriv, "osvd", find_adc_maps=True, options=["--no-report"])
    rows = _rows(deriv)
    assert rows[studies["case-a"].name]["core_source"] == "adc"
    assert rows[studies["case-b"].name]["core_source"] == "perfusion"
    assert float(rows[studies["case-a"].name]["core_ml"]) > 0
    write_volume_series(root / "case-b", adc, series.affine, np.zeros(1), "MR", "ADC", "adc1")
    write_volume_series(root / "case-b", adc, series.affine, np.zeros(1), "MR", "ADC copy", "adc2")
    with pytest.raises(PerfnetInputError, match="2 series named ADC"):
        run_cohort(root, tmp_path / "deriv2", "osvd", find_adc_maps=True, overwrite=True)
    assert not (tmp_path / "deriv2").exists()
