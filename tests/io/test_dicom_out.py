"""DICOM results for a PACS: SEG, Parametric Maps, colour and summary series read back with pydicom
and highdicom, on the source's geometry and in the source's study."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_factory import FAKE_ID, FAKE_NAME, write_volume_series
from perfnet.io import dicom_out, load_series
from perfnet.io.dicom_out import write_dicom_outputs
from perfnet.io.types import PerfusionMaps

NX, NY, NZ, NT = 12, 10, 3, 9


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PerfusionMaps]:
    """A DICOM series (oblique-free, 2×2.5×5 mm) and maps on its grid whose every voxel says where it is."""
    folder = tmp_path_factory.mktemp("src") / "dicom"
    affine = np.array([[2.0, 0, 0, -10.0], [0, 2.5, 0, 20.0], [0, 0, 5.0, 30.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(3)
    data = rng.normal(40, 5, (NX, NY, NZ, NT)).astype(np.float32)
    write_volume_series(folder, data, affine, np.arange(NT) * 1.5)
    series = load_series(folder)
    np.testing.assert_allclose(series.affine, affine, atol=1e-5)
    i, j, k = np.indices((NX, NY, NZ))
    brain = np.ones((NX, NY, NZ), dtype=bool)
    values = {
        "cbf": (100 * k + 10 * j + i).astype(np.float32) / 7,
        "cbv": (k + 0.1 * j).astype(np.float32),
        "mtt": (i * 0.5).astype(np.float32),
        "ttp": (j * 1.5).astype(np.float32),
        "tmax": (i + j * 0.25).astype(np.float32),
    }
    masks = {
        "core": (i < 3) & (k == 1),
        "penumbra": (i >= 3) & (i < 6) & (k >= 1),
        "hypoperfused": (i < 6) & (k >= 1),
    }
    maps = PerfusionMaps(values, series.affine, brain, "osvd", masks=masks)
    return folder, maps


def _lesions() -> dict:
    return {
        "volumes_ml": {"core": 1.2, "hypoperfused": 3.4, "penumbra": 2.2, "mismatch": 2.2},
        "mismatch_ratio": 2.83,
        "tmax_volumes_ml": {"4": 5.0, "6": 3.4, "8": 2.0, "10": 1.0},
        "hypoperfusion_intensity_ratio": 0.29,
        "affected_side": "right",
        "defuse3": {"target_mismatch": False},
        "settings": {"tmax_threshold_s": 6.0, "core_relative_cbf": 0.3},
    }


def _source_positions(folder: Path) -> dict[float, dict]:
    out = {}
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if int(ds.InstanceNumber) <= NZ:  # frame 0 of each slice
            out[round(float(ds.ImagePositionPatient[2]), 3)] = ds
    return out


@pytest.mark.parametrize("anonymize", [False, True])
def test_seg_pm_colour_and_summary_read_back_on_the_source_geometry(
    dicom_study: tuple[Path, PerfusionMaps], tmp_path: Path, anonymize: bool
) -> None:
    folder, maps = dicom_study
    series = load_series(folder)
    written = write_dicom_outputs(tmp_path, maps, series, _lesions(), anonymize=anonymize)
    out = tmp_path / "dicom"
    assert {p.name for p in written if p.parent == out} == {
        "seg.dcm",
        "summary.dcm",
        *(f"pm-{m}.dcm" for m in ("cbf", "cbv", "mtt", "ttp", "tmax")),
    }
    sources = _source_positions(folder)
    source = next(iter(sources.values()))

    seg = hd.seg.segread(out / "seg.dcm")
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == [
        "core",
        "penumbra",
        "hypoperfused",
    ]
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    if anonymize:
        assert seg.StudyInstanceUID != source.StudyInstanceUID
        assert str(seg.PatientName) != FAKE_NAME and seg.PatientID != FAKE_ID
    else:  # filed with the patient: the source's study and patient modules
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert str(seg.PatientName) == FAKE_NAME and seg.PatientID == FAKE_ID
        referenced = {
            ref.ReferencedSOPInstanceUID
            for s in seg.ReferencedSeriesSequence
            for ref in s.ReferencedInstanceSequence
        }
        assert referenced == {ds.SOPInstanceUID for ds in sources.values()}
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    # every frame at its source slice's position, holding that slice's mask
    pixels = seg.pixel_array  # (frames, rows, cols, segments) or (frames, rows, cols)
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        k = list(sources).index(round(position[2], 3))
        np.testing.assert_allclose(
            position, [float(v) for v in sources[round(position[2], 3)].ImagePositionPatient], atol=1e-4
        )
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        name = ("core", "penumbra", "hypoperfused")[number - 1]
        expected = maps.masks[name][:, :, k].T
        got = pixels[f] if pixels.ndim == 3 else pixels[f, ..., number - 1]
        np.testing.assert_array_equal(got.astype(bool), expected)

    for name in ("cbf", "tmax"):
        pm = pydicom.dcmread(out / f"pm-{name}.dcm")
        assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        unit = mapping.MeasurementUnitsCodeSequence[0].CodeValue
        assert unit == {"cbf": "ml/[100]g/min", "tmax": "s"}[name]  # DICOM CID 83 UCUM codes
        values = pm.pixel_array
        for f, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
            z = round(float(frame.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
            np.testing.assert_allclose(values[f], maps[name][:, :, list(sources).index(z)].T, rtol=1e-6)
        assert pm.StudyInstanceUID == seg.StudyInstanceUID

    colour = sorted((out / "color-cbf").glob("*.dcm"))
    assert len(colour) == NZ
    sc = pydicom.dcmread(colour[0])
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[-1] == 3
    assert sc.pixel_array.std() > 10 and sc.StudyInstanceUID == seg.StudyInstanceUID
    summary = pydicom.dcmread(out / "summary.dcm")
    assert summary.pixel_array.shape[-1] == 3 and summary.BurnedInAnnotation == "YES"
    series_uids = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in written}
    assert len(series_uids) == 1 + 5 + 5 + 1 and source.SeriesInstanceUID not in series_uids


def test_nifti_input_gets_generated_identifiers(
    dicom_study: tuple[Path, PerfusionMaps], tmp_path: Path
) -> None:
    folder, maps = dicom_study
    series = load_series(folder)
    series.meta.pop("dicom_slice_files")  # as a NIfTI input has none
    write_dicom_outputs(tmp_path, maps, series, _lesions())
    seg = pydicom.dcmread(tmp_path / "dicom" / "seg.dcm")
    assert "generated identifiers" in seg.SeriesDescription
    assert str(seg.PatientName) != FAKE_NAME and seg.StudyInstanceUID != "1.2.3.4"


def test_analyze_dicom_flag_writes_pacs_series_into_the_output_set(tmp_path: Path, capsys) -> None:
    from perfnet.cli import main
    from perfnet.io.output import read_manifest
    from phantoms import small_study

    study = small_study(41, "CT", matrix=64, slices=3, frames=24, motion=False, lesion="core")
    affine = study.series.affine.copy()
    affine[:3, :2] *= 3
    write_volume_series(tmp_path / "src", study.series.data[::3, ::3], affine, study.series.times)
    out = tmp_path / "out"
    code = main(["analyze", str(tmp_path / "src"), "--out", str(out), "--dicom", "--no-report"])
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert "dicom/seg.dcm" in manifest["files"] and "dicom/summary.dcm" in manifest["files"]
    seg = hd.seg.segread(out / "dicom" / "seg.dcm")
    assert str(seg.PatientName) == FAKE_NAME  # in the dicom/ series only
    for name in ("provenance.json", "lesions.json"):
        text = (out / name).read_text()
        assert FAKE_NAME not in text and FAKE_ID not in text
    positions = sorted(
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in seg.PerFrameFunctionalGroupsSequence
    )
    source_z = sorted(
        {
            float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
            for p in (tmp_path / "src").glob("*.dcm")
        }
    )
    np.testing.assert_allclose(sorted(set(positions)), source_z, atol=1e-4)


def test_the_summary_page_carries_the_qc_verdict_and_the_late_tissue() -> None:
    """A reader in the PACS sees only the summary page: it states the QC verdict with its flags
    (wrapped to the page), says an unreliable study's maps are not trusted, and gives the late
    tissue's share of the lesions when ``late_bolus`` was raised; an ``ok`` study says just that."""
    flags = [
        {"code": c} for c in ("late_bolus", "truncated_bolus", "large_motion", "outside_training_domain")
    ]
    late = {"core": 9.3, "hypoperfused": 21.2, "penumbra": 11.8, "late_tissue": 22.3}
    lines = dicom_out.summary_lines(
        _lesions() | {"in_late_tissue_ml": late},
        {"qc_verdict": "unreliable", "qc_flags": flags},
        "cnn",
        generated=False,
    )
    text = " ".join(lines)
    assert "QC: UNRELIABLE — late_bolus, truncated_bolus, large_motion, outside_training_domain" in text
    assert "not trusted" in text
    assert "22 mL still enhancing at the last frame" in text and "9.3 mL of the core" in text
    assert max(len(line) for line in lines) <= dicom_out.SUMMARY_WIDTH
    ok = dicom_out.summary_lines(_lesions(), {"qc_verdict": "ok", "qc_flags": []}, "osvd", generated=False)
    assert ok[-1] == "QC: OK" and not any("still enhancing" in line for line in ok)


