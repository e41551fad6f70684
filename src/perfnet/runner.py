"""`perfnet cohort`: every study of a dataset analysed into one BIDS derivatives tree, on this
machine or on a Dask cluster, resumable, with one failure never stopping the others.

Studies (:func:`discover`): ``*_ctp.nii[.gz]`` / ``*_dsc.nii[.gz]`` files of a BIDS-like dataset
(``perfnet simulate``'s layout, ISLES 2024's), or the DICOM series folders under ROOT (a study per
folder holding DICOM files; its BIDS label is a hash of its path, as DICOM folders are often named
after the patient). ``derivatives/`` folders are skipped.

Each study is one task: ``perfnet analyze STUDY --bids --out DERIV …`` in its own process (a crash,
a memory error or a killed worker costs that study only; maps are those of a serial run, bit for
bit), its outcome written to ``DERIV/logs/<study>_desc-<method>.json``. A study whose output set
is complete (its method's provenance in the session folder's manifest) is skipped unless
``overwrite``, so a killed cohort started again finishes only what is missing. ``cohort.tsv`` (one
row per study: status, QC verdict and flags, volumes, seconds, peak memory) and ``cohort.json``
(totals) are rebuilt from those records at the end of every run (and of every ``--part``).

Engines: a local pool of ``jobs`` concurrent processes (``threads`` BLAS/torch threads each, jobs ×
threads = the machine's cores by default), or a Dask scheduler address (the same task runs on the
cluster's workers, which must see ROOT and DERIV at the same paths). ``part=(k, n)`` takes every
n-th study from the k-th (1-based) of the sorted list, for SLURM array jobs without a scheduler.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfnet import __version__
from perfnet.errors import PerfnetInputError
from perfnet.io import bids
from perfnet.io.output import FolderLock, read_manifest

SUFFIXES = ("_ctp", "_dsc")
COLUMNS = [
    "study",
    "subject",
    "session",
    "status",
    "error",
    "qc_flags",
    "verdict",
    "core_ml",
    "hypoperfused_ml",
    "penumbra_ml",
    "core_source",
    "mismatch_ratio",
    "seconds",
    "peak_memory_gb",
]


@dataclass(frozen=True)
class Study:
    """One input of a cohort: its path and BIDS entities."""

    path: Path
    subject: str
    session: str | None

    @property
    def name(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


def _has_dicom(folder: Path) -> bool:
    """True when a file under ``folder`` starts like a DICOM file (preamble + "DICM")."""
    for path in folder.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError), path.open("rb") as f:
                if f.read(132)[128:132] == b"DICM":
                    return True
    return False


def discover(root: str | Path) -> list[Study]:
    """Every study under ``root``, sorted by name (see the module docstring): the NIfTI series of
    a BIDS-like dataset, else the DICOM series folders (ROOT's subfolders holding DICOM files, or
    ROOT itself when it holds them directly)."""
    root = Path(root)
    if not root.is_dir():
        raise PerfnetInputError(root, "no such folder")
    try:
        entries = sorted(root.rglob("*.nii*"))
        children = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "derivatives")
    except OSError as exc:
        raise PerfnetInputError(root, f"cannot read the folder ({exc.strerror})") from None
    studies: list[Study] = []
    for path in entries:
        stem = path.name.split(".nii")[0]
        if "derivatives" in path.relative_to(root).parts or not stem.endswith(SUFFIXES):
            continue
        found = bids.entities(path)
        studies.append(Study(path, found["sub"], found.get("ses")))
    if not studies:
        direct = any(p.is_file() for p in root.iterdir()) and _has_dicom_files(root)
        for folder in [root] if direct else [c for c in children if _has_dicom(c)]:
            digest = hashlib.sha1(str(folder.relative_to(root)).encode()).hexdigest()[:10]
            studies.append(Study(folder, f"dcm{digest}", None))
    names = [s.name for s in studies]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PerfnetInputError(root, f"several series labelled {duplicates[0]}")
    if not studies:
        raise PerfnetInputError(
            root, "no studies found (*_ctp.nii.gz / *_dsc.nii.gz files or DICOM series folders)"
        )
    return sorted(studies, key=lambda s: s.name)


#: BIDS datatype folders: a series in one of them belongs to the session folder above it.
DATATYPES = ("perf", "func", "anat", "dwi")


def find_adc(study: Study) -> Path | None:
    """The ADC map of a study (``perfnet cohort --find-adc``); None when there is none.

    - NIfTI study: the one NIfTI file under its session folder (the series' folder, or the one
      above a BIDS datatype folder) whose name holds "adc" in any case, e.g.
      ``dwi/sub-01_ses-01_ADC.nii.gz``;
    - DICOM study folder: the folder itself when one of its series is named ADC (SeriesDescription
      or ImageType; an exported study with the DSC and the ADC series side by side): the 4D reader
      takes the DSC series from it, the ADC reader the ADC series.

    Several are refused, naming the study."""
    if study.path.is_dir():
        from perfnet.io.dicom import named_series_count

        count = named_series_count(study.path, "ADC")
        if count > 1:
            raise PerfnetInputError(study.path, f"{count} series named ADC in its folder: keep one")
        return study.path if count == 1 else None
    if not study.path.is_file():
        return None
    folder = study.path.parent
    if folder.name in DATATYPES:
        folder = folder.parent
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p != study.path
        and "adc" in p.name.lower()
        and p.name.endswith((".nii", ".nii.gz"))
    )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found)
        raise PerfnetInputError(study.path, f"several ADC maps in its session folder ({names}): keep one")
    return found[0] if found else None


def _has_dicom_files(folder: Path) -> bool:
    for path in folder.iterdir():
        if path.is_file():
            with contextlib.suppress(OSError), path.open("rb") as f:
                if f.read(132)[128:132] == b"DICM":
                    return True
    return False


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` → (K, N) with 1 ≤ K ≤ N, or a one-line error."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise PerfnetInputError("--part", f"expected K/N with 1 ≤ K ≤ N (e.g. 3/10), got {text!r}")
    return int(match[1]), int(match[2])


def select_part(studies: list[Study], part: tuple[int, int] | None) -> list[Study]:
    if part is None:
        return studies
    k, n = part
    return studies[k - 1 :: n]


def _log_path(deriv: Path, study: Study, method: str) -> Path:
    return deriv / "logs" / f"{study.name}_desc-{bids.desc_of(method)}.json"


def is_complete(deriv: Path, study: Study, method: str) -> bool:
    """The study's output set of this method is in place (atomic: all of it or nothing)."""
    folder = bids.session_folder(
        deriv, {"sub": study.subject} | ({"ses": study.session} if study.session else {})
    )
    manifest = read_manifest(folder) or {}
    stem = f"{bids.prefix({'sub': study.subject, **({'ses': study.session} if study.session else {})})}"
    return f"{stem}_desc-{bids.desc_of(method)}_provenance.json" in manifest.get("files", [])


