"""Reading DICOM files: headers, pixels with rescaling, and the 2D images a file holds.

A classic file holds one image; an enhanced multi-frame file holds one per frame, described by its
per-frame and shared functional groups. Compressed transfer syntaxes (the JPEG lossless of CT
scanners) are decoded by pydicom through pylibjpeg. Patient-identifying attributes are never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from perfnet.errors import PerfnetInputError
from perfnet.io.dicom_time import INDEX_SOURCES, TIME_SOURCES, parse_time

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CLASSIC_SOURCES = tuple(s for s in TIME_SOURCES + INDEX_SOURCES if not s.startswith("Frame"))


@dataclass
class DicomImage:
    """One 2D image: a single-frame file, or frame ``frame`` of a multi-frame file."""

    path: Path
    frame: int | None
    rows: int
    cols: int
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slice_hint: float | None  # SpacingBetweenSlices or SliceThickness (mm)
    slope: float
    intercept: float
    sop_uid: str
    slice_location: float | None
    echo_time_ms: float | None
    times: dict[str, float] = field(default_factory=dict)  # time source → value (parse_time)

    @property
    def name(self) -> str:
        """The file name, and the frame number in a multi-frame file (for messages)."""
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"


def short_error(exc: BaseException) -> str:
    """First line of an exception's message, for one-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def one_line(text: Any) -> str:
    """A header string with whitespace and line breaks collapsed."""
    return " ".join(str(text if text is not None else "").split())


def _float(value: Any, default: float | None = None) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _rescale(value: Any, default: float) -> float:
    """RescaleSlope / RescaleIntercept: default when absent, NaN when unreadable (then an error)."""
    if value is None or not str(value).strip():
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _raw(ds: Dataset, keyword: str) -> Any:
    """An element's value as written, without pydicom's conversion (old files write TM values
    with colons, which pydicom would warn about)."""
    element = ds.get_item(keyword) if keyword in ds else None
    value = None if element is None else element.value
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _get(ds: Dataset, keyword: str) -> Any:
    """An element's value, or its text as written when pydicom cannot convert it."""
    try:
        return ds.get(keyword)
    except (ValueError, TypeError, OverflowError):
        return _raw(ds, keyword)


def _vector(value: Any, length: int) -> np.ndarray | None:
    if isinstance(value, str):
        value = value.split("\\")
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (length,) and np.all(np.isfinite(array)) else None


def read_header(path: Path) -> Dataset | None:
    """The header (no pixels) of a DICOM file, None for a non-DICOM file; errors for broken ones."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise PerfnetInputError(path, f"cannot read file ({short_error(exc)})") from None
    has_preamble = head[128:132] == b"DICM"
    # Files without the preamble (old exports) start with group 0x0002 or 0x0008, little endian.
    if not has_preamble and head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_preamble)
    except Exception as exc:  # pydicom raises many types for broken files
        if not has_preamble:
            return None
        raise PerfnetInputError(path, f"unreadable or truncated DICOM file ({short_error(exc)})") from None
    if not has_preamble and "SOPClassUID" not in ds:
        return None
    return ds


def read_pixels(path: Path) -> tuple[np.ndarray, Dataset]:
    """Stored pixel values (frames first for multi-frame files) and the dataset without them."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise PerfnetInputError(path, f"unreadable or truncated DICOM file ({short_error(exc)})") from None
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise PerfnetInputError(path, "DICOM file has no pixel data")
    if int(_get(ds, "SamplesPerPixel") or 1) != 1:
        raise PerfnetInputError(
            path, f"expected grayscale images, found SamplesPerPixel {ds.SamplesPerPixel}"
        )
    try:
        pixels = ds.pixel_array  # compressed syntaxes go through pylibjpeg (or gdcm) plugins
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise PerfnetInputError(path, f"cannot decode pixel data ({name}: {short_error(exc)})") from None
    for tag in _PIXEL_TAGS:
        if tag in ds:
            del ds[tag]
    return np.asarray(pixels), ds


