"""DICOM perfusion series → :class:`PerfusionSeries`.

A series is a folder (searched recursively, any file names and order) of single-frame images, or
one enhanced multi-frame file. Images are grouped into slices by ImagePositionPatient projected on
the slice normal and into frames by time (sources and their order in :mod:`perfnet.io.dicom_time`);
rescale slope/intercept are applied per image. Compressed transfer syntaxes (JPEG lossless of CT
scanners) are decoded by pydicom through pylibjpeg.

Fallbacks, recorded in ``meta["geometry_notes"]``: without ImageOrientationPatient the images are
taken as axial; without ImagePositionPatient slices are placed by SliceLocation along the normal
with an unknown in-plane origin, and without SliceLocation too all images are one slice.
Patient-identifying attributes are never read.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from perfnet.errors import PerfnetInputError
from perfnet.io.dicom_image import (
    DicomImage,
    collect_headers,
    images_from_header,
    one_line,
    read_dicom_image,
    read_pixels,
    scale_image,
)
from perfnet.io.dicom_time import order_frames
from perfnet.io.types import PerfusionSeries

__all__ = ["load_dicom_series", "load_dicom_volume", "read_dicom_image"]

_AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _cluster_positions(d: np.ndarray) -> np.ndarray:
    """Slice labels 0..Z-1 (ascending along the normal) for positions d (mm); positions closer
    than a tenth of the slice spacing are one slice."""
    order = np.argsort(d, kind="stable")
    gaps = np.diff(d[order])
    labels = np.zeros(d.size, dtype=int)
    if gaps.size == 0 or gaps.max() <= 0.01:
        return labels
    tolerance = 0.1 * float(gaps.max())  # first guess, refined with the median slice spacing
    for _ in range(2):
        sorted_labels = np.concatenate([[0], np.cumsum(gaps > tolerance)])
        centers = np.bincount(sorted_labels, weights=d[order]) / np.bincount(sorted_labels)
        if centers.size > 1:
            tolerance = max(0.1 * float(np.median(np.diff(centers))), 0.01)
    labels[order] = sorted_labels
    return labels


def _geometry(
    source: Path, images: list[DicomImage], notes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orientation (6,), unit normal (3,) and positions (N, 3) in LPS mm; fallbacks noted."""
    missing = [im for im in images if im.iop is None]
    if len(missing) == len(images):
        iop = _AXIAL
        notes.append("ImageOrientationPatient missing: axial orientation assumed")
    elif missing:
        raise PerfnetInputError(missing[0].path, "ImageOrientationPatient missing (other images have it)")
    else:
        orientations = np.stack([im.iop for im in images])  # type: ignore[misc]
        odd = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > 1e-3)
        if odd.size:
            raise PerfnetInputError(images[odd[0]].path, f"orientation differs from {images[0].path.name}")
        iop = orientations[0]
    normal = np.cross(iop[:3], iop[3:])
    if not np.linalg.norm(normal) > 0.5:
        raise PerfnetInputError(images[0].path, f"invalid ImageOrientationPatient {iop.tolist()}")
    normal = normal / np.linalg.norm(normal)
    missing = [im for im in images if im.ipp is None]
    if len(missing) == len(images):
        if all(im.slice_location is not None for im in images):
            notes.append(
                "ImagePositionPatient missing: slices placed by SliceLocation, in-plane origin unknown"
            )
            positions = np.array([im.slice_location for im in images])[:, None] * normal
        else:
            notes.append("ImagePositionPatient and SliceLocation missing: all images taken as one slice")
            positions = np.zeros((len(images), 3))
    elif missing:
        raise PerfnetInputError(missing[0].path, "ImagePositionPatient missing (other images have it)")
    else:
        positions = np.stack([im.ipp for im in images])  # type: ignore[misc]
    return iop, normal, positions


def _frames_per_slice(images: list[DicomImage]) -> int:
    """Largest number of images at one slice position (series selection; 0 when unknown)."""
    try:
        _, normal, positions = _geometry(Path(), images, [])
    except PerfnetInputError:
        return 0
    return int(np.bincount(_cluster_positions(positions @ normal)).max())


