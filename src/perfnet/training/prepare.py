"""A cohort made ready for training once, before any data-parallel rank reads it.

Two steps, both run by rank 0 only (the process that writes files; the others wait for its
marker), both resumable (a study already done is not done again):

1. **Targets** (``--targets osvd`` and the other conventional methods): the cohort runner
   (:func:`perfnet.runner.run_cohort`: one ``perfnet analyze --bids`` process per study, ``jobs``
   at a time or on a Dask scheduler, complete studies skipped, each failure recorded) writes the
   maps of every study into the BIDS derivatives tree ``RUN/targets/<method>/`` with its own
   ``cohort.tsv``. A study whose target failed stops the run before training with one line naming
   it (exit status 2): training on fewer studies than the plan lists would silently change the
   split, and a later successful retry would then change it again.
2. **Slices**: every study on the model's grid (:func:`perfnet.training.data.load_study`, the
   input made as inference makes it) as uncompressed ``.npy`` arrays in ``RUN/slices/<study>/``
   (``inputs`` float16 (Z, T, X, Y), ``targets`` float32 (Z, M, X, Y), ``brain`` bool (Z, X, Y),
   ``bolus`` float32) and ``meta.json`` (a key over the recipe, the series file, the settings and
   the target files, so changed inputs are prepared again; the arrays' byte offsets; the study's
   sums for the normalisation). Written one study at a time through a staging folder swapped in
   with one rename. A study another run of the same cohort already prepared with the same arrays
   (``--reuse-slices RUN``: same series, grid, frames and targets; only the log transform of the
   targets may differ) is adopted instead: its arrays hard-linked (copied across file systems),
   its sums computed again in this run's target domain, so a later stage on the same cohort does
   not repeat the motion correction and resampling.

A rank then holds only :class:`PreparedStudy` records (names, offsets, a few numbers) and reads
one slice per sample from disk (:meth:`PreparedStudy.slice`: one positioned read per array, no
memory map left open), so its memory does not grow with the cohort; the normalisation is
combined from the per-study sums (:meth:`perfnet.training.dataset.Normalisation.from_moments`).

Waiting ranks (``RANK`` ≠ 0 from a launcher that starts every rank at once: torchrun, SLURM) poll
``RUN/.ready-<step>.json`` until rank 0 has written the content they expect (or an error, newer
than their own start). Under Lightning's own launcher (``--strategy ddp`` from one command) the
other ranks start only when rank 0 reaches training, so they find the marker at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perfnet.errors import PerfnetInputError
from perfnet.training.data import (
    CohortStudy,
    StudySlices,
    _input_key,
    entities,
    load_study,
    target_paths,
)

#: Bumped when the prepared arrays change, so that slices of an older recipe are prepared again
#: (2: meta.json holds the study's training-domain descriptors; 3: the bolus patch kept off the
#: voxels motion correction filled from outside the slab, as inference keeps it since stop 44).
SLICE_RECIPE = 3
ARRAYS = ("inputs", "targets", "brain", "bolus")
#: How long a rank waits for rank 0's preparation (s; ``PERFNET_RANK_WAIT_S`` overrides).
WAIT_S = 24 * 3600.0


def is_conventional(targets: str) -> bool:
    from perfnet.registry import method_names

    return targets in method_names("conventional")


# ---------------------------------------------------------------- step 1: conventional targets


def compute_targets(
    studies: list[CohortStudy],
    cohort: Path,
    method: str,
    tree: Path,
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Every study's ``method`` maps into the derivatives tree ``tree`` with the cohort runner
    (complete studies skipped); cohort.json's content, or a one-line error naming the first study
    that failed."""
    from perfnet.runner import Study, run_cohort

    tasks = []
    for s in studies:
        found = entities(s)
        tasks.append(Study(s.series_path, found["sub"], found.get("ses")))

    def report(state: dict[str, Any]) -> None:
        record = state["record"]
        what = "ok" if record["status"] == "done" else f"{record['status']}: {record['error']}"
        finished = state["done"] + state["failed"]
        print(f"targets [{finished}/{state['total']}] {state['study']} {what}", file=sys.stderr, flush=True)

    summary = run_cohort(
        cohort,
        tree,
        method,
        jobs=jobs,
        scheduler=scheduler,
        options=["--no-report"],
        progress=report if progress else None,
        studies=tasks,
    )
    failures = summary.get("failures", {})
    if failures or summary.get("pending"):
        name, error = next(iter(sorted(failures.items()))) if failures else ("?", "not computed")
        error = error.removeprefix("perfnet: ").removeprefix("error: ")
        others = len(failures) - 1
        more = f"; {others} other(s) failed too" if others > 0 else ""
        where = tree / "cohort.tsv"
        raise PerfnetInputError(
            name, f"{method} target failed ({error}){more}; see {where}, fix or remove the study"
        )
    return summary


