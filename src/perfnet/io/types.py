"""The two core types every stage passes along: a 4D perfusion series and a set of maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perfnet import plausibility
from perfnet.constants import MODALITIES
from perfnet.errors import PerfnetInputError


def voxel_size_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm: the norms of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


@dataclass
class PerfusionSeries:
    """A 4D perfusion acquisition.

    Attributes:
        data: float32 array (X, Y, Z, T) in scanner units (CT: HU; MR: signal magnitude).
        times: frame times in s, shape (T,), from 0 at the first frame, strictly increasing,
            not necessarily uniform.
        affine: 4×4 voxel → world (NIfTI RAS, mm) matrix.
        modality: "CT" or "MR".
        echo_time: MR echo time TE in s (None when unknown or CT).
        meta: free-form provenance of the input (never patient identifiers).
    """

    data: np.ndarray
    times: np.ndarray
    affine: np.ndarray
    modality: str
    echo_time: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = self.meta.get("source")
        data = np.asarray(self.data)
        if data.ndim != 4:
            raise PerfnetInputError(
                source, f"expected a 4D series (X, Y, Z, T), got {data.ndim}D with shape {data.shape}"
            )
        if data.shape[3] < 2:
            raise PerfnetInputError(
                source, f"a perfusion series needs at least 2 frames, got {data.shape[3]}"
            )
        self.data = data.astype(np.float32, copy=False)
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        if times.shape[0] != data.shape[3]:
            raise PerfnetInputError(source, f"{times.shape[0]} frame times for {data.shape[3]} frames")
        if not np.all(np.isfinite(times)):
            raise PerfnetInputError(source, "frame times contain NaN or infinite values")
        if np.any(np.diff(times) <= 0):
            raise PerfnetInputError(source, "frame times are not strictly increasing")
        plausibility.check_frame_times(times, source)
        self.times = times - times[0]
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise PerfnetInputError(source, "affine must be a finite 4×4 matrix")
        plausibility.check_affine(affine, source)
        self.affine = affine
        modality = str(self.modality).upper()
        if modality not in MODALITIES:
            raise PerfnetInputError(source, f"modality must be CT or MR, got {self.modality!r}")
        self.modality = modality
        if not np.isfinite(self.data).all():
            bad = int(np.size(self.data) - np.count_nonzero(np.isfinite(self.data)))
            raise PerfnetInputError(source, f"data contain {bad} NaN or infinite values")
        if self.echo_time is not None:
            self.echo_time = plausibility.check("echo_time_s", self.echo_time, source, "echo time (s)")

    def with_data(self, data: np.ndarray, times: np.ndarray | None = None) -> PerfusionSeries:
        """The same study with other frames (motion-corrected, subsampled …): grid, modality,
        echo time and metadata are kept; ``times`` default to the current ones."""
        return PerfusionSeries(
            data,
            self.times if times is None else times,
            self.affine,
            self.modality,
            self.echo_time,
            dict(self.meta),
        )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.shape[:3]

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[3])

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return voxel_size_from_affine(self.affine)

    @property
    def frame_intervals(self) -> np.ndarray:
        return np.diff(self.times)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (what `perfnet info` prints)."""
        intervals = self.frame_intervals
        return {
            "source": self.meta.get("source"),
            "shape": list(self.shape),
            "frames": self.n_frames,
            "frame_times": [round(float(t), 4) for t in self.times],
            "frame_interval": {
                "min": round(float(intervals.min()), 4),
                "max": round(float(intervals.max()), 4),
                "uniform": bool(np.allclose(intervals, intervals[0], rtol=1e-3, atol=1e-3)),
            },
            "duration": round(float(self.times[-1]), 4),
            "modality": self.modality,
            "echo_time": self.echo_time,
            "voxel_size": [round(v, 4) for v in self.voxel_size],
            "frame_times_source": self.meta.get("frame_times_source"),
        }


@dataclass
class PerfusionMaps:
    """Named 3D maps on a series' grid.

    Attributes:
        maps: name → float32 (X, Y, Z) array; names from ``cbf cbv mtt ttp tmax`` and optional
            ``<name>_uncertainty``; units in :mod:`perfnet.constants`.
        affine: the series' 4×4 affine.
        brain_mask: bool (X, Y, Z).
        method: the method that produced the maps (``osvd``, ``boxnlr``, ``cnn`` …).
        provenance: settings, timings, QC flags and versions (written to provenance.json).
        masks: optional named bool masks (``core``, ``hypoperfused``, ``penumbra`` …).
    """

    maps: dict[str, np.ndarray]
    affine: np.ndarray
    brain_mask: np.ndarray
    method: str
    provenance: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.brain_mask = np.asarray(self.brain_mask, dtype=bool)
        shape = self.brain_mask.shape
        if len(shape) != 3:
            raise ValueError(f"brain mask must be 3D, got shape {shape}")
        for name, array in list(self.maps.items()):
            array = np.asarray(array, dtype=np.float32)
            if array.shape != shape:
                raise ValueError(f"map {name!r} has shape {array.shape}, brain mask {shape}")
            self.maps[name] = array
        for name, array in list(self.masks.items()):
            array = np.asarray(array, dtype=bool)
            if array.shape != shape:
                raise ValueError(f"mask {name!r} has shape {array.shape}, brain mask {shape}")
            self.masks[name] = array
        self.affine = np.asarray(self.affine, dtype=np.float64)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.maps[name]

    def __contains__(self, name: object) -> bool:
        return name in self.maps

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.brain_mask.shape)  # type: ignore[return-value]
