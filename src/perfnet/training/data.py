"""Training data: a BIDS-like cohort → per-slice inputs, targets and brain masks in memory.

Layout (as ``perfnet simulate`` writes it; a real cohort the same, with its reference maps)::

    COHORT/sub-XXXX/ses-YY/sub-XXXX_ses-YY_ctp.nii.gz    (MR: _dsc)
    COHORT/sub-XXXX/ses-YY/truth/<map>.nii.gz, truth/brain.nii.gz      --targets truth
    COHORT/sub-XXXX/ses-YY/perfusion-maps/*<map>.nii.gz                --targets reference

``--targets <method>`` (osvd, boxnlr, …) runs the conventional pipeline once per study and caches
its maps under ``RUN/targets/<method>/<study>/``. Inputs are stored as float16 (a 2 000-slice
128² × 80-frame set is 5 GB in float32, half that here).

The network's input is made by :func:`perfnet.inference.series.model_input`, the function inference
uses: non-steady-state leading frames dropped, rigid motion correction with unalignable frames
interpolated, the automatic brain mask, then concentration on the model's grid. Only the loss mask
is the target's brain mask (the truth brain of a phantom). The input of each study is cached as
``RUN/inputs/<study>.npz`` (keyed by the settings it depends on), so a resumed or repeated run does
not redo the motion correction.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perfnet.errors import PerfnetInputError
from perfnet.inference.inputs import ModelInput, model_size, resize_slices
from perfnet.io import load_map, load_series

SERIES_PATTERN = re.compile(r"^(sub-[^_]+)(_ses-[^_]+)?_(ctp|dsc|perf)\.nii(\.gz)?$")


@dataclass
class CohortStudy:
    name: str  # e.g. sub-0001_ses-01
    subject: str  # the unit of the cross-validation split
    series_path: Path
    session_dir: Path


def discover(root: str | Path) -> list[CohortStudy]:
    """Every perfusion series of the cohort, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise PerfnetInputError(root, "cohort folder not found")
    studies = []
    for path in sorted(root.rglob("sub-*")):
        m = SERIES_PATTERN.match(path.name)
        if m and path.is_file():
            name = m.group(1) + (m.group(2) or "")
            studies.append(CohortStudy(name, m.group(1), path, path.parent))
    if not studies:
        raise PerfnetInputError(root, "no series named sub-*_ses-*_ctp|dsc.nii.gz in this cohort")
    return studies


def kfold_split(subjects: list[str], folds: int, seed: int) -> list[list[str]]:
    """Subjects shuffled by ``seed`` and dealt into ``folds`` validation groups (by patient)."""
    unique = sorted(set(subjects))
    if folds < 1:
        raise ValueError("folds must be ≥ 1")
    if folds > 1 and len(unique) < folds:
        raise PerfnetInputError(None, f"{len(unique)} patients cannot be split into {folds} folds")
    order = list(np.random.default_rng(seed).permutation(len(unique)))
    return [sorted(unique[i] for i in order[k::folds]) for k in range(folds)] if folds > 1 else [[]]


def _reference_map(folder: Path, name: str) -> Path | None:
    for path in sorted(folder.glob("*.nii*")):
        stem = path.name.split(".nii")[0].lower()
        if stem == name or stem.endswith(f"_{name}") or stem.endswith(f"-{name}"):
            return path
    return None


