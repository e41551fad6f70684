"""Write phantom studies as a BIDS-like cohort with the truth beside each study.

    OUT/dataset_description.json
    OUT/participants.tsv
    OUT/sub-0001/ses-01/sub-0001_ses-01_ctp.nii.gz   (+ .json sidecar; MR: _dsc)
    OUT/sub-0001/ses-01/truth/{cbf,cbv,mtt,tmax,ttp}.nii.gz
    OUT/sub-0001/ses-01/truth/{brain,core,hypoperfused,penumbra,labels}.nii.gz
    OUT/sub-0001/ses-01/truth/aif.json  parameters.json  motion.json

Case i of a cohort drawn with ``--seed S`` uses seed S + i, so any case can be regenerated alone,
and ``jobs`` worker processes (``perfnet simulate --jobs``) write the same cohort as one process.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perfnet import __version__
from perfnet.io import atomic_output_dir, save_map, save_series_nifti
from perfnet.io.outputs import to_jsonable
from perfnet.phantom.config import DrawOptions
from perfnet.phantom.study import PhantomStudy
from perfnet.phantom.styles import DEFAULT_STYLE, check_style, draw_config, simulate, style_of

SUFFIX = {"CT": "ctp", "MR": "dsc"}


def study_name(index: int) -> str:
    return f"sub-{index:04d}"


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=to_jsonable) + "\n"


def write_study(study: PhantomStudy, folder: Path, name: str) -> Path:
    """Write one study and its truth into ``folder`` (created); returns the series path."""
    cfg, truth = study.config, study.truth
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_ses-01_{SUFFIX[cfg.modality]}"
    series_path = folder / f"{stem}.nii.gz"
    dtype = np.int16 if cfg.modality == "CT" else np.float32
    save_series_nifti(
        study.series,
        series_path,
        dtype=dtype,
        extra_sidecar={
            "Manufacturer": "perfnet phantom",
            "PhantomSeed": cfg.seed,
            "GeneratedBy": f"perfnet {__version__}",
        },
    )
    truth_dir = folder / "truth"
    truth_dir.mkdir()
    affine = study.series.affine
    for map_name, array in truth.maps.items():
        save_map(array, affine, truth_dir / f"{map_name}.nii.gz")
    for mask_name, mask in truth.masks.items():
        save_map(mask, affine, truth_dir / f"{mask_name}.nii.gz")
    save_map(truth.labels, affine, truth_dir / "labels.nii.gz", dtype=np.uint8)
    (truth_dir / "aif.json").write_text(
        _json(
            {
                "times": truth.times,
                "aif": truth.aif,
                "vof": truth.vof,
                "units": truth.parameters["aif"]["units"],
                "note": "arterial blood concentration (no partial volume) and venous output "
                "at the frame times",
            }
        )
    )
    (truth_dir / "motion.json").write_text(
        _json({"columns": ["tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg"], "frames": truth.motion})
    )
    (truth_dir / "parameters.json").write_text(_json({"style": style_of(cfg)} | truth.parameters))
    return series_path


def _simulate_and_write(config: Any, folder: Path, name: str) -> tuple[PhantomStudy, Path]:
    """One case, simulated and written (a worker process's task under ``jobs`` > 1)."""
    study = simulate(config)
    return study, write_study(study, folder, name)


def _cases(configs: list[Any], staging: Path, jobs: int) -> Iterator[tuple[PhantomStudy, Path]]:
    """Each case simulated and written into ``staging``, in case order; ``jobs`` > 1: that many
    worker processes (spawned, one thread each), so the cohort is the one a single process writes."""
    names = [study_name(i + 1) for i in range(len(configs))]
    if jobs <= 1 or len(configs) <= 1:
        for config, name in zip(configs, names, strict=True):
            yield _simulate_and_write(config, staging / name / "ses-01", name)
        return
    from perfnet.parallel import result, worker_pool

    with worker_pool(min(jobs, len(configs))) as pool:
        pending = deque(
            pool.submit(_simulate_and_write, config, staging / name / "ses-01", name)
            for config, name in zip(configs, names, strict=True)
        )
        while pending:  # each finished study's arrays held until it is consumed, not longer
            yield result(pending.popleft())


def participant_row(name: str, study: PhantomStudy) -> dict[str, Any]:
    cfg, vol = study.config, study.truth.parameters["volumes_ml"]
    return {
        "participant_id": name,
        "seed": cfg.seed,
        "modality": cfg.modality,
        "matrix": cfg.matrix,
        "slices": cfg.slices,
        "frames": cfg.frames,
        "lesion": cfg.lesion,
        "territory": cfg.territory if cfg.lesion != "none" else "n/a",
        "hemisphere": cfg.hemisphere if cfg.lesion != "none" else "n/a",
        "core_ml": round(vol["core"], 2),
        "hypoperfused_ml": round(vol["hypoperfused"], 2),
        "penumbra_ml": round(vol["penumbra"], 2),
        "noise_sd": round(cfg.effective_noise_sd, 3),
        "motion": cfg.motion,
        "style": style_of(cfg),
    }


def write_cohort(
    out: str | Path,
    modality: str,
    cases: int,
    seed: int,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    on_study: Callable[[str, PhantomStudy, Path], None] | None = None,
    overwrite: bool = False,
    style: str = DEFAULT_STYLE,
    jobs: int = 1,
    options: DrawOptions | None = None,
) -> list[dict[str, Any]]:
    """Simulate ``cases`` studies (seeds seed … seed+cases−1) of phantom ``style`` (``geometric``
    or ``mni``, see :mod:`perfnet.phantom.styles`) into the cohort folder ``out``, ``jobs`` at a
    time (worker processes; the same cohort whatever ``jobs``). ``options`` (style A,
    :class:`~perfnet.phantom.config.DrawOptions`): how each study is drawn beside its parameters
    (a lesion delay apart from its CBF drop, wider bolus, dispersion and residue families),
    recorded in ``dataset_description.json``.

    The cohort appears in ``out`` only once every study is written (nothing partial is left on
    failure). Returns the participants table rows.
    """
    out = Path(out)
    overrides = overrides or {}
    check_style(style)  # then validate every study's parameters before simulating any
    configs = [draw_config(style, seed + i, modality, options, **overrides) for i in range(cases)]
    rows: list[dict[str, Any]] = []
    indices: Iterable[int] = range(cases)
    if progress is not None:
        indices = progress(indices)
    with atomic_output_dir(out, overwrite=overwrite, command="simulate") as staging:
        done = _cases(configs, staging, jobs)
        for (study, series_path), i in zip(done, indices, strict=True):
            name = study_name(i + 1)
            rows.append(participant_row(name, study))
            if on_study is not None:
                on_study(name, study, out / series_path.relative_to(staging))
        header = list(rows[0]) if rows else ["participant_id"]
        lines = ["\t".join(header)] + ["\t".join(str(r[h]) for h in header) for r in rows]
        (staging / "participants.tsv").write_text("\n".join(lines) + "\n")
        (staging / "dataset_description.json").write_text(
            _json(
                {
                    "Name": "perfnet digital perfusion phantom cohort",
                    "BIDSVersion": "1.9.0",
                    "DatasetType": "raw",
                    "GeneratedBy": [{"Name": "perfnet", "Version": __version__}],
                    "Modality": modality.upper(),
                    "Seed": seed,
                    "PhantomStyle": style,
                    "Cases": cases,
                    "Overrides": overrides,
                    **(options or DrawOptions()).description(),
                }
            )
        )
    return rows
