"""`perfnet evaluate PRED_ROOT REF_ROOT --out DIR`: a predicted cohort against a reference cohort.

A study is any folder holding ``<map>.nii.gz`` files (``perfnet analyze`` output, a phantom's
``truth/``) or BIDS-named ones (``…_<map>.nii.gz``: a real cohort's ``perfusion-maps/``, or the
``perf/`` folders of ``perfnet analyze --bids``, where ``desc`` picks the method when several
share a folder). Its name is its path under the root without the
``truth`` / ``perfusion-maps`` / ``maps`` component, parts joined by ``_`` — so
``PRED/sub-0001_ses-01/`` pairs with ``REF/sub-0001/ses-01/truth/``. Map metrics are computed in
the reference's brain mask (``brain.nii.gz`` or ``brain_mask.nii.gz``); masks (``core``,
``hypoperfused``, ``penumbra``) give Dice and volumes. Writes ``metrics.csv`` (one row per study),
``summary.json`` (means, SDs and the volume agreement statistics: Pearson r, Bland–Altman, CR,
ICC(1,k)) and ``figures/`` (Bland–Altman and scatter plots of the volumes).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from perfnet.errors import PerfnetInputError
from perfnet.evaluation.metrics import dice, map_metrics
from perfnet.evaluation.stats import agreement, friedman
from perfnet.io import load_map
from perfnet.io.output import atomic_output_dir
from perfnet.lesions import voxel_volume_ml

MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp")
MASKS = ("core", "hypoperfused", "penumbra")
SKIP_PARTS = {"truth", "perfusion-maps", "maps", "perf"}


def _stem(path: Path) -> str:
    return path.name.split(".nii")[0]


def _is_map_file(path: Path) -> bool:
    stem = _stem(path)
    return stem in MAPS or any(stem.endswith(f"_{m}") for m in MAPS)


def map_file(folder: Path, name: str, desc: str | None = None) -> Path | None:
    """``<name>.nii[.gz]`` in ``folder``, or its one BIDS-named file (``…_<name>``; masks also
    ``…_label-<name>_…_mask``; the brain mask ``…_brainmask``), of method ``desc`` if given."""
    for candidate in (folder / f"{name}.nii.gz", folder / f"{name}.nii"):
        if candidate.is_file():
            return candidate
    suffixes = (f"_{name}",) + ((f"_{name}", "_brainmask") if name in ("brain", "brain_mask") else ())
    found = [
        p
        for p in sorted(folder.glob("*.nii*"))
        if _stem(p).endswith(suffixes) or (f"_label-{name}_" in p.name and _stem(p).endswith("_mask"))
    ]
    if desc is not None:
        found = [p for p in found if f"_desc-{desc}_" in p.name]
    if len(found) > 1:
        raise PerfnetInputError(
            folder, f"several {name} maps ({found[0].name}, {found[1].name}): choose one with --desc"
        )
    return found[0] if found else None


def find_studies(root: str | Path) -> dict[str, Path]:
    """Study name → folder of every folder under ``root`` that holds at least one map."""
    root = Path(root)
    if not root.is_dir():
        raise PerfnetInputError(root, "folder not found")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.nii*")):
        if not _is_map_file(path):
            continue
        folder = path.parent
        parts = [p for p in folder.relative_to(root).parts if p not in SKIP_PARTS]
        name = "_".join(parts) if parts else root.name
        found.setdefault(name, folder)
    if not found:
        raise PerfnetInputError(root, "no study folders with maps (cbf.nii.gz, tmax.nii.gz …) found")
    return found


def _load(folder: Path, name: str, desc: str | None = None) -> np.ndarray | None:
    path = map_file(folder, name, desc)
    return None if path is None else load_map(path)[0]


def _brain(folder: Path, desc: str | None = None) -> np.ndarray | None:
    for name in ("brain", "brain_mask"):
        arr = _load(folder, name, desc)
        if arr is not None:
            return arr > 0.5
    return None


def evaluate_study(pred_dir: Path, ref_dir: Path, desc: str | None = None) -> dict[str, Any]:
    """Metrics of one study (maps present in both, masks present in both); ``desc`` picks the
    predicted maps of one method in a BIDS folder holding several."""
    row: dict[str, Any] = {}
    brain = _brain(ref_dir)
    if brain is None:
        brain = _brain(pred_dir, desc)
    voxel_ml = _voxel_ml(ref_dir)
    for name in MAPS:
        pred, ref = _load(pred_dir, name, desc), _load(ref_dir, name)
        if pred is None or ref is None:
            continue
        if pred.shape != ref.shape:
            raise PerfnetInputError(
                pred_dir / f"{name}.nii.gz", f"shape {pred.shape} differs from the reference {ref.shape}"
            )
        mask = brain if brain is not None else np.ones(ref.shape, dtype=bool)
        row |= map_metrics(name, pred, ref, mask)
    for name in MASKS:
        pred, ref = _load(pred_dir, name, desc), _load(ref_dir, name)
        if pred is None or ref is None:
            continue
        p, r = pred > 0.5, ref > 0.5
        row[f"{name}_dice"] = dice(p, r)
        row[f"{name}_ml_pred"] = float(p.sum() * voxel_ml)
        row[f"{name}_ml_ref"] = float(r.sum() * voxel_ml)
    return row


def _voxel_ml(folder: Path) -> float:
    """Voxel volume from the first NIfTI's header (no image data is read)."""
    import nibabel as nib

    for path in sorted(folder.glob("*.nii*")):
        return voxel_volume_ml(nib.load(path).affine)
    return float("nan")