def load_targets(
    study: CohortStudy, maps: list[str], targets: str, cache: Path | None, store: bool = True
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Target maps of a study and the brain mask that comes with them (None: use the automatic one).

    Conventional targets are read from the cache when complete, else computed (and written there
    when ``store``: data-parallel ranks other than 0 compute without writing)."""
    if targets == "truth":
        folder = study.session_dir / "truth"
        out = {}
        for m in maps:
            path = folder / f"{m}.nii.gz"
            if not path.is_file():
                raise PerfnetInputError(path, "truth map missing (is this a phantom cohort?)")
            out[m] = load_map(path)[0]
        brain_path = folder / "brain.nii.gz"
        return out, (load_map(brain_path)[0] > 0.5) if brain_path.is_file() else None
    if targets == "reference":
        folder = study.session_dir / "perfusion-maps"
        out = {}
        for m in maps:
            path = _reference_map(folder, m)
            if path is None:
                raise PerfnetInputError(folder, f"no reference {m} map")
            out[m] = load_map(path)[0]
        return out, None
    from perfnet.registry import method_names

    if targets in method_names("conventional"):
        from perfnet.conventional.pipeline import AnalysisOptions, analyze
        from perfnet.io.nifti import save_map

        folder = (cache or study.session_dir / "derivatives") / targets / study.name
        if all((folder / f"{m}.nii.gz").is_file() for m in maps) and (folder / "brain_mask.nii.gz").is_file():
            return {m: load_map(folder / f"{m}.nii.gz")[0] for m in maps}, load_map(
                folder / "brain_mask.nii.gz"
            )[0] > 0.5
        result = analyze(load_series(study.series_path), AnalysisOptions(method=targets))
        if store:
            from perfnet.io.output import atomic_output_dir

            with atomic_output_dir(folder, overwrite=True, command=f"targets {targets}") as staging:
                for m in maps:
                    save_map(result.maps[m], result.maps.affine, staging / f"{m}.nii.gz")
                save_map(
                    result.maps.brain_mask.astype(np.float32),
                    result.maps.affine,
                    staging / "brain_mask.nii.gz",
                )
        return {m: result.maps[m] for m in maps}, result.maps.brain_mask
    choices = ", ".join(("truth", "reference", *method_names("conventional")))
    raise PerfnetInputError("--targets", f"unknown target source {targets!r} (choose from {choices})")


@dataclass
class StudySlices:
    """One study's slices: inputs (Z, T, X, Y) float16, targets (Z, M, X, Y), brain (Z, X, Y),
    the bolus patch (T, D, P, P), the model time grid and its offset after the first frame (s)."""

    name: str
    subject: str
    inputs: torch.Tensor
    targets: torch.Tensor
    brain: torch.Tensor
    bolus: torch.Tensor
    grid: np.ndarray
    offset_s: float = 0.0


#: Bumped when the input preparation changes, so that cached inputs of an older recipe are redone.
INPUT_RECIPE = 3


def _input_key(study: CohortStudy, config: dict[str, object]) -> str:
    stat = study.series_path.stat()
    key = {"recipe": INPUT_RECIPE, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns} | config
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_input(
    study: CohortStudy, config: dict[str, object], cache: Path | None = None, store: bool = True
) -> tuple[ModelInput, float]:
    """The network's input of a study exactly as inference makes it
    (:func:`perfnet.inference.series.model_input`, curves rounded to float16 as training keeps
    them) and the offset of its grid after the first acquired frame (s).

    With ``cache``, read from ``cache/<study>.npz`` when its key (recipe, series file, ``config``)
    matches, else computed and written there when ``store``."""
    path = None if cache is None else cache / f"{study.name}.npz"
    key = _input_key(study, config)
    if path is not None and path.is_file():
        try:
            with np.load(path) as f:
                if str(f["key"]) == key:
                    inp = ModelInput(
                        curves=f["curves"],
                        grid=f["grid"],
                        brain=f["brain"],
                        bolus=f["bolus"],
                        bolus_centre=tuple(int(c) for c in f["bolus_centre"]),
                        offset_s=float(f["grid_offset_s"]),
                    )
                    return inp, float(f["offset_s"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable (interrupted write): computed again
    from perfnet.inference.series import model_input

    made = model_input(load_series(study.series_path), config)
    inp = made.input
    inp.curves = inp.curves.astype(np.float16)
    if path is not None and store:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            key=np.array(key),
            curves=inp.curves,
            grid=inp.grid,
            brain=inp.brain,
            bolus=inp.bolus,
            bolus_centre=np.array(inp.bolus_centre),
            grid_offset_s=np.array(inp.offset_s),
            offset_s=np.array(made.offset_s),
        )
        tmp.replace(path)
    return inp, made.offset_s


def load_study(
    study: CohortStudy,
    maps: list[str],
    targets: str,
    frame_interval: float,
    frames: int,
    cache: Path | None,
    pixel_mm: float | None = None,
    align_lead_s: float | None = None,
    store: bool = True,
    input_cache: Path | None = None,
) -> StudySlices:
    """One study on the model's time grid and pixel size, its input made as inference makes it
    (:func:`study_input`); TTP targets relative to the grid start. The loss mask is the targets'
    brain mask where they come with one, else the automatic one."""
    series = load_series(study.series_path)
    target_maps, brain = load_targets(study, maps, targets, cache, store)
    for m, arr in target_maps.items():
        if arr.shape != series.spatial_shape:
            raise PerfnetInputError(
                study.series_path, f"target {m} has shape {arr.shape}, series {series.spatial_shape}"
            )
    config = {
        "frame_interval": frame_interval,
        "frames": frames,
        "align_lead_s": align_lead_s,
        "pixel_mm": pixel_mm,
    }
    inp, offset_s = study_input(study, config, input_cache, store)
    if "ttp" in target_maps:  # truth TTP is timed from the first acquired frame
        target_maps["ttp"] = target_maps["ttp"] - np.float32(offset_s)
    loss_brain = inp.brain if brain is None else brain
    size = model_size(series.spatial_shape[:2], series.voxel_size[:2], pixel_mm)
    x = resize_slices(
        torch.from_numpy(np.moveaxis(inp.curves, (2, 3), (0, 1))), size
    )  # (Z, T, X, Y), already at the model pixels
    y = torch.from_numpy(
        np.stack([np.moveaxis(target_maps[m], 2, 0) for m in maps], axis=1).astype(np.float32)
    )
    b = torch.from_numpy(np.moveaxis(loss_brain, 2, 0).astype(np.float32))[:, None]
    b = resize_slices(b, size)[:, 0] > 0.5
    y = resize_slices(y, size)
    return StudySlices(
        study.name, study.subject, x.half(), y, b, torch.from_numpy(inp.bolus), inp.grid, offset_s
    )
