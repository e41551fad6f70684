"""Synthetic DICOM perfusion series written with pydicom, for the reader and CLI tests."""

from __future__ import annotations

import random
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
ROWS, COLS, N_SLICES, N_FRAMES = 4, 5, 3, 6
PIXEL_SPACING = (0.8, 0.6)  # between rows, between columns: unequal to catch swaps
SLICE_SPACING = 5.0
ORIGIN = np.array([-120.0, -100.0, 30.0])  # LPS position of slice 0, pixel (0, 0)
BASE_TIMES = np.array([0.0, 1.0, 2.5, 4.0, 7.0, 10.5])  # non-uniform, s
SLICE_DELAY = 0.1  # slice k is acquired k × 0.1 s after slice 0
SLOPES = (0.5, 0.25, 1.0)  # per frame t: slopes[t % 3], intercept -1024
FAKE_NAME, FAKE_ID = "DOE^JOHN", "SECRET123"


def truth() -> np.ndarray:
    """(X, Y, Z, T) values 1000 k + 100 t + 10 j + i: every voxel says where and when it is."""
    i, j, k, t = np.indices((COLS, ROWS, N_SLICES, N_FRAMES))
    return (1000 * k + 100 * t + 10 * j + i).astype(np.float32)


def expected_times() -> np.ndarray:
    return BASE_TIMES - BASE_TIMES[0]  # the per-slice delays average out of the differences


def tm(seconds: float, colons: bool = False) -> str:
    seconds %= 86400
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    sep = ":" if colons else ""
    return f"{int(h):02d}{sep}{int(m):02d}{sep}{s:09.6f}"


def base_dataset(sop_class: str, modality: str, series_uid: str, **tags: Any) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    setattr(ds, "Patient" + "Name", FAKE_NAME)  # the reader must never show these
    setattr(ds, "Patient" + "ID", FAKE_ID)
    ds.Modality = modality
    ds.Manufacturer = "perfnet test scanner"
    ds.SeriesDescription = tags.pop("SeriesDescription", "CTP synthetic")
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = tags.pop("Rows", ROWS), tags.pop("Columns", COLS)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for keyword, value in tags.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def stored_frame(k: int, t: int) -> tuple[np.ndarray, float]:
    """Stored uint16 (rows, cols) and slope of slice k, frame t (value = stored × slope − 1024)."""
    slope = SLOPES[t % 3]
    j, i = np.indices((ROWS, COLS))
    values = 1000 * k + 100 * t + 10 * j + i  # = truth()[:, :, k, t].T
    return np.rint((values + 1024) / slope).astype(np.uint16), slope


def write_series(
    folder: Path,
    timing: str = "AcquisitionTime",
    modality: str = "CT",
    slices: range | list[int] = range(N_SLICES),
    frames: range | list[int] = range(N_FRAMES),
    series_uid: str | None = None,
    seed: int = 0,
    **extra: Any,
) -> list[Path]:
    """Write a classic single-frame series with shuffled random names (half in a sub-folder)."""
    rng = random.Random(seed)
    series_uid = series_uid or generate_uid()
    jobs = [(k, t) for k in slices for t in frames]
    rng.shuffle(jobs)
    instance_numbers = rng.sample(range(1, 10 * len(jobs) + 1), len(jobs))
    paths = []
    for n, (k, t) in enumerate(jobs):
        stored, slope = stored_frame(k, t)
        seconds = 12 * 3600 + BASE_TIMES[t] + SLICE_DELAY * k
        time_tags: dict[str, Any] = {
            "AcquisitionTime": {"AcquisitionTime": tm(seconds)},
            "ContentTime": {"ContentTime": tm(86398.0 + BASE_TIMES[t] + SLICE_DELAY * k, colons=True)},
            "TriggerTime": {"TriggerTime": round(1000 * (BASE_TIMES[t] + SLICE_DELAY * k), 3)},
            "TemporalPositionIdentifier": {"TemporalPositionIdentifier": t + 1},
        }[timing]
        tags = {
            "InstanceNumber": instance_numbers[n],
            "ImagePositionPatient": [*ORIGIN[:2], ORIGIN[2] + SLICE_SPACING * k],
            "ImageOrientationPatient": AXIAL,
            "SliceLocation": ORIGIN[2] + SLICE_SPACING * k,
            "PixelSpacing": list(PIXEL_SPACING),
            "SliceThickness": SLICE_SPACING,
            "RescaleSlope": slope,
            "RescaleIntercept": -1024,
            **time_tags,
            **extra,
        }
        sub = folder / ("a" if n % 2 else "b" / Path("c"))
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / uuid.UUID(int=rng.getrandbits(128)).hex
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about TM values with colons
            ds = base_dataset(CT_IMAGE if modality == "CT" else MR_IMAGE, modality, series_uid, **tags)
            ds.PixelData = stored.tobytes()
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_volume_series(
    folder: Path,
    data: np.ndarray,
    affine: np.ndarray,
    times: np.ndarray,
    modality: str = "CT",
    description: str = "CTP synthetic",
    prefix: str = "im",
) -> list[Path]:
    """A 4D array (X, Y, Z, T) on a NIfTI (RAS) affine as a classic single-frame DICOM series
    (one file per slice and frame, AcquisitionTime per frame), with the fake patient identity."""
    nx, ny, nz, nt = data.shape
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    orientation = [*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1])]
    uid = generate_uid()
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(nz):
        origin = lps @ np.array([0, 0, k, 1.0])
        for t in range(nt):
            seconds = 36000.0 + float(times[t])
            tags = {
                "Rows": ny,
                "Columns": nx,
                "ImagePositionPatient": [float(v) for v in origin[:3]],
                "ImageOrientationPatient": [float(v) for v in orientation],
                "PixelSpacing": [float(spacing[1]), float(spacing[0])],
                "SliceThickness": float(spacing[2]),
                "RescaleSlope": 1.0,
                "RescaleIntercept": 0.0,
                "AcquisitionTime": tm(seconds),
                "InstanceNumber": t * nz + k + 1,
                "FrameOfReferenceUID": "1.2.3.4.5",
                "SeriesDescription": description,
            }
            ds = base_dataset(CT_IMAGE if modality == "CT" else MR_IMAGE, modality, uid, **tags)
            ds.PixelRepresentation = 1
            ds.PixelData = np.rint(data[:, :, k, t].T).astype(np.int16).tobytes()
            path = folder / f"{prefix}{k:02d}_{t:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
