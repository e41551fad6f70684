"""The output folder of `perfnet analyze`: maps, masks and JSON side files, written all at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from perfnet.io.nifti import write_maps
from perfnet.io.output import atomic_output_dir
from perfnet.io.types import PerfusionMaps


def to_jsonable(obj: Any) -> Any:
    """numpy scalars and arrays → Python numbers and lists (for json.dumps ``default``)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content, indent=2, default=to_jsonable) + "\n")
    return path


def write_output_files(
    maps: PerfusionMaps,
    folder: Path,
    json_files: dict[str, Any],
    extra: Callable[[Path], list[Path]] | None = None,
) -> list[Path]:
    """Write ``<map>.nii.gz``, ``brain_mask.nii.gz``, masks and ``<name>.json`` into ``folder``
    (a staging folder of :class:`perfnet.io.output.OutputFolder`); ``extra(folder)`` writes more
    (the report). Returns the names written."""
    written = write_maps(maps, folder)
    written += [write_json(folder / f"{name}.json", content) for name, content in json_files.items()]
    if extra is not None:
        written += extra(folder)
    return written


def write_output_set(
    maps: PerfusionMaps,
    out_dir: str | Path,
    json_files: dict[str, Any],
    extra: Callable[[Path], list[Path]] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """:func:`write_output_files` into ``out_dir``, replaced as a whole: nothing appears there
    unless every file was written."""
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite, command="analyze") as staging:
        written = write_output_files(maps, staging, json_files, extra)
    return [out_dir / p.name for p in written]