def _by_series(headers: list[tuple[Path, Dataset]]) -> dict[str, list[tuple[Path, Dataset]]]:
    """The (file, header) pairs grouped by SeriesInstanceUID, in the order first seen."""
    by_uid: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for file, ds in headers:
        by_uid[str(ds.get("SeriesInstanceUID", ""))].append((file, ds))
    return by_uid


def _choose_series(
    path: Path, headers: list[tuple[Path, Dataset]], series_uid: str | None
) -> list[DicomImage]:
    by_uid = _by_series(headers)
    if series_uid is not None:
        if series_uid not in by_uid:
            raise PerfnetInputError(
                path, f"no series with SeriesInstanceUID {series_uid} ({len(by_uid)} found)"
            )
        chosen = by_uid[series_uid]
        return [im for file, ds in chosen for im in images_from_header(file, ds)]
    if len(by_uid) == 1:
        return [im for file, ds in headers for im in images_from_header(file, ds)]
    candidates = []
    for members in by_uid.values():
        try:
            images = [im for file, ds in members for im in images_from_header(file, ds)]
        except PerfnetInputError:
            continue
        description = one_line(members[0][1].get("SeriesDescription", "")) or "(no description)"
        candidates.append((_frames_per_slice(images) > 1, len(images), description, images))
    if not candidates:
        raise PerfnetInputError(path, f"none of the {len(by_uid)} series holds readable images")
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    is_4d, count, description, images = candidates[0]
    others = ", ".join(f"{c[2]!r} ({c[1]} images)" for c in candidates[1:])
    warnings.warn(
        f"{path}: {len(by_uid)} series found; using {description!r} ({count} images"
        f"{', 4D' if is_4d else ''}), ignoring {others}; pass series_uid to choose another",
        UserWarning,
        stacklevel=3,
    )
    return images


