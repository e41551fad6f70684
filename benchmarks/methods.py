"""Which conventional method scores best on the phantom? (chooses `perfnet analyze`'s default)

Runs the whole pipeline (motion correction, filter, automatic AIF, deconvolution) with every
method on randomised noisy CT and MR phantom studies and prints, per method, the median absolute
relative error of CBF and CBV in the brain, Tmax MAEC (clip [0, 20] s), and the Dice of the
hypoperfused (Tmax > 6 s) segmentation against the truth. MR CBF is judged relative to the
contralateral-normal median (absolute DSC CBF depends on the AIF's partial volume).

A second table runs every method (the CNN included) on the nuisance corpus of
:mod:`perfnet.phantom.nuisance` (non-steady-state frames, motion, venous-only AIF candidates,
truncated acquisition, very low dose, late bolus): hypoperfused Dice, Tmax MAEC, the core found
outside the true hypoperfused tissue, the QC flags raised and whether the result is acceptable
(accurate, or one of the nuisance's flags raised). ``--nuisances-only`` skips the first table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import perfnet
from perfnet.conventional.pipeline import METHODS, AnalysisOptions, analyze
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.nuisance import NUISANCES, build, judge


def scores(maps: dict[str, np.ndarray], truth, relative: bool) -> dict[str, float]:
    brain = truth.masks["brain"]
    out = {}
    for name in ("cbf", "cbv"):
        est, ref = maps[name][brain].astype(float), truth.maps[name][brain].astype(float)
        if relative:
            est, ref = est / np.median(est), ref / np.median(ref)
        out[name] = float(np.median(np.abs(est / np.maximum(ref, 1e-6) - 1)))
    est_t, ref_t = maps["tmax"][brain], truth.maps["tmax"][brain]
    out["tmax_maec"] = float(np.mean(np.abs(np.clip(est_t, 0, 20) - np.clip(ref_t, 0, 20))))
    a, b = est_t > 6, truth.masks["hypoperfused"][brain]
    out["dice"] = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)) if b.sum() > 0 else float("nan")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--nuisances-only", action="store_true", help="only the nuisance table")
    parser.add_argument("--methods", default=",".join([*METHODS, "cnn"]), help="nuisance table methods")
    args = parser.parse_args(argv)
    if not args.nuisances_only:
        clean_table(args)
    nuisance_table(args.methods.split(","))


def nuisance_table(methods: list[str]) -> None:
    """Every method on every study of the nuisance corpus."""
    print(
        "\nnuisances: hypoperfused Dice / Tmax MAEC s / core outside the true lesion mL / core mL"
        " (truth); flags raised;"
    )
    print("  ok = accurate (Dice ≥ 0.8, false core ≤ 5 mL) or one of the nuisance's flags raised")
    print("  (clean and non-steady-state studies must be accurate: perfnet claims to handle them)")
    quiet = {"aif_partial_volume_high"}  # raised on most small studies: it says little here
    for name, nuisance in NUISANCES.items():
        study = build(name)
        print(
            f"  {name} ({nuisance.modality}: {nuisance.description}; right flags: "
            f"{', '.join(sorted(nuisance.flags)) or '-'})"
        )
        for method in methods:
            if method == "cnn" or method in METHODS:
                start = time.perf_counter()
                result = perfnet.analyze(study.series, method=method)
                j = judge(nuisance, study, result.maps, result.qc_flags)
                flags = ", ".join(f for f in j.flags if f not in quiet) or "-"
                verdict = "ok" if j.acceptable else "MISSED"
                print(
                    f"      {method:9s} {j.dice:5.2f} {j.tmax_maec:6.2f} {j.false_core_ml:6.1f}"
                    f" {j.core_ml:6.1f} ({j.true_core_ml:.0f})  {verdict:6s}"
                    f" {time.perf_counter() - start:5.1f} s  {flags}",
                    flush=True,
                )


def clean_table(args: argparse.Namespace) -> None:
    print(f"methods: pipeline accuracy on {args.cases} CT + {args.cases} MR noisy phantom studies")
    for modality in ("CT", "MR"):
        results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        seconds = dict.fromkeys(METHODS, 0.0)
        for i in range(args.cases):
            cfg = PhantomConfig.draw(
                args.seed + i, modality, matrix=128 if modality == "CT" else 96, slices=8, lesion="core"
            )
            study = simulate_study(cfg)
            for method in METHODS:
                start = time.perf_counter()
                result = analyze(study.series, AnalysisOptions(method=method))
                seconds[method] += time.perf_counter() - start
                results[method].append(scores(result.maps.maps, study.truth, relative=modality == "MR"))
        print(f"  {modality}: method   |CBF err| |CBV err| Tmax MAEC  Dice(Tmax>6)   s/study")
        for method in METHODS:
            r = {k: np.nanmean([x[k] for x in results[method]]) for k in results[method][0]}
            print(
                f"      {method:9s} {r['cbf']:8.2f} {r['cbv']:9.2f} {r['tmax_maec']:8.2f} s {r['dice']:10.3f}"
                f" {seconds[method] / args.cases:10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
