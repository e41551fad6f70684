"""DICOM reading: the UniToBrain sample files and synthetic series written with pydicom."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLosslessSV1, generate_uid

from dicom_factory import (
    AXIAL,
    BASE_TIMES,
    COLS,
    CT_IMAGE,
    ENHANCED_CT,
    FAKE_ID,
    FAKE_NAME,
    N_FRAMES,
    N_SLICES,
    ORIGIN,
    PIXEL_SPACING,
    ROWS,
    SLICE_DELAY,
    SLICE_SPACING,
    base_dataset,
    expected_times,
    stored_frame,
    tm,
    truth,
    write_series,
)
from perfnet.errors import PerfnetInputError
from perfnet.io import load_series
from perfnet.io.dicom import load_dicom_series, read_dicom_image
from perfnet.io.dicom_time import parse_dt, parse_tm

UNITOBRAIN = Path(__file__).resolve().parent.parent / "data" / "unitobrain"
RAW = UNITOBRAIN / "IM-0001-0001-0001.dcm"
REGISTERED = UNITOBRAIN / "Registered00001.dcm"
CBV = UNITOBRAIN / "NLR_CBV00003.dcm"


def ras(lps: np.ndarray) -> np.ndarray:
    return np.asarray(lps) * np.array([-1.0, -1.0, 1.0])


def check_geometry(series: Any) -> None:
    affine = series.affine
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [*ras(ORIGIN), 1], atol=1e-6)
    for k in range(N_SLICES):  # slice k's corner pixel is that slice's ImagePositionPatient
        ipp = ORIGIN + np.array([0, 0, SLICE_SPACING * k])
        np.testing.assert_allclose((affine @ [0, 0, k, 1])[:3], ras(ipp), atol=1e-6)
    far = ORIGIN + np.array([(COLS - 1) * PIXEL_SPACING[1], (ROWS - 1) * PIXEL_SPACING[0], 2 * SLICE_SPACING])
    np.testing.assert_allclose((affine @ [COLS - 1, ROWS - 1, 2, 1])[:3], ras(far), atol=1e-6)
    np.testing.assert_allclose(series.voxel_size, [PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_SPACING])


def assert_input_error(excinfo: pytest.ExceptionInfo[PerfnetInputError], path: Path, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message, message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------- UniToBrain sample files


def test_raw_jpeg_lossless_frame_decodes_to_hounsfield_units() -> None:
    header = pydicom.dcmread(RAW, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert "pylibjpeg" in get_decoder(JPEGLosslessSV1).available_plugins
    image, ds = read_dicom_image(RAW)
    assert image.dtype == np.float32 and image.shape == (512, 512)
    assert "PixelData" not in ds and float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    # pylibjpeg is the decoder: forcing it gives the same stored values
    stored = pydicom.pixels.pixel_array(RAW, decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(image, stored.astype(np.float32) - 1024)
    assert np.mean(np.abs(image + 1000) < 60) > 0.1  # air around the head
    head = image[192:320, 192:320]
    assert 0 < np.median(head) < 100  # brain tissue, HU
    assert image.max() < 4000 and image.min() >= -3024  # -3024: padding outside the field of view


def test_registered_frame_applies_slope_and_intercept() -> None:
    image, _ = read_dicom_image(REGISTERED)
    stored = pydicom.dcmread(REGISTERED).pixel_array
    assert stored.dtype == np.uint16 and stored.max() > 10000  # stored values are 0.1 HU steps
    np.testing.assert_array_equal(image, (stored.astype(np.float64) * 0.1 - 1000).astype(np.float32))
    raw, _ = read_dicom_image(RAW)  # the registered copy of the raw frame, clipped at -1000 HU
    np.testing.assert_array_equal(image, np.maximum(raw, -1000))


def test_nlr_cbv_map_is_in_ml_per_100g() -> None:
    cbv, ds = read_dicom_image(CBV)
    assert float(ds.RescaleSlope) == pytest.approx(0.01)
    stored = pydicom.dcmread(CBV).pixel_array
    np.testing.assert_allclose(cbv, stored * 0.01, rtol=1e-6)
    assert cbv.min() >= 0
    assert np.mean(cbv < 20) > 0.99
    assert 0.5 < np.median(cbv[cbv > 0]) < 5


def test_without_pylibjpeg_the_raw_frame_cannot_be_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = get_decoder(JPEGLosslessSV1)
    monkeypatch.setattr(decoder, "_available", {})  # as if pylibjpeg were not installed
    with pytest.raises(PerfnetInputError) as excinfo:
        read_dicom_image(RAW)
    assert_input_error(excinfo, RAW, "cannot decode pixel data", "JPEG Lossless")


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_and_non_dicom_files_name_the_file(tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(RAW.read_bytes()[: RAW.stat().st_size // 2])
    with pytest.raises(PerfnetInputError) as excinfo:
        read_dicom_image(cut)
    assert_input_error(excinfo, cut)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    with pytest.raises(PerfnetInputError) as excinfo:
        read_dicom_image(text)
    assert_input_error(excinfo, text, "not a DICOM file")


def test_jpeg_lossless_series_from_the_raw_frame(tmp_path: Path) -> None:
    """Four copies of the raw frame as 2 slices × 2 frames: the series reader decodes JPEG lossless."""
    original = pydicom.dcmread(RAW)
    ipp0 = np.array([float(v) for v in original.ImagePositionPatient])
    for k, offset in enumerate((0.0, -5.0)):
        for t in range(2):
            ds = pydicom.dcmread(RAW)
            ds.SOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = [*ipp0[:2], ipp0[2] + offset]
            ds.SliceLocation = ipp0[2] + offset
            ds.InstanceNumber = 1 + t * 2 + k
            ds.AcquisitionTime = tm(7 * 3600 + 50 * 60 + 34.8 + 2.0 * t)
            ds.save_as(tmp_path / f"IM-{k}-{t}.dcm")
    series = load_dicom_series(tmp_path)
    assert series.shape == (512, 512, 2, 2)
    np.testing.assert_allclose(series.times, [0, 2.0])
    expected = original.pixel_array.T.astype(np.float32) - 1024
    np.testing.assert_array_equal(series.data[:, :, 1, 0], expected)  # the upper slice is k = 1
    assert series.meta["transfer_syntaxes"] == [JPEGLosslessSV1.name]
    assert series.voxel_size == pytest.approx((0.488281, 0.488281, 5.0))
    assert series.meta["manufacturer"] == "GE MEDICAL SYSTEMS"
    corner = ipp0 + np.array([0, 0, -5.0])  # slice 0 is the lower one
    np.testing.assert_allclose((series.affine @ [0, 0, 0, 1])[:3], ras(corner), atol=1e-4)


# ---------------------------------------------------------------- synthetic series


def test_series_in_shuffled_files_is_assembled_in_xyzt_order(tmp_path: Path) -> None:
    write_series(tmp_path)
    (tmp_path / "README.txt").write_text("exported by a test\n")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean series loads without warnings
        series = load_dicom_series(tmp_path)
    assert series.shape == (COLS, ROWS, N_SLICES, N_FRAMES)
    np.testing.assert_array_equal(series.data, truth())
    np.testing.assert_allclose(series.times, expected_times(), atol=1e-5)
    check_geometry(series)
    assert series.modality == "CT" and series.echo_time is None
    meta = series.meta
    assert meta["format"] == "dicom" and meta["frame_times_source"] == "AcquisitionTime"
    assert meta["n_files"] == N_SLICES * N_FRAMES and meta["n_skipped_files"] == 2
    assert meta["series_description"] == "CTP synthetic"
    json.dumps(meta)  # JSON-ready
    assert load_series(tmp_path).shape == series.shape  # the io entry point dispatches here


def test_no_patient_identifiers_in_meta_or_summary(tmp_path: Path) -> None:
    write_series(tmp_path)
    series = load_dicom_series(tmp_path)
    for text in (str(series.meta), json.dumps(series.summary()), repr(series.meta)):
        assert FAKE_NAME not in text and "DOE" not in text and FAKE_ID not in text


def test_content_time_with_colons_across_midnight(tmp_path: Path) -> None:
    write_series(tmp_path, timing="ContentTime")
    series = load_dicom_series(tmp_path)
    assert series.meta["frame_times_source"] == "ContentTime"
    np.testing.assert_allclose(series.times, expected_times(), atol=1e-5)
    np.testing.assert_array_equal(series.data, truth())


def test_trigger_time_in_ms(tmp_path: Path) -> None:
    write_series(tmp_path, timing="TriggerTime")
    series = load_dicom_series(tmp_path)
    assert series.meta["frame_times_source"] == "TriggerTime"
    np.testing.assert_allclose(series.times, expected_times(), atol=1e-6)


def test_temporal_position_needs_a_frame_interval(tmp_path: Path) -> None:
    write_series(tmp_path, timing="TemporalPositionIdentifier")
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, "no frame times", "TemporalPositionIdentifier")
    series = load_dicom_series(tmp_path, frame_interval=1.5)
    np.testing.assert_allclose(series.times, np.arange(N_FRAMES) * 1.5)
    np.testing.assert_array_equal(series.data, truth())
    assert series.meta["frame_times_source"] == "--frame-interval"


def test_frame_interval_overrides_header_times(tmp_path: Path) -> None:
    write_series(tmp_path)
    series = load_dicom_series(tmp_path, frame_interval=2.0)
    np.testing.assert_allclose(series.times, np.arange(N_FRAMES) * 2.0)


def test_mr_series_reads_echo_time_in_seconds(tmp_path: Path) -> None:
    write_series(tmp_path, modality="MR", EchoTime=30.0)
    series = load_dicom_series(tmp_path)
    assert series.modality == "MR"
    assert series.echo_time == pytest.approx(0.030)
    assert load_dicom_series(tmp_path, echo_time=0.045).echo_time == pytest.approx(0.045)
    assert load_dicom_series(tmp_path, modality="CT").echo_time is None


def write_enhanced(path: Path) -> None:
    """One enhanced CT file: all frames in shuffled order, per-frame position, time and scaling."""
    ds = base_dataset(ENHANCED_CT, "CT", generate_uid(), SeriesDescription="CTP enhanced")
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = list(PIXEL_SPACING)
    measures.SliceThickness = SLICE_SPACING
    orientation = Dataset()
    orientation.ImageOrientationPatient = AXIAL
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    jobs = [(k, t) for k in range(N_SLICES) for t in range(N_FRAMES)]
    random.Random(1).shuffle(jobs)
    per_frame, pixels = [], []
    for k, t in jobs:
        stored, slope = stored_frame(k, t)
        pixels.append(stored)
        position, content, scaling, frame = Dataset(), Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [*ORIGIN[:2], ORIGIN[2] + SLICE_SPACING * k]
        content.FrameAcquisitionDateTime = "20240101" + tm(12 * 3600 + BASE_TIMES[t] + SLICE_DELAY * k)
        content.TemporalPositionIndex = t + 1
        scaling.RescaleSlope, scaling.RescaleIntercept, scaling.RescaleType = slope, -1024, "HU"
        frame.PlanePositionSequence = [position]
        frame.FrameContentSequence = [content]
        frame.PixelValueTransformationSequence = [scaling]
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(jobs)
    ds.PixelData = np.stack(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_file(tmp_path: Path) -> None:
    path = tmp_path / "enhanced.dcm"
    write_enhanced(path)
    for source in (path, tmp_path):
        series = load_dicom_series(source)
        np.testing.assert_array_equal(series.data, truth())
        np.testing.assert_allclose(series.times, expected_times(), atol=1e-5)
        check_geometry(series)
        assert series.meta["frame_times_source"] == "FrameAcquisitionDateTime"
        assert series.meta["multi_frame"] and series.meta["n_files"] == 1
        assert FAKE_NAME not in str(series.meta) and FAKE_ID not in str(series.meta)


def test_time_parsers() -> None:
    assert parse_tm("075034.818247") == pytest.approx(7 * 3600 + 50 * 60 + 34.818247)
    assert parse_tm("07:50:34.5") == pytest.approx(28234.5)
    assert parse_tm("0750") == 28200.0
    assert parse_tm("") is None and parse_tm("25xx") is None and parse_tm("256000") is None
    assert parse_dt("20240102000001.5") - parse_dt("20240101235959") == pytest.approx(2.5)
    assert parse_dt("20240101120000+0100") == parse_dt("20240101120000")


# ---------------------------------------------------------------- bad input


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, "empty folder")


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here\n")
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, "no DICOM files")


def test_truncated_file_in_series(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    victim = paths[4]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, victim, "truncated")


def test_file_cut_in_its_header(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    paths[0].write_bytes(paths[0].read_bytes()[:300])
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, paths[0])


def test_slices_with_different_frame_counts(tmp_path: Path) -> None:
    series_uid = generate_uid()
    write_series(tmp_path, slices=[0, 2], series_uid=series_uid)
    write_series(tmp_path, slices=[1], frames=range(N_FRAMES - 1), series_uid=series_uid, seed=3)
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, f"slice at 35 mm has {N_FRAMES - 1} frames, others {N_FRAMES}")


def test_3d_series_is_rejected(tmp_path: Path) -> None:
    write_series(tmp_path, frames=[0])
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, "expected a 4D perfusion series, found 1 frame per slice")


def test_two_series_choose_the_4d_one_with_a_warning(tmp_path: Path) -> None:
    write_series(tmp_path)  # 18 images, 6 frames per slice
    localizer_uid = generate_uid()
    write_series(  # 20 images, 1 frame per slice: larger, but 3D
        tmp_path / "loc", frames=[2], slices=range(20), series_uid=localizer_uid, SeriesDescription="LOC"
    )
    with pytest.warns(UserWarning, match="2 series") as record:
        series = load_dicom_series(tmp_path)
    message = str(record[0].message)
    assert "CTP synthetic" in message and "18 images" in message and "\n" not in message
    assert FAKE_NAME not in message and FAKE_ID not in message
    np.testing.assert_array_equal(series.data, truth())
    ctp_uid = str(pydicom.dcmread(next(tmp_path.glob("a/*")), stop_before_pixels=True).SeriesInstanceUID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a chosen series needs no warning
        np.testing.assert_array_equal(load_dicom_series(tmp_path, series_uid=ctp_uid).data, truth())
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path, series_uid=localizer_uid)
    assert_input_error(excinfo, tmp_path, "1 frame per slice")


def test_different_image_sizes(tmp_path: Path) -> None:
    write_series(tmp_path)
    series_uid = str(pydicom.dcmread(next(p for p in tmp_path.rglob("*") if p.is_file())).SeriesInstanceUID)
    ds = base_dataset(CT_IMAGE, "CT", series_uid, Rows=8, Columns=8, ImageOrientationPatient=AXIAL)
    ds.ImagePositionPatient = list(ORIGIN)
    ds.AcquisitionTime = tm(12 * 3600 + 20)
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    odd = tmp_path / "odd.dcm"
    ds.save_as(odd, enforce_file_format=True)
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, odd, "8×8", f"others {ROWS}×{COLS}")


def test_same_image_twice(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    copy = tmp_path / "copy-of-an-image"
    copy.write_bytes(paths[3].read_bytes())
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, "the same image (SOPInstanceUID) twice", copy.name)


def test_repeated_acquisition_time_falls_back_to_the_next_source(tmp_path: Path) -> None:
    write_series(tmp_path, timing="TriggerTime", AcquisitionTime="120000")  # one time for all images
    series = load_dicom_series(tmp_path)
    assert series.meta["frame_times_source"] == "TriggerTime"
    np.testing.assert_allclose(series.times, expected_times(), atol=1e-6)


def test_identical_times_are_duplicates(tmp_path: Path) -> None:
    write_series(tmp_path, slices=[0], TriggerTime=None)
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        ds = pydicom.dcmread(path)
        ds.AcquisitionTime = "120000"  # one time for the whole series, and nothing else to order by
        del ds.InstanceNumber
        ds.save_as(path)
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, "duplicate frames", "AcquisitionTime")


def test_missing_position_in_some_images(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    ds = pydicom.dcmread(paths[0])
    del ds.ImagePositionPatient
    ds.save_as(paths[0])
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, paths[0], "ImagePositionPatient missing")


def test_series_without_position_and_orientation_uses_slice_location(tmp_path: Path) -> None:
    write_series(tmp_path, ImagePositionPatient=None, ImageOrientationPatient=None)
    with pytest.warns(UserWarning, match="ImagePositionPatient missing"):
        series = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(series.data, truth())
    assert "axial orientation assumed" in " ".join(series.meta["geometry_notes"])
    expected = np.diag([-PIXEL_SPACING[1], -PIXEL_SPACING[0], SLICE_SPACING, 1.0])
    expected[2, 3] = ORIGIN[2]  # SliceLocation of slice 0; the in-plane origin is unknown
    np.testing.assert_allclose(series.affine, expected, atol=1e-9)


def test_nan_slope(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    ds = pydicom.dcmread(paths[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the non-finite DS value
        ds.RescaleSlope = "NaN"
        ds.save_as(paths[0])
        with pytest.raises(PerfnetInputError) as excinfo:
            load_dicom_series(tmp_path)
    assert_input_error(excinfo, paths[0], "NaN")


def test_unsupported_modality(tmp_path: Path) -> None:
    write_series(tmp_path, modality="PT")
    with pytest.raises(PerfnetInputError) as excinfo:
        load_dicom_series(tmp_path)
    assert_input_error(excinfo, tmp_path, "'PT'", "not CT or MR")
    assert load_dicom_series(tmp_path, modality="CT").modality == "CT"