def _lps_affine(
    images: list[DicomImage],
    iop: np.ndarray,
    normal: np.ndarray,
    positions: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    origin: np.ndarray,
    notes: list[str],
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The voxel → LPS affine of images grouped into slices (``labels``, slice ``centers`` along the
    normal), its first voxel at ``origin``; slice and pixel spacing; irregularities noted."""
    n_slices = centers.size
    if n_slices > 1:
        steps = np.diff(centers)
        slice_spacing = float(np.median(steps))
        if np.ptp(steps) > 0.1 * slice_spacing:
            notes.append(f"irregular slice spacing {steps.min():.3g}..{steps.max():.3g} mm")
        first_pos = positions[labels == 0].mean(axis=0)
        step = (positions[labels == n_slices - 1].mean(axis=0) - first_pos) / (n_slices - 1)
        if np.linalg.norm(step - normal * (step @ normal)) > 0.1 * slice_spacing:
            notes.append("slices are sheared (gantry tilt?); the affine ignores the shear")
    else:
        slice_spacing = next((im.slice_hint for im in images if im.slice_hint), None) or 1.0
    pixel_spacing = next((im.pixel_spacing for im in images if im.pixel_spacing), None)
    if pixel_spacing is None:
        notes.append("PixelSpacing missing: 1 mm assumed")
        pixel_spacing = (1.0, 1.0)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * pixel_spacing[1]  # along a row: column index i, spacing between columns
    lps[:3, 1] = iop[3:] * pixel_spacing[0]  # down a column: row index j, spacing between rows
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = origin
    return lps, slice_spacing, pixel_spacing


def _label(ds: Dataset) -> str:
    """A series' SeriesDescription and ImageType values, one line (what a series is named by)."""
    kinds = ds.get("ImageType") or []
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    return " ".join([one_line(ds.get("SeriesDescription", "")), *map(str, kinds)])


def _named(by_uid: dict[str, list[tuple[Path, Dataset]]], name: str) -> list[list[tuple[Path, Dataset]]]:
    """The series whose SeriesDescription or ImageType holds ``name`` (any case)."""
    return [m for m in by_uid.values() if name.lower() in _label(m[0][1]).lower()]


def named_series_count(path: str | Path, name: str = "ADC") -> int:
    """How many series in a DICOM folder are named ``name`` (any case) in their SeriesDescription
    or ImageType, from the headers alone (``perfnet cohort --find-adc`` on DICOM studies)."""
    headers, _ = collect_headers(Path(path))
    return len(_named(_by_series(headers), name))


def _named_series(path: Path, headers: list[tuple[Path, Dataset]], name: str) -> list[DicomImage]:
    """The images of the one series whose SeriesDescription or ImageType holds ``name`` (any case),
    or of the only series; a one-line error when none or several do."""
    by_uid = _by_series(headers)
    if len(by_uid) == 1:
        chosen = next(iter(by_uid.values()))
    else:
        named = _named(by_uid, name)
        if len(named) != 1:
            found = ", ".join(
                repr(one_line(m[0][1].get("SeriesDescription", "")) or "?") for m in by_uid.values()
            )
            how = "none is" if not named else f"{len(named)} are"
            raise PerfnetInputError(path, f"{len(by_uid)} series ({found}); {how} named {name}")
        chosen = named[0]
    return [im for file, ds in chosen for im in images_from_header(file, ds)]


def load_dicom_volume(path: str | Path, name: str = "ADC") -> tuple[np.ndarray, np.ndarray]:
    """A 3D map (an ADC map) from a DICOM folder or file: (data (X, Y, Z) float32 with rescale
    applied, RAS affine). In a folder of several series, the one whose SeriesDescription or
    ImageType holds ``name``; one image per slice position (a DWI with several b-values or a
    series with several frames is refused)."""
    path = Path(path)
    if not path.exists():
        raise PerfnetInputError(path, "no such file or folder")
    headers, _ = collect_headers(path)
    images = _named_series(path, headers, name)
    sizes = Counter((im.rows, im.cols) for im in images)
    if len(sizes) > 1:
        raise PerfnetInputError(path, f"images of several sizes {sorted(sizes)}")
    rows, cols = next(iter(sizes))
    notes: list[str] = []
    iop, normal, positions = _geometry(path, images, notes)
    d = positions @ normal
    labels = _cluster_positions(d)
    counts = np.bincount(labels)
    if counts.max() > 1:
        raise PerfnetInputError(
            path, f"{counts.max()} images at one slice position: not one 3D map (several b-values or frames?)"
        )
    order = np.argsort(d)
    centers = d[order]
    data = np.empty((cols, rows, centers.size), dtype=np.float32)
    for index, im in enumerate(images):
        stored, _ = read_pixels(im.path)
        frame = (stored[None] if stored.ndim == 2 else stored)[im.frame or 0]
        if frame.shape != (rows, cols):
            raise PerfnetInputError(im.path, f"pixel data are {frame.shape}, header says {rows}×{cols}")
        data[:, :, labels[index]] = scale_image(im.path, frame, im.slope, im.intercept).T
    lps, _, _ = _lps_affine(images, iop, normal, positions, labels, centers, positions[order[0]], notes)
    if notes:
        warnings.warn(f"{path}: {'; '.join(notes)}", UserWarning, stacklevel=2)
    return data, _LPS_TO_RAS @ lps


def load_dicom_series(
    path: str | Path,
    modality: str | None = None,
    frame_interval: float | None = None,
    echo_time: float | None = None,
    series_uid: str | None = None,
) -> PerfusionSeries:
    """Assemble a 4D perfusion series from a DICOM folder or one enhanced multi-frame file.

    Args:
        path: folder holding the series (searched recursively), or a multi-frame DICOM file.
        modality: "CT" / "MR", overriding the DICOM Modality.
        frame_interval: uniform frame interval in s, overriding the header times.
        echo_time: MR echo time in s, overriding EchoTime.
        series_uid: SeriesInstanceUID to load when the folder holds several series (otherwise the
            largest series with more than one frame per slice is taken, with a warning).

    The data are (X, Y, Z, T) float32 with ``data[i, j, k, t]`` = pixel (row j, column i) of slice k
    (ascending along the slice normal) at frame t; times are per-frame means over slices.
    """
    path = Path(path)
    if not path.exists():
        raise PerfnetInputError(path, "no such file or folder")
    if frame_interval is not None and not frame_interval > 0:
        raise PerfnetInputError("--frame-interval", f"must be positive, got {frame_interval}")
    headers, n_skipped = collect_headers(path)
    images = _choose_series(path, headers, series_uid)
    seen: dict[tuple[str, int | None], Path] = {}
    for im in images:
        key = (im.sop_uid, im.frame)
        if im.sop_uid and key in seen and seen[key] != im.path:
            raise PerfnetInputError(
                path, f"the same image (SOPInstanceUID) twice: {seen[key].name}, {im.path.name}"
            )
        seen[key] = im.path
    sizes = Counter((im.rows, im.cols) for im in images)
    (rows, cols), _ = sizes.most_common(1)[0]
    for im in images:
        if (im.rows, im.cols) != (rows, cols):
            raise PerfnetInputError(im.path, f"image is {im.rows}×{im.cols} pixels, others {rows}×{cols}")

    notes: list[str] = []
    iop, normal, positions = _geometry(path, images, notes)
    d = positions @ normal
    labels = _cluster_positions(d)
    n_slices = int(labels.max()) + 1
    centers = np.bincount(labels, weights=d) / np.bincount(labels)
    counts = np.bincount(labels)
    if counts.max() == 1:
        raise PerfnetInputError(
            path, f"expected a 4D perfusion series, found 1 frame per slice ({n_slices} slices)"
        )
    if counts.min() != counts.max():
        typical = Counter(counts.tolist()).most_common(1)[0][0]
        odd = int(np.flatnonzero(counts != typical)[0])
        raise PerfnetInputError(
            path, f"slice at {round(float(centers[odd]), 2):g} mm has {counts[odd]} frames, others {typical}"
        )
    order, times, times_source = order_frames(
        path, [im.times for im in images], [im.name for im in images], labels, frame_interval
    )

    data = np.empty((cols, rows, n_slices, order.shape[1]), dtype=np.float32)
    slots = {int(index): (k, t) for (k, t), index in np.ndenumerate(order)}
    by_file: dict[Path, list[int]] = defaultdict(list)
    for index, im in enumerate(images):
        by_file[im.path].append(index)
    transfer_syntaxes: set[str] = set()
    for file, members in by_file.items():
        stored, ds = read_pixels(file)
        stored = stored[None] if stored.ndim == 2 else stored
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        transfer_syntaxes.add(syntax.name if syntax is not None else "unknown")
        for index in members:
            im = images[index]
            frame = stored[im.frame or 0]
            if frame.shape != (rows, cols):
                raise PerfnetInputError(file, f"pixel data are {frame.shape}, header says {rows}×{cols}")
            k, t = slots[index]
            data[:, :, k, t] = scale_image(file, frame, im.slope, im.intercept).T

    lps, slice_spacing, pixel_spacing = _lps_affine(
        images, iop, normal, positions, labels, centers, positions[order[0, 0]], notes
    )
    if notes:
        warnings.warn(f"{path}: {'; '.join(notes)}", UserWarning, stacklevel=2)

    first = next(ds for file, ds in headers if file == images[0].path)
    chosen = one_line(modality if modality is not None else first.get("Modality", "")).upper()
    chosen = "MR" if chosen == "MRI" else chosen
    if chosen not in ("CT", "MR"):
        raise PerfnetInputError(path, f"modality {chosen or 'missing'!r} is not CT or MR: pass --modality")
    te = echo_time
    if te is None and chosen == "MR" and images[0].echo_time_ms:
        te = images[0].echo_time_ms / 1000.0  # DICOM EchoTime is in ms
    meta: dict[str, Any] = {
        "source": str(path),
        "format": "dicom",
        "frame_times_source": times_source,
        "series_description": one_line(first.get("SeriesDescription", "")),
        "manufacturer": one_line(first.get("Manufacturer", "")),
        "manufacturer_model": one_line(first.get("ManufacturerModelName", "")),
        "n_files": len(by_file),
        "n_images": len(images),
        "n_skipped_files": n_skipped,
        "multi_frame": any(im.frame is not None for im in images),
        "transfer_syntaxes": sorted(transfer_syntaxes),
        "pixel_spacing": [float(v) for v in pixel_spacing],
        "slice_spacing": slice_spacing,
        "geometry_notes": notes,
        # the frame-0 image of each slice: what DICOM outputs reference (never written out)
        "dicom_slice_files": [
            (str(images[int(order[k, 0])].path), images[int(order[k, 0])].frame) for k in range(n_slices)
        ],
    }
    return PerfusionSeries(
        data=data,
        times=times,
        affine=_LPS_TO_RAS @ lps,
        modality=chosen,
        echo_time=te if chosen == "MR" else None,
        meta=meta,
    )
