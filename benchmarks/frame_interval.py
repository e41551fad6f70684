"""Accuracy against the frame interval: the CNN (routed, as ``perfnet analyze --method cnn``) and
oSVD on the same static studies acquired every 1, 2, 3 and 4 s.

Why: a network's training domain (:mod:`perfnet.inference.domain`) records the longest frame
interval of its training studies as measured (``ct.pt`` 2.0 s, flagged beyond 2.5 s), but the
CT recipes' last stage also thins frames (``--thin 1,1,2,4`` on a 1 s grid: half the samples see
effective intervals of 2 or 4 s). Whether a study with 3 s frames is really outside what the
network reads well is a measurement, not a recorded number: this is it.

Each study is drawn as ``benchmarks/generalisation.py`` draws it (same seeds and lesions, style A
``geometric`` and style B ``mni``, 128² × 8), static (motion off, so the interval alone changes),
and re-timed: uniform 1 s frames over the duration the style drew. The series is then
subsampled (every k-th frame, k = 1…4, phase 0: a real acquisition at k s with the same noise
per frame) and each subsample analysed as ``perfnet analyze`` does (the shared preprocessing,
the method, lesions with the ``rapid`` preset and contralateral reference), scored against the
truth. Printed per study and interval, then means per style, interval and method, with how many
studies the CNN flagged ``outside_training_domain``.

    python benchmarks/frame_interval.py [--studies 6] [--styles geometric,mni] [--steps 1,2,3,4]
        [--weights FILE] [--json OUT]

``--weights`` forces one network (default: routing, as ``analyze --method cnn`` without it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generalisation import _fmt, _mean, analyse, lesion_of, preprocessed, study_seed

METHODS = ("cnn", "osvd")
STEPS = (1, 2, 3, 4)


def study_at_1s(style: str, index: int, size: int, slices: int) -> Any:
    """generalisation.py's study ``index`` of ``style`` (CT), static, with uniform 1 s frames over
    the duration the style drew for it."""
    from perfnet.phantom.styles import draw_config, simulate

    seed = study_seed(style, "CT", index)
    shape = {"matrix": size, "slices": slices, "lesion": lesion_of(index), "motion": False}
    drawn = draw_config(style, seed, "CT", **shape)
    frames = round(float(drawn.frame_times()[-1])) + 1
    cfg = draw_config(style, seed, "CT", **shape, timing="uniform", frame_interval_s=1.0, frames=frames)
    return cfg, simulate(cfg)


def write_truth(study: Any, folder: Path) -> Path:
    """The study's truth maps written once (every subsample of it is scored against them)."""
    from perfnet.phantom.cohort import write_study

    write_study(study, folder, "sub-0001")
    return folder / "truth"


def score(
    method: str, prepared: Any, study: Any, truth: Path, weights: str | None, out: Path
) -> dict[str, Any]:
    """``method`` on the shared preprocessing ``prepared`` of a subsample (``preprocessed``: once
    per subsample, as ``perfnet analyze`` runs it before any method), written to ``out`` and scored
    against the written ``truth``."""
    from perfnet.evaluation import evaluate_study

    result = analyse(method, prepared, weights, out, study.truth)
    metrics = evaluate_study(out, truth)
    true_core = float(study.truth.parameters["volumes_ml"]["core"])
    found = float(result["lesions"]["volumes_ml"]["core"])
    provenance = result["maps"].provenance
    flags = [f["code"] for f in provenance.get("qc_flags", []) + result["lesions"]["qc_flags"]]
    return {
        "tmax_maec": float(metrics["tmax_maec"]),
        "hypoperfused_dice": float(metrics["hypoperfused_dice"])
        if study.truth.masks["hypoperfused"].any()
        else None,
        "core_dice": float(metrics["core_dice"]) if true_core > 0 else None,
        "core_ml": found,
        "true_core_ml": true_core,
        "false_core_ml": found if true_core == 0 else None,
        "outside": "outside_training_domain" in flags,
        "network": Path(str(provenance.get("weights", ""))).name if method == "cnn" else None,
        "seconds": round(result["seconds"], 1),
    }


