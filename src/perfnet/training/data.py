"""Training data: a BIDS-like cohort → one study's per-slice inputs, targets and brain mask.

Layout (as ``perfnet simulate`` writes it; a real cohort the same, with its reference maps)::

    COHORT/sub-XXXX/ses-YY/sub-XXXX_ses-YY_ctp.nii.gz    (MR: _dsc)
    COHORT/sub-XXXX/ses-YY/truth/<map>.nii.gz, truth/brain.nii.gz      --targets truth
    COHORT/sub-XXXX/ses-YY/perfusion-maps/*<map>.nii.gz                --targets reference

``--targets <method>`` (osvd, boxnlr, …): the maps ``perfnet analyze --method <method>`` makes,
computed once per cohort by the cohort runner into the BIDS derivatives tree
``RUN/targets/<method>/`` (:mod:`perfnet.training.prepare`). Inputs are stored as float16 (a
2 000-slice 128² × 80-frame set is 5 GB in float32, half that here).

The network's input is made by :func:`perfnet.inference.series.model_input`, the function inference
uses: non-steady-state leading frames dropped, rigid motion correction with unalignable frames
interpolated, the automatic brain mask, then concentration on the model's grid. Only the loss mask
is the target's brain mask (the truth brain of a phantom). :func:`study_input` can cache a study's
input as ``<cache>/<study>.npz`` (keyed by the settings it depends on); ``perfnet train`` keeps each
prepared study as uncompressed arrays under ``RUN/slices/<study>/`` instead
(:mod:`perfnet.training.prepare`), so a resumed run does not redo the motion correction.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
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


def phantom_styles(studies: list[CohortStudy], names: set[str]) -> list[str]:
    """The phantom styles (``perfnet simulate``'s ``truth/parameters.json`` ``style``: geometric,
    mni) of the named studies, sorted; a study without one (a real cohort) adds none."""
    styles = set()
    for study in studies:
        if study.name not in names:
            continue
        try:
            style = json.loads((study.session_dir / "truth" / "parameters.json").read_text()).get("style")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(style, str):
            styles.add(style)
    return sorted(styles)


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


def entities(study: CohortStudy) -> dict[str, str]:
    """The study's BIDS entities (``{"sub": "0001", "ses": "01"}``) from its name."""
    parts = dict(part.split("-", 1) for part in study.name.split("_"))
    return {k: parts[k] for k in ("sub", "ses") if k in parts}


def target_paths(study: CohortStudy, maps: list[str], targets: str, tree: Path | None) -> list[Path]:
    """The files a study's targets are read from (maps in ``maps``' order, then the brain mask
    where the source has one). Conventional targets (``--targets osvd`` …) come from ``tree``, a
    BIDS derivatives tree that :func:`perfnet.training.prepare.compute_targets` fills with the
    cohort runner (``perfnet analyze``'s maps of each study)."""
    if targets == "truth":
        folder = study.session_dir / "truth"
        paths = [folder / f"{m}.nii.gz" for m in maps]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise PerfnetInputError(missing[0], "truth map missing (is this a phantom cohort?)")
        brain = folder / "brain.nii.gz"
        return paths + ([brain] if brain.is_file() else [])
    if targets == "reference":
        folder = study.session_dir / "perfusion-maps"
        paths = []
        for m in maps:
            path = _reference_map(folder, m)
            if path is None:
                raise PerfnetInputError(folder, f"no reference {m} map")
            paths.append(path)
        return paths
    from perfnet.registry import method_names

    if targets in method_names("conventional"):
        from perfnet.io import bids

        if tree is None:
            raise PerfnetInputError("--targets", f"{targets} targets need their derivatives tree")
        found = entities(study)
        stem = f"{bids.prefix(found)}_desc-{bids.desc_of(targets)}"
        folder = bids.session_folder(tree, found)
        paths = [folder / f"{stem}_{m}.nii.gz" for m in maps] + [folder / f"{stem}_brainmask.nii.gz"]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise PerfnetInputError(missing[0], f"{targets} target of {study.name} not computed")
        return paths
    choices = ", ".join(("truth", "reference", *method_names("conventional")))
    raise PerfnetInputError("--targets", f"unknown target source {targets!r} (choose from {choices})")


def load_targets(
    study: CohortStudy, maps: list[str], targets: str, tree: Path | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Target maps of a study and the brain mask that comes with them (None: use the automatic
    one), read from :func:`target_paths` (conventional targets are computed before, once per
    cohort, never here)."""
    paths = target_paths(study, maps, targets, tree)
    out = {m: load_map(path)[0] for m, path in zip(maps, paths, strict=False)}
    brain = (load_map(paths[len(maps)])[0] > 0.5) if len(paths) > len(maps) else None
    return out, brain


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
    #: what the study looks like to the network's preprocessing (perfnet.inference.domain.describe)
    descriptors: dict[str, float] = field(default_factory=dict)

    @property
    def slices(self) -> int:
        return int(self.inputs.shape[0])

    def slice(self, z: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slice ``z`` (as :meth:`perfnet.training.prepare.PreparedStudy.slice` reads it from disk)."""
        return self.inputs[z], self.targets[z].clone(), self.brain[z]

    def read_bolus(self) -> torch.Tensor:
        return self.bolus


#: Bumped when the input preparation changes, so that cached inputs of an older recipe are redone
#: (4: the study's training-domain descriptors are cached with its input).
INPUT_RECIPE = 4


def _input_key(study: CohortStudy, config: dict[str, object]) -> str:
    stat = study.series_path.stat()
    key = {"recipe": INPUT_RECIPE, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns} | config
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_input(
    study: CohortStudy, config: dict[str, object], cache: Path | None = None, store: bool = True
) -> tuple[ModelInput, float, dict[str, float]]:
    """The network's input of a study exactly as inference makes it
    (:func:`perfnet.inference.series.model_input`, curves rounded to float16 as training keeps
    them), the offset of its grid after the first acquired frame (s) and the study's
    training-domain descriptors (:func:`perfnet.inference.domain.describe`).

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
                    return inp, float(f["offset_s"]), json.loads(str(f["descriptors"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable (interrupted write): computed again
    from perfnet.inference.domain import describe
    from perfnet.inference.series import model_input

    made = model_input(load_series(study.series_path), config)
    inp = made.input
    descriptors = describe(made.prepared)
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
            descriptors=np.array(json.dumps(descriptors)),
        )
        tmp.replace(path)
    return inp, made.offset_s, descriptors


def load_study(
    study: CohortStudy,
    maps: list[str],
    targets: str,
    frame_interval: float,
    frames: int,
    tree: Path | None,
    pixel_mm: float | None = None,
    align_lead_s: float | None = None,
    store: bool = True,
    input_cache: Path | None = None,
    bolus_rule: str = "early-peak",
) -> StudySlices:
    """One study on the model's time grid and pixel size, its input made as inference makes it
    (:func:`study_input`); TTP targets relative to the grid start. The loss mask is the targets'
    brain mask where they come with one, else the automatic one. ``tree``: the derivatives tree
    of conventional targets (see :func:`target_paths`)."""
    series = load_series(study.series_path)
    target_maps, brain = load_targets(study, maps, targets, tree)
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
        "bolus_rule": bolus_rule,
    }
    inp, offset_s, descriptors = study_input(study, config, input_cache, store)
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
        study.name,
        study.subject,
        x.half(),
        y,
        b,
        torch.from_numpy(inp.bolus),
        inp.grid,
        offset_s,
        descriptors,
    )