# ---------------------------------------------------------------- step 2: slices on the model grid


def study_moments(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    brain: torch.Tensor,
    maps: list[str],
    log_offsets: dict[str, float],
) -> dict[str, list[float]]:
    """Count, sum and sum of squares (float64) of a study's brain voxels: the input (every 7th
    value of its brain curves) and each target map in the network's domain. Summed over the
    training studies they give the fold's normalisation without holding the cohort."""
    from perfnet.inference.targets import to_model

    x = inputs.permute(0, 2, 3, 1)[brain].float().reshape(-1)[::7].double()
    y = targets.permute(0, 2, 3, 1)[brain].float()
    out = {"input": [float(x.numel()), float(x.sum()), float((x * x).sum())]}
    for i, m in enumerate(maps):
        t = to_model(y[:, i], m, log_offsets).double()
        out[m] = [float(t.numel()), float(t.sum()), float((t * t).sum())]
    return out


@dataclass
class PreparedStudy:
    """A prepared study on disk (see the module docstring): what a rank keeps of it in memory is
    this record; :meth:`slice` reads one slice."""

    name: str
    subject: str
    folder: Path
    grid: np.ndarray
    offset_s: float
    arrays: dict[str, dict[str, Any]]  # kind → dtype, shape, byte offset of the data in the .npy
    moments: dict[str, list[float]]
    key: str = ""
    descriptors: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path) -> PreparedStudy:
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            meta["name"],
            meta["subject"],
            folder,
            np.asarray(meta["grid"], dtype=np.float64),
            float(meta["offset_s"]),
            meta["arrays"],
            meta["moments"],
            meta["key"],
            meta.get("descriptors", {}),
        )

    @property
    def slices(self) -> int:
        return int(self.arrays["inputs"]["shape"][0])

    def read(self, kind: str, z: int | None = None) -> np.ndarray:
        """Array ``kind`` (or its slice ``z``) read from its file, nothing else."""
        spec = self.arrays[kind]
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        if z is None:
            count, offset = math.prod(shape), int(spec["offset"])
        else:
            shape = shape[1:]
            count = math.prod(shape)
            offset = int(spec["offset"]) + int(z) * count * dtype.itemsize
        data = np.fromfile(self.folder / f"{kind}.npy", dtype=dtype, count=count, offset=offset)
        if data.size != count:
            raise PerfnetInputError(self.folder / f"{kind}.npy", "truncated (prepare the run again)")
        return data.reshape(shape)

    def slice(self, z: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slice ``z``: input (T, X, Y) float16, targets (M, X, Y) float32, brain (X, Y) bool."""
        return tuple(torch.from_numpy(self.read(k, z)) for k in ("inputs", "targets", "brain"))  # type: ignore[return-value]

    def read_bolus(self) -> torch.Tensor:
        return torch.from_numpy(self.read("bolus"))


def _npy_layout(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    assert not fortran
    return {"dtype": dtype.str, "shape": list(shape), "offset": offset}


def write_prepared(
    slices: StudySlices, folder: Path, key: str, moments: dict[str, list[float]], arrays_key: str = ""
) -> PreparedStudy:
    """One study's arrays and meta.json into ``folder``, swapped in as a whole."""
    from perfnet.io.output import atomic_output_dir

    arrays = {
        "inputs": slices.inputs.numpy(),
        "targets": slices.targets.numpy(),
        "brain": slices.brain.numpy(),
        "bolus": slices.bolus.numpy(),
    }
    with atomic_output_dir(folder, overwrite=True, command="train slices") as staging:
        layout = {}
        for kind, array in arrays.items():
            np.save(staging / f"{kind}.npy", np.ascontiguousarray(array))
            layout[kind] = _npy_layout(staging / f"{kind}.npy")
        meta = {
            "key": key,
            "arrays_key": arrays_key,
            "name": slices.name,
            "subject": slices.subject,
            "grid": [float(t) for t in slices.grid],
            "offset_s": float(slices.offset_s),
            "arrays": layout,
            "moments": moments,
            "descriptors": slices.descriptors,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return PreparedStudy.open(folder)


@dataclass
class SliceRecipe:
    """The settings a study's prepared slices depend on."""

    maps: list[str]
    targets: str
    frame_interval: float
    frames: int
    pixel_mm: float | None
    align_lead_s: float | None
    log_offsets: dict[str, float]
    bolus_rule: str = "early-peak"

    def input_config(self) -> dict[str, object]:
        return {
            "frame_interval": self.frame_interval,
            "frames": self.frames,
            "align_lead_s": self.align_lead_s,
            "pixel_mm": self.pixel_mm,
            "bolus_rule": self.bolus_rule,
        }


def _key_parts(study: CohortStudy, recipe: SliceRecipe, tree: Path | None) -> dict[str, Any]:
    files = []
    for path in target_paths(study, recipe.maps, recipe.targets, tree):
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return {
        "slices": SLICE_RECIPE,
        "input": _input_key(study, recipe.input_config()),
        "targets": recipe.targets,
        "maps": recipe.maps,
        "log_offsets": recipe.log_offsets,
        "files": files,
    }


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def slice_key(study: CohortStudy, recipe: SliceRecipe, tree: Path | None) -> str:
    """The key of a study's prepared slices: everything they depend on."""
    parts = _key_parts(study, recipe, tree)
    parts["files"] = [[Path(f[0]).name, *f[1:]] for f in parts["files"]]  # the key since SLICE_RECIPE 2
    return _digest(parts)


def arrays_key(study: CohortStudy, recipe: SliceRecipe, tree: Path | None) -> str:
    """The key of the arrays alone: the slice key without the targets' log transform (which
    changes only the sums), with the target files' full paths (two runs' conventional targets
    are different files)."""
    parts = _key_parts(study, recipe, tree)
    del parts["log_offsets"]
    return _digest(parts)


def _current_key(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / "meta.json").read_text())["key"])
    except (OSError, ValueError, KeyError):
        return None


