"""NIfTI input and output with BIDS-style JSON sidecars.

Frame times come, in order of precedence, from the ``frame_interval`` argument (the CLI's
``--frame-interval``), the sidecar (``FrameTimes``, ``FrameTimesStart`` or ``RepetitionTime``),
or ``pixdim[4]`` when the header names its time unit. Without any of them loading fails.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from perfnet.errors import PerfnetInputError
from perfnet.io.types import PerfusionMaps, PerfusionSeries

_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def sidecar_path(path: str | Path) -> Path:
    """The BIDS sidecar beside a NIfTI file: same stem, ``.json``."""
    path = Path(path)
    return path.with_name(nifti_stem(path) + ".json")


def is_nifti(path: str | Path) -> bool:
    return Path(path).name.endswith((".nii", ".nii.gz"))


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar's keys, or ``{}`` when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        content = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PerfnetInputError(side, f"unreadable JSON sidecar ({exc})") from None
    if not isinstance(content, dict):
        raise PerfnetInputError(side, "JSON sidecar must hold an object")
    return content


def load_nifti_image(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a NIfTI file's data (float32, scaling applied) and image, with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise PerfnetInputError(path, "no such file")
    if not path.is_file():
        raise PerfnetInputError(path, "not a file")
    try:
        with _quiet_nibabel():
            image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for non-NIfTI content
        raise PerfnetInputError(path, f"not a readable NIfTI file ({_short(exc)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise PerfnetInputError(path, f"not a NIfTI image ({type(image).__name__})")
    _check_header(path, image)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise PerfnetInputError(path, f"file is truncated or corrupt ({_short(exc)})") from None
    except MemoryError:
        raise PerfnetInputError(path, "not enough memory to read the data") from None
    return data, image  # type: ignore[return-value]


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs header repairs to stderr; perfnet reports problems itself, in one line."""
    logger = logging.getLogger("nibabel")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _raw_header(path: Path, kind: type) -> Any:
    """The header as stored (not repaired), or None when it cannot be read again."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            return kind.from_fileobj(f, check=False)
    except Exception:
        return None


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_header(path: Path, image: nib.Nifti1Image) -> None:
    """Refuse headers whose data cannot be in the file or in memory, and voxel sizes that are
    missing (pixdim 0 with no qform/sform: nibabel would silently substitute 1 mm)."""
    header = image.header
    shape = tuple(int(n) for n in image.shape)
    if any(n <= 0 for n in shape):
        raise PerfnetInputError(path, f"header gives an empty shape {shape}")
    voxels = math.prod(shape)
    stored = voxels * np.dtype(header.get_data_dtype()).itemsize
    as_float = voxels * 4
    if as_float > 0.8 * _memory_bytes():
        raise PerfnetInputError(
            path, f"header describes {as_float / 1e9:.1f} GB of data, more than this machine's memory"
        )
    if not path.name.endswith(".gz"):
        offset = int(header.get("vox_offset", 0) or 0)
        size = path.stat().st_size
        if size < offset + stored:
            raise PerfnetInputError(
                path, f"file is truncated: the header describes {offset + stored} bytes, the file has {size}"
            )
    raw = _raw_header(path, type(header)) or header  # nibabel replaces a 0 pixdim by 1 on loading
    qcode, scode = int(raw["qform_code"]), int(raw["sform_code"])
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if qcode == 0 and scode == 0 and not np.all(np.isfinite(pixdim) & (pixdim > 0)):
        raise PerfnetInputError(
            path, f"voxel size missing (pixdim {pixdim.tolist()}, no qform or sform): cannot measure volumes"
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _frame_times_from_header(path: Path, image: nib.Nifti1Image, n_frames: int) -> tuple[np.ndarray, str]:
    zooms = image.header.get_zooms()
    interval = float(zooms[3]) if len(zooms) > 3 else 0.0
    _, time_unit = image.header.get_xyzt_units()
    scale = _TIME_UNIT_SECONDS.get(time_unit)
    if scale is None or not interval > 0:
        raise PerfnetInputError(
            path,
            f"no frame times (pixdim[4]={interval:g}, time unit {time_unit!r}): add a JSON sidecar "
            "with FrameTimes or pass --frame-interval",
        )
    return np.arange(n_frames) * interval * scale, f"pixdim[4] ({time_unit})"


def _frame_times_from_sidecar(
    side: Path, sidecar: dict[str, Any], n_frames: int
) -> tuple[np.ndarray, str] | None:
    for key in ("FrameTimes", "FrameTimesStart"):
        if key in sidecar:
            try:
                times = np.asarray(sidecar[key], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise PerfnetInputError(side, f"{key} must be a list of numbers") from None
            if times.shape[0] != n_frames:
                raise PerfnetInputError(side, f"{key} lists {times.shape[0]} times for {n_frames} frames")
            return times, f"sidecar {key}"
    if "RepetitionTime" in sidecar:
        try:
            tr = float(sidecar["RepetitionTime"])
        except (TypeError, ValueError):
            raise PerfnetInputError(side, "RepetitionTime must be a number (s)") from None
        if not tr > 0:
            raise PerfnetInputError(side, f"RepetitionTime must be positive, got {tr}")
        return np.arange(n_frames) * tr, "sidecar RepetitionTime"
    return None


def load_nifti_series(
    path: str | Path,
    modality: str | None = None,
    frame_interval: float | None = None,
    echo_time: float | None = None,
) -> PerfusionSeries:
    """Load a 4D NIfTI perfusion series and its sidecar.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        modality: "CT" / "MR", overriding the sidecar's ``Modality``.
        frame_interval: uniform frame interval in s, overriding sidecar and header.
        echo_time: MR echo time in s, overriding the sidecar's ``EchoTime``.
    """
    path = Path(path)
    sidecar = read_sidecar(path)
    data, image = load_nifti_image(path)
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 4:
        raise PerfnetInputError(path, f"expected a 4D series (X, Y, Z, T), got {data.ndim}D {data.shape}")
    n_frames = data.shape[3]
    side = sidecar_path(path)
    if frame_interval is not None:
        if not frame_interval > 0:
            raise PerfnetInputError("--frame-interval", f"must be positive, got {frame_interval}")
        times, times_source = np.arange(n_frames) * float(frame_interval), "--frame-interval"
    else:
        found = _frame_times_from_sidecar(side, sidecar, n_frames)
        times, times_source = found if found else _frame_times_from_header(path, image, n_frames)

    chosen = modality or sidecar.get("Modality")
    if chosen is None:
        raise PerfnetInputError(
            path, 'modality unknown: add "Modality" (CT or MR) to the JSON sidecar or pass --modality'
        )
    chosen = str(chosen).upper()
    if chosen == "MRI":
        chosen = "MR"
    if chosen not in ("CT", "MR"):
        raise PerfnetInputError(path, f"modality must be CT or MR, got {chosen!r}")
    te = echo_time if echo_time is not None else sidecar.get("EchoTime")
    if te is not None:
        try:
            te = float(te)
        except (TypeError, ValueError):
            raise PerfnetInputError(side, f"EchoTime must be a number (s), got {te!r}") from None
        if te > 1.0:  # some converters write ms
            te = te / 1000.0
    meta = {
        "source": str(path),
        "format": "nifti",
        "frame_times_source": times_source,
        "sidecar": str(side) if sidecar else None,
    }
    return PerfusionSeries(
        data=data,
        times=times,
        affine=image.affine,
        modality=chosen,
        echo_time=te if chosen == "MR" else None,
        meta=meta,
    )


def _nifti_image(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    return image


def save_series_nifti(
    series: PerfusionSeries,
    path: str | Path,
    dtype: type | str = np.float32,
    extra_sidecar: dict[str, Any] | None = None,
) -> Path:
    """Write a series as 4D NIfTI plus its JSON sidecar (``Modality``, ``FrameTimes``, ``EchoTime``).

    ``dtype=np.int16`` rounds the data (as CT scanners store HU).
    """
    path = Path(path)
    data = series.data
    if np.dtype(dtype) == np.int16:
        data = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    else:
        data = data.astype(dtype, copy=False)
    image = _nifti_image(data, series.affine)
    intervals = series.frame_intervals
    zooms = (*series.voxel_size, float(np.median(intervals)))
    image.header.set_zooms(zooms)
    nib.save(image, str(path))
    sidecar: dict[str, Any] = {
        "Modality": series.modality,
        "FrameTimes": [round(float(t), 6) for t in series.times],
    }
    if series.echo_time is not None:
        sidecar["EchoTime"] = series.echo_time
    if extra_sidecar:
        sidecar.update(extra_sidecar)
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def save_map(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    dtype: type | str = np.float32,
    descrip: str | None = None,
    intent: str | None = None,
) -> Path:
    """Write one 3D map (float32 by default; masks as uint8) on the given grid.

    ``descrip`` (≤ 80 characters) says what the values are and their unit; maps carry the NIfTI
    intent ``estimate`` named ``intent`` (a parameter estimate), masks the intent ``label``."""
    path = Path(path)
    array = np.asarray(array)
    mask = array.dtype == bool
    array = array.astype(np.uint8) if mask else array.astype(dtype, copy=False)
    image = _nifti_image(array, affine)
    if mask:
        image.header.set_intent("label")
    elif intent is not None:
        image.header.set_intent("estimate", name=intent[:15])
    if descrip:
        image.header["descrip"] = descrip.encode("ascii", "replace")[:79]
    nib.save(image, str(path))
    return path


def load_map(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D map: (data float32, affine)."""
    data, image = load_nifti_image(path)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PerfnetInputError(path, f"expected a 3D map, got {data.ndim}D {data.shape}")
    return data, image.affine


def write_maps(maps: PerfusionMaps, directory: str | Path) -> list[Path]:
    """Write every map as ``<name>.nii.gz`` (float32, its unit in ``descrip``), the brain mask and
    any masks (uint8, intent ``label``)."""
    from perfnet.constants import MAP_UNITS

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in maps.maps.items():
        units = MAP_UNITS.get(name.removesuffix("_uncertainty"), "")
        descrip = f"{name} {units} perfnet {maps.method}"
        written.append(
            save_map(array, maps.affine, directory / f"{name}.nii.gz", descrip=descrip, intent=name)
        )
    written.append(save_map(maps.brain_mask, maps.affine, directory / "brain_mask.nii.gz"))
    written += [
        save_map(mask, maps.affine, directory / f"{name}.nii.gz") for name, mask in maps.masks.items()
    ]
    return written
