"""BIDS derivatives: the maps of a study of a BIDS-like dataset, where BIDS tools expect them.

Layout (BIDS 1.9 derivatives; entities in BIDS order, ``desc`` = the method)::

    <dataset>/derivatives/perfnet/dataset_description.json     DatasetType "derivative", GeneratedBy
    <dataset>/derivatives/perfnet/sub-X/ses-Y/perf/
        sub-X_ses-Y_desc-<method>_<map>.nii.gz  + .json        cbf cbv mtt ttp tmax (+ _uncertainty)
        sub-X_ses-Y_desc-<method>_brainmask.nii.gz
        sub-X_ses-Y_label-<core|penumbra|hypoperfused>_desc-<method>_mask.nii.gz
        sub-X_ses-Y_desc-<method>_{lesions,provenance,aif}.json

Each map's sidecar holds ``Units``, ``Method``, the AIF source, ``SoftwareVersion`` and the raw
file it was derived from (``Sources``, a BIDS URI). Several methods share a session folder (their
``desc`` differs): a run replaces its own method's files as a whole and keeps the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perfnet import __version__
from perfnet.constants import MAP_UNITS
from perfnet.errors import PerfnetInputError
from perfnet.io.nifti import save_map
from perfnet.io.outputs import write_json
from perfnet.io.types import PerfusionMaps

PIPELINE = "perfnet"
BIDS_VERSION = "1.9.0"
_ENTITY = re.compile(r"(sub|ses)-([A-Za-z0-9]+)")


def entities(path: str | Path) -> dict[str, str]:
    """``sub`` and ``ses`` of a file of a BIDS-like dataset (from its name, else its folders)."""
    path = Path(path)
    found: dict[str, str] = {}
    for part in [path.name, *reversed(path.parent.parts)]:
        for key, value in _ENTITY.findall(part):
            found.setdefault(key, value)
    if "sub" not in found:
        raise PerfnetInputError(path, "not in a BIDS-like dataset: no sub-<label> in its name or folders")
    return found


def dataset_root(path: str | Path) -> Path:
    """The dataset folder: the nearest ancestor holding ``dataset_description.json``, else the
    folder above the ``sub-*`` folder."""
    path = Path(path).absolute()
    for folder in path.parents:
        if (folder / "dataset_description.json").is_file() and folder.name != PIPELINE:
            return folder
    for folder in path.parents:
        if folder.name.startswith("sub-"):
            return folder.parent
    raise PerfnetInputError(
        path, "not in a BIDS-like dataset: no dataset_description.json or sub-* folder above it"
    )


def is_derivatives_root(out: str | Path) -> bool:
    """An ``--out`` that names a derivatives folder (``…/derivatives`` or ``…/derivatives/<name>``)."""
    out = Path(out)
    return out.name == "derivatives" or out.parent.name == "derivatives"


def pipeline_root(input_path: str | Path, out: str | Path | None) -> Path:
    """``<dataset>/derivatives/perfnet`` (or ``out``, or ``out/perfnet`` when ``out`` is a
    ``derivatives`` folder)."""
    if out is None:
        return dataset_root(input_path) / "derivatives" / PIPELINE
    out = Path(out)
    return out / PIPELINE if out.name == "derivatives" else out


def session_folder(root: Path, found: dict[str, str]) -> Path:
    folder = root / f"sub-{found['sub']}"
    if "ses" in found:
        folder = folder / f"ses-{found['ses']}"
    return folder / "perf"


def prefix(found: dict[str, str]) -> str:
    return "_".join(f"{k}-{found[k]}" for k in ("sub", "ses") if k in found)


def desc_of(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", method)


def belongs_to(name: str, method: str) -> bool:
    """True for a file of this session folder written for ``method`` (its ``desc``)."""
    return f"_desc-{desc_of(method)}_" in name


def write_dataset_description(root: Path, source: Path | None) -> Path:
    """``dataset_description.json`` of the derivatives dataset (kept when it exists)."""
    path = root / "dataset_description.json"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    content: dict[str, Any] = {
        "Name": "perfnet perfusion maps",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": PIPELINE, "Version": __version__, "Description": "perfusion maps and lesions"}
        ],
    }
    if source is not None:
        content["SourceDatasets"] = [{"URL": "bids::"}]
    tmp = path.with_name(f".{path.name}.tmp")
    write_json(tmp, content)
    tmp.replace(path)
    return path


def write_bids_files(
    folder: Path,
    maps: PerfusionMaps,
    found: dict[str, str],
    json_files: dict[str, Any],
    source_name: str,
    aif_source: str | None,
) -> list[Path]:
    """The session's files of one method into ``folder`` (a staging folder)."""
    desc = desc_of(maps.method)
    stem = f"{prefix(found)}_desc-{desc}"
    written = []
    raw = (
        f"bids::sub-{found['sub']}/"
        + (f"ses-{found['ses']}/" if "ses" in found else "")
        + f"perf/{source_name}"
    )
    for name, array in maps.maps.items():
        base = name.removesuffix("_uncertainty")
        units = MAP_UNITS.get(base, "")
        path = folder / f"{stem}_{name}.nii.gz"
        save_map(array, maps.affine, path, descrip=f"{name} {units} perfnet {maps.method}", intent=name)
        sidecar = {
            "Units": units,
            "Description": f"{name.upper() if base == name else base.upper() + ' uncertainty'} ({units})",
            "Method": maps.method,
            "AIFSource": aif_source,
            "SoftwareVersion": __version__,
            "Sources": [raw],
        }
        if name.endswith("_uncertainty"):
            sidecar["Description"] = f"Laplace scale b of the CNN's {base.upper()} ({units})"
        write_json(folder / f"{stem}_{name}.json", sidecar)
        written += [path, folder / f"{stem}_{name}.json"]
    written.append(save_map(maps.brain_mask, maps.affine, folder / f"{stem}_brainmask.nii.gz"))
    for name, mask in maps.masks.items():
        path = folder / f"{prefix(found)}_label-{name}_desc-{desc}_mask.nii.gz"
        written.append(save_map(mask, maps.affine, path))
    for name, content in json_files.items():
        written.append(write_json(folder / f"{stem}_{name}.json", content))
    return written