def scale_image(path: Path, stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values × slope + intercept as float32 (computed in float64); errors on NaN/inf."""
    image = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    if not np.isfinite(image).all():
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise PerfnetInputError(
            path, f"{bad} NaN or infinite values after rescaling (slope {slope:g}, intercept {intercept:g})"
        )
    return image


def read_dicom_image(path: str | Path) -> tuple[np.ndarray, Dataset]:
    """Decode one single-frame DICOM image.

    Returns the image (rows, columns) as float32 in scanner units, i.e. stored value ×
    RescaleSlope + RescaleIntercept, and the dataset with its pixel data removed (the full header,
    patient attributes included: never log or print it whole).
    """
    path = Path(path)
    if not path.is_file():
        raise PerfnetInputError(path, "no such file")
    if read_header(path) is None:
        raise PerfnetInputError(path, "not a DICOM file")
    stored, ds = read_pixels(path)
    if stored.ndim != 2:
        raise PerfnetInputError(path, f"multi-frame file ({stored.shape[0]} frames): use load_dicom_series")
    slope, intercept = _rescale(_get(ds, "RescaleSlope"), 1.0), _rescale(_get(ds, "RescaleIntercept"), 0.0)
    return scale_image(path, stored, slope, intercept), ds


def _group(frame: Dataset, shared: Dataset, name: str) -> Dataset:
    """First item of a functional group macro, per-frame before shared (empty when absent)."""
    for holder in (frame, shared):
        sequence = holder.get(name)
        if sequence:
            return sequence[0]
    return Dataset()


def images_from_header(path: Path, ds: Dataset) -> list[DicomImage]:
    """The 2D images a file holds, with geometry, scaling and time values."""
    try:
        return _images(path, ds)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise PerfnetInputError(path, f"unreadable DICOM header ({short_error(exc)})") from None


def _images(path: Path, ds: Dataset) -> list[DicomImage]:
    common = {
        "path": path,
        "rows": int(ds.Rows),
        "cols": int(ds.Columns),
        "sop_uid": str(ds.get("SOPInstanceUID", "")),
        "slice_hint": _float(_get(ds, "SpacingBetweenSlices")) or _float(_get(ds, "SliceThickness")),
    }
    slope, intercept = _rescale(_get(ds, "RescaleSlope"), 1.0), _rescale(_get(ds, "RescaleIntercept"), 0.0)
    n_frames = int(_float(_get(ds, "NumberOfFrames"), 1) or 1)
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if n_frames == 1 and not per_frame:
        spacing = _vector(_get(ds, "PixelSpacing"), 2)
        image = DicomImage(
            **common,
            frame=None,
            ipp=_vector(_get(ds, "ImagePositionPatient"), 3),
            iop=_vector(_get(ds, "ImageOrientationPatient"), 6),
            pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
            slope=slope,
            intercept=intercept,
            slice_location=_float(_get(ds, "SliceLocation")),
            echo_time_ms=_float(_get(ds, "EchoTime")),
        )
        for source in _CLASSIC_SOURCES:
            value = parse_time(source, _raw(ds, source))
            if value is not None:
                image.times[source] = value
        return [image]
    if not per_frame or len(per_frame) != n_frames:
        raise PerfnetInputError(
            path, f"multi-frame file ({n_frames} frames) without per-frame functional groups"
        )
    shared_groups = _get(ds, "SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else Dataset()
    images = []
    for index, frame in enumerate(per_frame):
        measures = _group(frame, shared, "PixelMeasuresSequence")
        scaling = _group(frame, shared, "PixelValueTransformationSequence")
        spacing = _vector(_get(measures, "PixelSpacing"), 2)
        hint = _float(_get(measures, "SpacingBetweenSlices")) or _float(_get(measures, "SliceThickness"))
        image = DicomImage(
            **{**common, "slice_hint": hint or common["slice_hint"]},
            frame=index,
            ipp=_vector(_get(_group(frame, shared, "PlanePositionSequence"), "ImagePositionPatient"), 3),
            iop=_vector(
                _get(_group(frame, shared, "PlaneOrientationSequence"), "ImageOrientationPatient"), 6
            ),
            pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
            slope=_rescale(_get(scaling, "RescaleSlope"), slope),
            intercept=_rescale(_get(scaling, "RescaleIntercept"), intercept),
            slice_location=None,
            echo_time_ms=_float(_get(_group(frame, shared, "MREchoSequence"), "EffectiveEchoTime")),
        )
        content = _group(frame, shared, "FrameContentSequence")
        for source in ("FrameAcquisitionDateTime", "FrameReferenceDateTime", "TemporalPositionIndex"):
            value = parse_time(source, _raw(content, source))
            if value is not None:
                image.times[source] = value
        image.times["FrameNumber"] = float(index)
        images.append(image)
    return images


def _sop_class_name(ds: Dataset) -> str:
    """Name of the SOP class, from the dataset or else the file meta (for a file cut short)."""
    file_meta = getattr(ds, "file_meta", None) or Dataset()
    uid = _get(ds, "SOPClassUID") or _get(file_meta, "MediaStorageSOPClassUID")
    return str(getattr(uid, "name", ""))


def collect_headers(path: Path) -> tuple[list[tuple[Path, Dataset]], int]:
    """DICOM image headers under a folder (or of one file) and the number of files skipped."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise PerfnetInputError(path, "empty folder: no files")
    headers, n_dicom = [], 0
    for file in files:
        if file.name.upper() == "DICOMDIR":
            continue
        ds = read_header(file)
        if ds is None:
            continue
        n_dicom += 1
        if "Rows" in ds and "Columns" in ds:
            headers.append((file, ds))
        elif "Image Storage" in _sop_class_name(ds):
            raise PerfnetInputError(file, "truncated or incomplete DICOM image (no Rows/Columns)")
    if path.is_file() and not n_dicom:
        raise PerfnetInputError(path, "not a DICOM file")
    if not n_dicom:
        raise PerfnetInputError(path, f"no DICOM files among {len(files)} files")
    if not headers:
        raise PerfnetInputError(path, f"no DICOM images ({n_dicom} DICOM files without pixel data)")
    return headers, len(files) - len(headers)