def study_command(
    study: Study, deriv: Path, method: str, options: list[str], adc: Path | None = None
) -> list[str]:
    command = [sys.executable, "-m", "perfnet.cli", "analyze", str(study.path), "--bids", "--out", str(deriv)]
    command += ["--method", method, "--subject", study.subject, "--overwrite"]
    if study.session:
        command += ["--session", study.session]
    if adc is not None:
        command += ["--adc", str(adc)]
    return command + list(options)


def _die_with_parent() -> None:
    """In the study's process: SIGKILL it when the process that started it dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed cohort leaves no study running on, holding its folder."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1


def run_study(command: list[str], threads: int) -> dict[str, Any]:
    """Run one study's command in its own process; exit status, the last stderr line, seconds and
    the process's peak resident memory. Used by both engines (a Dask worker runs it as well)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        preexec_fn=_die_with_parent,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [x for x in err.strip().splitlines() if x.startswith("perfnet: ") and "warning" not in x[:18]]
    return {
        "code": proc.returncode,
        "error": lines[-1] if lines else (err.strip().splitlines()[-1] if err.strip() else ""),
        "seconds": round(time.perf_counter() - started, 2),
        "peak_memory_gb": round(usage.ru_maxrss / 1024**2, 3),  # ru_maxrss is in KiB on Linux
    }


