"""Studies in, maps out: NIfTI (+ JSON sidecar) and DICOM series; map writers; cohort layout."""

from __future__ import annotations

from pathlib import Path

from perfnet.errors import PerfnetInputError
from perfnet.io.nifti import (
    is_nifti,
    load_map,
    load_nifti_series,
    save_map,
    save_series_nifti,
    write_maps,
)
from perfnet.io.output import atomic_output_dir
from perfnet.io.types import PerfusionMaps, PerfusionSeries

__all__ = [
    "PerfusionMaps",
    "PerfusionSeries",
    "atomic_output_dir",
    "load_map",
    "load_nifti_series",
    "load_series",
    "save_map",
    "save_series_nifti",
    "write_maps",
]


def load_series(
    path: str | Path,
    modality: str | None = None,
    frame_interval: float | None = None,
    echo_time: float | None = None,
) -> PerfusionSeries:
    """Load a perfusion series from a NIfTI file or a DICOM folder (or one multi-frame DICOM file).

    ``modality``, ``frame_interval`` (s) and ``echo_time`` (s) override what the files say.
    """
    path = Path(path)
    if not path.exists():
        raise PerfnetInputError(path, "no such file or folder")
    if path.is_file() and is_nifti(path):
        return load_nifti_series(path, modality=modality, frame_interval=frame_interval, echo_time=echo_time)
    from perfnet.io.dicom import load_dicom_series  # pydicom is only imported when needed

    return load_dicom_series(path, modality=modality, frame_interval=frame_interval, echo_time=echo_time)