def _arrays_key_of(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / "meta.json").read_text())["arrays_key"]) or None
    except (OSError, ValueError, KeyError):
        return None


def adopt_prepared(donor: Path, folder: Path, key: str, recipe: SliceRecipe) -> PreparedStudy:
    """Another run's prepared study (``donor``, the same arrays) taken into ``folder``: the arrays
    hard-linked (copied where links fail), the sums computed in ``recipe``'s target domain, the
    meta written with ``key``; swapped in as a whole."""
    import shutil

    from perfnet.io.output import atomic_output_dir

    source = PreparedStudy.open(donor)
    meta = json.loads((donor / "meta.json").read_text())
    arrays = {k: torch.from_numpy(source.read(k).copy()) for k in ("inputs", "targets", "brain")}
    moments = study_moments(
        arrays["inputs"], arrays["targets"], arrays["brain"], recipe.maps, recipe.log_offsets
    )
    with atomic_output_dir(folder, overwrite=True, command="train slices") as staging:
        for kind in ARRAYS:
            try:
                os.link(donor / f"{kind}.npy", staging / f"{kind}.npy")
            except OSError:
                shutil.copyfile(donor / f"{kind}.npy", staging / f"{kind}.npy")
        meta |= {"key": key, "moments": moments, "adopted_from": str(donor.resolve())}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return PreparedStudy.open(folder)


def _prepare_one(
    study: CohortStudy, recipe: SliceRecipe, folder: Path, tree: Path | None, key: str, arrays: str = ""
) -> str:
    """One study's slices written to ``folder`` (a worker process's task under ``jobs`` > 1)."""
    slices = load_study(
        study,
        recipe.maps,
        recipe.targets,
        recipe.frame_interval,
        recipe.frames,
        tree,
        recipe.pixel_mm,
        recipe.align_lead_s,
        bolus_rule=recipe.bolus_rule,
    )
    moments = study_moments(slices.inputs, slices.targets, slices.brain, recipe.maps, recipe.log_offsets)
    write_prepared(slices, folder, key, moments, arrays)
    return study.name