def _record(deriv: Path, study: Study, method: str, outcome: dict[str, Any]) -> dict[str, Any]:
    code = outcome.get("code")
    status = "done" if code == 0 else ("failed" if code in (1, 2) else "crashed")
    record = {
        "study": study.name,
        "method": method,
        "status": status,
        "exit_status": code,
        "error": "" if code == 0 else str(outcome.get("error", ""))[:300],
        "seconds": outcome.get("seconds"),
        "peak_memory_gb": outcome.get("peak_memory_gb"),
        "perfnet_version": __version__,
    }
    path = _log_path(deriv, study, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    return record


class LocalEngine:
    """``jobs`` studies at a time on this machine, each in its own process."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.jobs, self.threads = jobs, threads

    def run(
        self, tasks: list[tuple[Study, list[str]]], done: Callable[[Study, dict[str, Any]], None]
    ) -> None:
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            pending: dict[Future, Study] = {}
            queue = list(tasks)
            while queue or pending:
                while queue and len(pending) < self.jobs:
                    study, command = queue.pop(0)
                    pending[pool.submit(run_study, command, self.threads)] = study
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    study = pending.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as exc:  # the process could not even start
                        outcome = {"code": -1, "error": f"{type(exc).__name__}: {exc}"}
                    done(study, outcome)


class DaskEngine:
    """The same tasks on an existing Dask cluster (``tcp://host:8786``) or a ``distributed.Client``."""

    def __init__(self, scheduler: Any, threads: int = 1) -> None:
        from distributed import Client

        self.threads = threads
        if isinstance(scheduler, str):
            try:
                self.client = Client(scheduler, timeout="10s")
            except OSError as exc:
                raise PerfnetInputError("--scheduler", f"cannot reach {scheduler} ({exc})") from None
            self.owned = True
        else:
            self.client, self.owned = scheduler, False

    def run(
        self, tasks: list[tuple[Study, list[str]]], done: Callable[[Study, dict[str, Any]], None]
    ) -> None:
        from distributed import as_completed

        futures = {
            self.client.submit(
                run_study, command, self.threads, pure=False, key=f"perfnet-{study.name}-{i}"
            ): study
            for i, (study, command) in enumerate(tasks)
        }
        for future in as_completed(futures):
            study = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # KilledWorker: the worker died on this study (and its retries)
                outcome = {"code": -9, "error": f"worker lost: {type(exc).__name__}"}
            done(study, outcome)
        if self.owned:
            self.client.close()


def _session(study: Study) -> dict[str, str]:
    return {"sub": study.subject} | ({"ses": study.session} if study.session else {})


def _row(deriv: Path, study: Study, method: str) -> dict[str, Any]:
    row: dict[str, Any] = {"study": study.name, "subject": study.subject, "session": study.session or ""}
    log = _log_path(deriv, study, method)
    record = json.loads(log.read_text()) if log.is_file() else {}
    complete = is_complete(deriv, study, method)
    row["status"] = "done" if complete else record.get("status", "pending")
    row["error"] = "" if complete else record.get("error", "")
    row["seconds"] = record.get("seconds", "")
    row["peak_memory_gb"] = record.get("peak_memory_gb", "")
    if complete:
        stem = f"{bids.prefix(_session(study))}_desc-{bids.desc_of(method)}"
        folder = bids.session_folder(deriv, _session(study))
        lesions = json.loads((folder / f"{stem}_lesions.json").read_text())
        provenance = json.loads((folder / f"{stem}_provenance.json").read_text())
        flags = [f["code"] for f in provenance.get("qc_flags", [])]
        row["qc_flags"] = ",".join(flags)
        row["verdict"] = provenance.get("qc_verdict", "review" if flags else "ok")
        v = lesions["volumes_ml"]
        row |= {"core_ml": v["core"], "hypoperfused_ml": v["hypoperfused"], "penumbra_ml": v["penumbra"]}
        row["core_source"] = lesions.get("core_source", "perfusion")
        row["mismatch_ratio"] = "" if lesions.get("mismatch_ratio") is None else lesions["mismatch_ratio"]
    return row


def write_summary(deriv: Path, studies: list[Study], method: str, started: float) -> dict[str, Any]:
    """``cohort.tsv`` and ``cohort.json`` of every study of the cohort (all parts), rebuilt from
    the outputs and the per-study records under a lock."""
    rows = [_row(deriv, s, method) for s in studies]
    with FolderLock(deriv / "cohort.tsv"):
        lines = ["\t".join(COLUMNS)] + ["\t".join(str(r.get(c, "")) for c in COLUMNS) for r in rows]
        tmp = deriv / ".cohort.tsv.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(deriv / "cohort.tsv")
        counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "crashed", "pending")}
        seconds = [float(r["seconds"]) for r in rows if r["status"] == "done" and r["seconds"] != ""]
        memory = [float(r["peak_memory_gb"]) for r in rows if r["peak_memory_gb"] not in ("", None)]
        summary = {
            "perfnet_version": __version__,
            "method": method,
            "studies": len(rows),
            **counts,
            "median_seconds_per_study": sorted(seconds)[len(seconds) // 2] if seconds else None,
            "max_peak_memory_gb": max(memory) if memory else None,
            "last_run_seconds": round(time.perf_counter() - started, 1),
            "failures": {r["study"]: r["error"] for r in rows if r["status"] in ("failed", "crashed")},
        }
        tmp = deriv / ".cohort.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(deriv / "cohort.json")
    return summary


def run_cohort(
    root: str | Path,
    deriv: str | Path,
    method: str = "osvd",
    *,
    jobs: int = 1,
    threads: int | None = None,
    scheduler: Any = None,
    part: tuple[int, int] | None = None,
    overwrite: bool = False,
    options: list[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    studies: list[Study] | None = None,
    find_adc_maps: bool = False,
) -> dict[str, Any]:
    """Analyse every (missing) study of ``root`` into ``deriv``; returns cohort.json's content.
    ``studies``: these instead of :func:`discover`'s (``perfnet train``'s target step hands over
    the studies it trains on). ``find_adc_maps``: each study's ADC map (:func:`find_adc`) is
    handed to ``analyze --adc`` (the core from diffusion); a study without one keeps the perfusion
    core (cohort.tsv ``core_source``)."""
    started = time.perf_counter()
    studies = discover(root) if studies is None else sorted(studies, key=lambda s: s.name)
    deriv = Path(deriv).absolute()
    if deriv.exists() and not deriv.is_dir():
        raise PerfnetInputError(deriv, "exists and is not a folder")
    mine = select_part(studies, part)
    todo = [s for s in mine if overwrite or not is_complete(deriv, s, method)]
    adc = {s: find_adc(s) for s in todo} if find_adc_maps else {}  # every ADC found before any work
    if jobs < 1:
        raise PerfnetInputError("--jobs", "must be at least 1")
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // jobs)
    engine = DaskEngine(scheduler, threads=threads) if scheduler is not None else LocalEngine(jobs, threads)
    deriv.mkdir(parents=True, exist_ok=True)
    bids.write_dataset_description(deriv, Path(root))
    state = {
        "total": len(todo),
        "done": 0,
        "failed": 0,
        "skipped": len(mine) - len(todo),
        "started": time.perf_counter(),
    }

    def finished(study: Study, outcome: dict[str, Any]) -> None:
        record = _record(deriv, study, method, outcome)
        state["done" if record["status"] == "done" else "failed"] += 1
        if progress is not None:
            progress(state | {"study": study.name, "record": record})

    tasks = [(s, study_command(s, deriv, method, options or [], adc.get(s))) for s in todo]
    if tasks:
        engine.run(tasks, finished)
    return write_summary(deriv, studies, method, started) | {
        "this_run": {k: state[k] for k in ("total", "done", "failed", "skipped")}
    }