def test_the_summary_page_states_the_core_threshold_as_applied() -> None:
    """A calibrated core rule is stated as the relative threshold it came to for this study: the
    factor's (× 1.2: 36 %) or, with an offset, lesions.json's ``core_threshold_percent``; a
    CBV-weighted index is named in a line of its own; the plain rule adds no line."""
    calibrated = "Core threshold calibrated for this method's CBF"
    plain = dicom_out.summary_lines(_lesions(), {}, "osvd", generated=False)
    assert not any(calibrated in line for line in plain)
    factor = _lesions()
    factor["settings"] |= {"cbf_calibration": 1.2}
    assert f"{calibrated}: 36.0%" in dicom_out.summary_lines(factor, {}, "cnn", generated=False)
    offset = _lesions() | {"core_threshold_percent": 37.3}
    offset["settings"] |= {"cbf_calibration": 2 / 3, "cbf_offset": 6.0}
    assert f"{calibrated}: 37.3%" in dicom_out.summary_lines(offset, {}, "cnn", generated=False)
    weighed = _lesions() | {"core_threshold_percent": 66.0}
    weighed["settings"] |= {"cbf_calibration": 2.2, "core_cbv_weight": 3.0}
    lines = dicom_out.summary_lines(weighed, {}, "cnn", generated=False)
    assert f"{calibrated}: 66.0%" in lines and "Core index: (rCBF × rCBV^3)^(1/4), CBV weighed in" in lines
    factor_lines = dicom_out.summary_lines(factor, {}, "cnn", generated=False)
    assert not any("Core index" in line for line in factor_lines)
