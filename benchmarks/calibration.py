"""Calibration of a CNN's per-voxel uncertainty on unseen phantom studies: the fraction of the truth
inside the predicted central 90 % interval (Laplace: |y − μ| ≤ b·ln 10), per map, over the brain
voxels (truth brain within the automatic mask) of every study pooled; 0.90 is calibrated, below is
over-confident.

Studies: N of style A (``geometric``) and N of style B (``mni``, the independent MNI-template
phantom), the seeds and lesion strata of ``benchmarks/generalisation.py`` (70000+ style A, 71000+
style B for CT; every other parameter drawn, motion included), disjoint from the bundled cohorts,
from the fit (10000–11119) and from the calibration set (12000+) of ``tools/fit_scale_head.py``.
Each runs through ``analyze_cnn`` (motion correction, the model, flips) as ``perfnet analyze
--method cnn`` runs it: without ``--weights``, routed by training domain, so a moving CT study is
read by the specialist ``ct-moving.pt`` with its own temperatures. Printed per style and map: the
coverage of the head alone (temperature 1) and with the per-map temperature stored in the weights
(nan where routing mixed networks), the range over studies, the mean absolute error and the mean
written scale b (map units). ``--moving``: the first N studies of each style drawn with head motion.

    python benchmarks/calibration.py [--studies 5] [--styles geometric,mni] [--modality ct]
        [--weights FILE] [--moving] [--size 128] [--slices 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generalisation import lesion_of, study_seed

LEVEL = 0.9
#: ``--moving`` looks for moving studies among the first this many indices of a style.
MAX_INDEX = 200


def temperatures(weights: Path | None, modality: str) -> dict[str, float]:
    """The per-map temperature stored in the weights (1 without one)."""
    from perfnet.inference.weights import bundled_weights, load_weights

    model, config = load_weights(weights or bundled_weights(modality))
    buffer = getattr(model, "scale_temperature", None)
    if buffer is None:
        return {m: 1.0 for m in config["maps"]}
    return {m: float(t) for m, t in zip(config["maps"], buffer, strict=True)}


def _config(style: str, modality: str, index: int, args: argparse.Namespace) -> Any:
    from perfnet.phantom.styles import draw_config

    seed = study_seed(style, modality, index)
    return draw_config(style, seed, modality, matrix=args.size, slices=args.slices, lesion=lesion_of(index))


def indices(style: str, modality: str, args: argparse.Namespace) -> list[int]:
    """The studies of a style: the first ``--studies``, or with ``--moving`` the first that many
    drawn with head motion (the studies routing gives a motion-trained specialist)."""
    if not args.moving:
        return list(range(args.studies))
    return [i for i in range(MAX_INDEX) if _config(style, modality, i, args).motion][: args.studies]


def run_study(style: str, modality: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    from perfnet.inference import analyze_cnn
    from perfnet.phantom.styles import simulate

    cfg = _config(style, modality, index, args)
    study = simulate(cfg)
    started = time.perf_counter()
    maps, _ = analyze_cnn(study.series, args.weights, device="cpu")
    brain = maps.brain_mask & study.truth.masks["brain"]
    used = Path(maps.provenance["weights"])  # without --weights: the network routing chose
    row: dict[str, Any] = {"style": style, "seed": cfg.seed, "lesion": cfg.lesion, "motion": bool(cfg.motion)}
    row["weights"], row["temperature"] = used.name, temperatures(used, modality)
    for name in [m for m in maps.maps if not m.endswith("_uncertainty")]:
        if f"{name}_uncertainty" not in maps.maps:
            raise SystemExit(f"calibration: the weights give no uncertainty for {name}")
        row[name] = {
            "error": (maps[name][brain] - study.truth.maps[name][brain]).astype(np.float64),
            "scale": maps[f"{name}_uncertainty"][brain].astype(np.float64),
        }
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def summarise(rows: list[dict[str, Any]], temps: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    half = np.log(1.0 / (1.0 - LEVEL))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for style in sorted({r["style"] for r in rows}):
        sel = [r for r in rows if r["style"] == style]
        table[style] = {}
        for name in temps:
            used = {r["temperature"][name] for r in sel}
            t = used.pop() if len(used) == 1 else float("nan")  # nan: routing mixed networks
            err = np.concatenate([r[name]["error"] for r in sel])
            b = np.concatenate([r[name]["scale"] for r in sel])
            # each study's written b over its own network's temperature (routing may mix networks)
            b_head = np.concatenate([r[name]["scale"] / r["temperature"][name] for r in sel])
            per_study = [float(np.mean(np.abs(r[name]["error"]) <= r[name]["scale"] * half)) for r in sel]
            table[style][name] = {
                "coverage_head": float(np.mean(np.abs(err) <= b_head * half)),
                "coverage": float(np.mean(np.abs(err) <= b * half)),
                "study_min": min(per_study),
                "study_max": max(per_study),
                "mae": float(np.mean(np.abs(err))),
                "mean_b": float(np.mean(b)),
                "temperature": t,
                "studies": float(len(sel)),
                "voxels": float(err.size),
                "networks": sorted({r["weights"] for r in sel}),
            }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--styles", default="geometric,mni")
    parser.add_argument("--modality", default="ct", choices=["ct", "mr"])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--moving", action="store_true", help="the first --studies studies with head motion of each style"
    )
    args = parser.parse_args()
    modality = args.modality.upper()
    temps = temperatures(args.weights, modality)
    rows = []
    for style in args.styles.split(","):
        for i in indices(style, modality, args):
            rows.append(run_study(style, modality, i, args))
            r = rows[-1]
            covered = " ".join(
                f"{m} {np.mean(np.abs(r[m]['error']) <= r[m]['scale'] * np.log(10)):.2f}" for m in temps
            )
            moving = "moving" if r["motion"] else ""
            print(
                f"  {style:9s} seed {r['seed']} {r['lesion']:8s} {moving:6s} {r['weights']:14s}"
                f" 90 % coverage: {covered}",
                flush=True,
            )
    table = summarise(rows, temps)
    print(f"\n{modality} CNN, fraction of truth inside the predicted 90 % interval (brain voxels, pooled)")
    head = ("style", "map", "head T=1", "with T", "T", "per study", "MAE", "mean b")
    print("  {:9s} {:5s} {:>9s} {:>7s} {:>6s} {:>11s} {:>8s} {:>8s}".format(*head))
    for style, maps in table.items():
        for name, s in maps.items():
            print(
                f"  {style:9s} {name:5s} {s['coverage_head']:9.3f} {s['coverage']:7.3f}"
                f" {s['temperature']:6.2f} {s['study_min']:5.2f}–{s['study_max']:4.2f}"
                f" {s['mae']:8.3f} {s['mean_b']:8.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