def means(
    rows: list[dict[str, Any]], styles: list[str], key: str, points: list, methods: list[str]
) -> list[dict[str, Any]]:
    """Per style, point (the rows' ``key``: an interval, a cut) and method: the mean Tmax MAEC,
    hypoperfused and core Dice, the largest false core and how many studies were flagged
    ``outside_training_domain``."""
    table = []
    for style in styles:
        for point in points:
            for method in methods:
                sel = [r for r in rows if (r["style"], r[key], r["method"]) == (style, point, method)]
                false = [r["false_core_ml"] for r in sel if r["false_core_ml"] is not None]
                table.append(
                    {
                        "style": style,
                        key: point,
                        "method": method,
                        "tmax_maec": _mean([r["tmax_maec"] for r in sel]),
                        "hypoperfused_dice": _mean([r["hypoperfused_dice"] for r in sel]),
                        "core_dice": _mean([r["core_dice"] for r in sel]),
                        "false_core_max_ml": max(false) if false else None,
                        "outside": sum(r["outside"] for r in sel),
                        "studies": len(sel),
                    }
                )
    return table


def print_means(table: list[dict[str, Any]], key: str, unit: str) -> None:
    head = f"{'MAEC s':>7s} {'hypo':>6s} {'core':>6s} {'false mL':>9s} flagged"
    print(f"  {'style':9s} {unit:>4s} {'method':12s} {head}")
    for e in table:
        print(
            f"  {e['style']:9s} {e[key]:4g} {e['method']:12s} {_fmt(e['tmax_maec'], 2):>7s}"
            f" {_fmt(e['hypoperfused_dice'], 2):>6s} {_fmt(e['core_dice'], 2):>6s}"
            f" {_fmt(e['false_core_max_ml'], 1):>9s} {e['outside']}/{e['studies']}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=6, help="studies per style")
    parser.add_argument("--styles", default="geometric,mni")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="keep every k-th 1 s frame")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weights", help="one CNN weights file (default: routed bundled networks)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    steps = [int(k) for k in args.steps.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="frame_interval_") as tmp:
        for style in args.styles.split(","):
            for index in range(args.studies):
                cfg, study = study_at_1s(style, index, args.size, args.slices)
                truth = write_truth(study, Path(tmp) / f"{style}-{index}-truth")
                for k in steps:
                    series = study.series
                    sub = series.with_data(np.ascontiguousarray(series.data[..., ::k]), series.times[::k])
                    prepared = preprocessed(sub)
                    for method in methods:
                        out = Path(tmp) / f"{style}-{index}-{k}" / method
                        weights = args.weights if method == "cnn" else None
                        r = score(method, prepared, study, truth, weights, out)
                        r |= {"style": style, "study": index, "seed": cfg.seed, "lesion": cfg.lesion}
                        r |= {"interval_s": float(k), "frames": int(sub.times.size), "method": method}
                        rows.append(r)
                        print(
                            f"  {style:9s} #{index} {cfg.lesion:8s} {k} s ({r['frames']:3d} frames)"
                            f" {method:5s} MAEC {r['tmax_maec']:5.2f} s hypo {_fmt(r['hypoperfused_dice'])}"
                            f" core {_fmt(r['core_dice'])} {r['core_ml']:6.1f}/{r['true_core_ml']:6.1f} mL"
                            + (f" {r['network']}" if r["network"] else "")
                            + (" [outside_training_domain]" if r["outside"] else ""),
                            flush=True,
                        )
    print(f"\nmeans ({time.perf_counter() - started:.0f} s in all)")
    table = means(rows, args.styles.split(","), "interval_s", steps, methods)
    print_means(table, "interval_s", "s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "means": table}, indent=1))


if __name__ == "__main__":
    main()