def prepare_slices(
    studies: list[CohortStudy],
    recipe: SliceRecipe,
    root: Path,
    tree: Path | None,
    keys: dict[str, str],
    progress: bool = False,
    jobs: int = 1,
    donors: list[Path] | None = None,
) -> int:
    """Every study whose ``root/<study>`` does not hold its key's slices, prepared (``jobs`` at a
    time in worker processes, each study written whole by its own staging rename), or adopted
    from the first of ``donors`` (other runs' slice folders) that holds its arrays; the count."""
    from tqdm import tqdm

    todo = [s for s in studies if _current_key(root / s.name) != keys[s.name]]
    bar = tqdm(total=len(todo), desc="preparing studies", disable=not progress, leave=False)
    arrays = {s.name: arrays_key(s, recipe, tree) for s in todo}
    left = []
    for study in todo:
        donor = next(
            (d / study.name for d in donors or [] if _arrays_key_of(d / study.name) == arrays[study.name]),
            None,
        )
        if donor is None:
            left.append(study)
            continue
        adopt_prepared(donor, root / study.name, keys[study.name], recipe)
        bar.update()
    todo = left
    if jobs <= 1 or len(todo) <= 1:
        for study in todo:
            _prepare_one(study, recipe, root / study.name, tree, keys[study.name], arrays[study.name])
            bar.update()
    else:
        from concurrent.futures import as_completed

        from perfnet.parallel import result, worker_pool

        with worker_pool(min(jobs, len(todo))) as pool:
            futures = [
                pool.submit(_prepare_one, s, recipe, root / s.name, tree, keys[s.name], arrays[s.name])
                for s in todo
            ]
            for future in as_completed(futures):
                result(future)  # a failed study raises here (the others already written stay)
                bar.update()
    bar.close()
    return len(todo)


# ---------------------------------------------------------------- both steps, rank 0 and the others


def _write_marker(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=1) + "\n")
    tmp.replace(path)


def await_marker(path: Path, expected: dict[str, Any], since: float, what: str) -> None:
    """Wait until rank 0 has written ``expected`` to ``path`` (its step done), or an error after
    ``since`` (wall-clock seconds; an older error belongs to an earlier run)."""
    limit = float(os.environ.get("PERFNET_RANK_WAIT_S", WAIT_S))
    deadline = time.monotonic() + limit
    while True:
        try:
            content = json.loads(path.read_text())
            if content.get("error") and path.stat().st_mtime >= since - 1.0:
                error = content["error"]
                raise PerfnetInputError(path.parent, f"rank 0 failed while preparing {what}: {error}")
            if not content.get("error") and {k: content.get(k) for k in expected} == expected:
                return
        except (OSError, ValueError):
            pass  # not written yet
        if time.monotonic() > deadline:
            raise PerfnetInputError(path, f"rank 0 did not finish preparing {what} within {limit:.0f} s")
        time.sleep(0.5)


def _as_rank_zero(marker: Path, step: Callable[[], dict[str, Any]]) -> None:
    """Run ``step`` and write its result to ``marker`` (or the error, then raise it again)."""
    try:
        content = step()
    except BaseException as exc:
        _write_marker(marker, {"error": str(exc) or type(exc).__name__})
        raise
    _write_marker(marker, content)


def prepare_cohort(
    studies: list[CohortStudy],
    cohort: Path,
    out: Path,
    recipe: SliceRecipe,
    writer: bool,
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
    reuse: list[Path] | None = None,
) -> list[PreparedStudy]:
    """Targets (conventional methods) and slices of every study, made by rank 0 (``writer``)
    and waited for by the others; the prepared studies, in ``studies``' order. ``reuse``: other
    run folders whose prepared slices are adopted where their arrays are these."""
    since = time.time()
    names = [s.name for s in studies]
    tree = out / "targets" / recipe.targets if is_conventional(recipe.targets) else None
    if tree is not None:
        marker = out / ".ready-targets.json"
        expected = {"method": recipe.targets, "studies": names}
        if writer:

            def targets() -> dict[str, Any]:
                compute_targets(studies, cohort, recipe.targets, tree, jobs, scheduler, progress)
                return expected

            _as_rank_zero(marker, targets)
        else:
            await_marker(marker, expected, since, f"the {recipe.targets} targets")
    root = out / "slices"
    marker = out / ".ready-slices.json"

    def slices() -> dict[str, Any]:
        keys = {s.name: slice_key(s, recipe, tree) for s in studies}
        donors = [Path(r) / "slices" for r in reuse or [] if Path(r).resolve() != out.resolve()]
        prepare_slices(studies, recipe, root, tree, keys, progress, jobs, donors)
        return {"keys": keys}

    if writer:
        _as_rank_zero(marker, slices)
    else:
        keys = {s.name: slice_key(s, recipe, tree) for s in studies}
        await_marker(marker, {"keys": keys}, since, "the slices")
    return [PreparedStudy.open(root / name) for name in names]