def labels(subject: str | None, session: str | None) -> dict[str, str] | None:
    """Entities given explicitly (``--subject``/``--session``), checked to be BIDS labels."""
    if subject is None:
        if session is not None:
            raise PerfnetInputError("--session", "needs --subject")
        return None
    found = {"sub": subject} | ({"ses": session} if session else {})
    for key, value in found.items():
        if not value.isalnum():
            raise PerfnetInputError(
                f"--{'subject' if key == 'sub' else 'session'}", f"{value!r} is not alphanumeric"
            )
    return found


def destination(
    input_path: str | Path,
    out: str | Path | None,
    method: str,
    force: bool = False,
    subject: str | None = None,
    session: str | None = None,
) -> tuple[Path, Callable[[str], bool] | None, dict[str, Any] | None]:
    """The output folder of an analysis, which files of an earlier set it keeps, and the BIDS
    layout (None: perfnet's own layout in ``out``). ``force`` (``--bids``), or an ``out`` that is
    a derivatives folder, writes the session's ``perf/`` folder of ``derivatives/perfnet``, where
    other methods' files are kept."""
    if force or (out is not None and is_derivatives_root(out)):
        found = labels(subject, session) or entities(input_path)
        root = pipeline_root(input_path, out)
        layout = {"entities": found, "root": root, "stem": f"{prefix(found)}_desc-{desc_of(method)}"}
        return session_folder(root, found), (lambda name: not belongs_to(name, method)), layout
    if out is None:
        raise PerfnetInputError(
            "--out", "an output folder is required (or --bids, for the dataset's derivatives)"
        )
    return Path(out), None, None