def _finite(values: list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[np.isfinite(arr)]


def evaluate_cohort(
    pred_root: str | Path,
    ref_root: str | Path,
    out: str | Path,
    others: dict[str, str | Path] | None = None,
    overwrite: bool = False,
    desc: str | None = None,
) -> dict[str, Any]:
    """Evaluate every study of ``pred_root`` that ``ref_root`` holds too; write the results to ``out``
    (checked and locked before any study is read; replaced as a whole).

    ``others`` (label → root) are further predicted cohorts compared by a Friedman test of the
    per-study Tmax MAEC (with ≥ 3 methods in all)."""
    with atomic_output_dir(Path(out), overwrite=overwrite, command="evaluate") as staging:
        summary, rows, columns = _evaluate(pred_root, ref_root, others, desc)
        with (staging / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _fmt(r.get(k)) for k in columns})
        (staging / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
        _figures(rows, staging / "figures")
    return summary


def _evaluate(
    pred_root: str | Path, ref_root: str | Path, others: dict[str, str | Path] | None, desc: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    preds, refs = find_studies(pred_root), find_studies(ref_root)
    names = sorted(set(preds) & set(refs))
    if not names:
        raise PerfnetInputError(
            pred_root,
            f"no study names in common with {ref_root} (e.g. {next(iter(preds))} vs {next(iter(refs))})",
        )
    rows = [{"study": n} | evaluate_study(preds[n], refs[n], desc) for n in names]
    columns = ["study", *sorted({k for r in rows for k in r if k != "study"})]
    summary: dict[str, Any] = {
        "pred_root": str(pred_root),
        "ref_root": str(ref_root),
        "studies": len(rows),
        "unpaired_predictions": sorted(set(preds) - set(refs)),
        "metrics": {},
        "volumes": {},
    }
    for col in columns[1:]:
        v = _finite([r.get(col, float("nan")) for r in rows])
        if v.size:
            summary["metrics"][col] = {
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                "median": float(np.median(v)),
                "n": int(v.size),
            }
    for mask in MASKS:
        if f"{mask}_ml_pred" in columns:
            pairs = [(r[f"{mask}_ml_pred"], r[f"{mask}_ml_ref"]) for r in rows if f"{mask}_ml_pred" in r]
            p, r_ = np.array(pairs, dtype=np.float64).T
            summary["volumes"][mask] = agreement(p, r_)
    if others:
        groups = {"prediction": [r.get("tmax_maec", float("nan")) for r in rows]}
        for label, root in others.items():
            studies = find_studies(root)
            groups[label] = [
                evaluate_study(studies[n], refs[n]).get("tmax_maec", float("nan"))
                if n in studies
                else float("nan")
                for n in names
            ]
        table = np.array(list(groups.values()), dtype=np.float64)
        complete = np.all(np.isfinite(table), axis=0)
        summary["friedman_tmax_maec"] = friedman(*table[:, complete]) | {
            "methods": list(groups),
            "mean": {k: float(np.nanmean(v)) for k, v in groups.items()},
        }
    return summary, rows, columns


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return "" if value is None else value


def _clean(obj: Any) -> Any:
    """NaN/inf → None so that summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _figures(rows: list[dict[str, Any]], folder: Path) -> None:
    """Bland–Altman and scatter plots of each mask's volumes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for mask in MASKS:
        pairs = [(r[f"{mask}_ml_pred"], r[f"{mask}_ml_ref"]) for r in rows if f"{mask}_ml_pred" in r]
        if len(pairs) < 2:
            continue
        p, r_ = np.array(pairs).T
        stats_ = agreement(p, r_)
        ba = stats_["bland_altman"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
        ax1.scatter(r_, p, s=14)
        top = float(max(p.max(), r_.max(), 1.0))
        ax1.plot([0, top], [0, top], "k--", lw=0.8)
        ax1.set(xlabel=f"reference {mask} (mL)", ylabel=f"predicted {mask} (mL)")
        ax1.set_title(f"Pearson r = {stats_['pearson']['r']:.3f}", fontsize=9)
        mean, diff = (p + r_) / 2, p - r_
        ax2.scatter(mean, diff, s=14)
        for y, style in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
            ax2.axhline(y, color="k", ls=style, lw=0.8)
        ax2.set(xlabel="mean of the two (mL)", ylabel="prediction − reference (mL)")
        ax2.set_title(
            f"bias {ba['bias']:.1f} mL, LoA [{ba['loa_low']:.1f}, {ba['loa_high']:.1f}]", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(folder / f"bland_altman_{mask}.png", dpi=100)
        plt.close(fig)
