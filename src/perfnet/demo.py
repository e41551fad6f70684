"""`perfnet demo`: simulate a CT stroke study, analyse it with the bundled CNN and with oSVD through
:func:`perfnet.analyze`, compare both against the phantom's truth (``comparison.json``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perfnet.errors import PerfnetInputError
from perfnet.registry import DEFAULT_METHOD

#: The demo study: a 256×256×8 CT with an MCA core and its penumbra.
OVERRIDES = {
    "matrix": 256,
    "slices": 8,
    "coverage_mm": 64.0,
    "lesion": "core",
    "territory": "MCA",
    "lesion_radius_mm": 35.0,
}


def run_demo(
    out: str | Path,
    seed: int = 2024,
    say: Callable[[str], None] = print,
    weights: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``out/phantom``, ``out/<method>/`` (a full output set each) and ``out/comparison.json``;
    returns the comparison. ``weights``: the CNN's (default: the bundled CT weights), e.g. a
    candidate from ``perfnet train`` compared with oSVD on the demo study."""
    from perfnet.evaluation import evaluate_study
    from perfnet.inference.weights import bundled_weights, load_weights
    from perfnet.phantom import write_cohort
    from perfnet.study import analyze

    started = time.perf_counter()
    if weights is not None:  # checked before anything is written
        _, config = load_weights(weights)
        if config.get("modality", "CT") != "CT":
            raise PerfnetInputError(weights, f"the demo study is CT; these weights are {config['modality']}")
    out = Path(out)
    say("perfnet demo: simulating a CT stroke study with the digital phantom ...")
    row = write_cohort(out / "phantom", "CT", 1, seed, overrides=OVERRIDES, overwrite=True)[0]
    series = next((out / "phantom").rglob("*_ctp.nii.gz"))
    truth = series.parent / "truth"
    methods = [DEFAULT_METHOD]
    if weights is not None:
        methods.insert(0, "cnn")
    else:
        try:
            bundled_weights("CT")
            methods.insert(0, "cnn")
        except PerfnetInputError as exc:
            say(f"  (no CNN: {exc})")
    comparison: dict[str, Any] = {
        "study": str(series),
        "truth": {k: round(float(row[f"{k}_ml"]), 1) for k in ("core", "penumbra", "hypoperfused")},
        "lesion": f"{row['lesion']} ({row['territory']}, {row['hemisphere']})",
        "weights": str(weights) if weights is not None else "bundled",
    }
    for method in methods:
        say(f"perfnet demo: analysing with {method} ...")
        # the CNN's core cross-checked against oSVD on the same series (perfnet.inference.crosscheck)
        check = {"weights": weights, "cross_check": "osvd"} if method == "cnn" else {}
        result = analyze(series, method, **check)
        result.save(out / method, overwrite=True)
        metrics = evaluate_study(out / method, truth)
        comparison[method] = {
            "volumes_ml": {k: result.lesions["volumes_ml"][k] for k in ("core", "penumbra", "hypoperfused")},
            "tmax_maec_s": round(metrics["tmax_maec"], 3),
            "hypoperfused_dice": round(metrics["hypoperfused_dice"], 3),
            "core_dice": round(metrics["core_dice"], 3),
            # how the core was read (the CNN's calibrated rule, its core head, or the plain rule)
            "core_rule": result.lesions["core_rule"],
            "cbf_mae": round(metrics["cbf_mae"], 2),
            "seconds": result.provenance["seconds"].get("total"),
            "qc": result.verdict,
            "qc_flags": [f["code"] for f in result.qc_flags],
            **(
                {"cross_check": result.provenance["cross_check"]}
                if "cross_check" in result.provenance
                else {}
            ),
            "report": str(out / method / "report.html"),
        }
    comparison["seconds"] = round(time.perf_counter() - started, 1)
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    return comparison | {"methods": methods}


def print_comparison(comparison: dict[str, Any], out: Path) -> None:
    t = comparison["truth"]
    print(f"\nstudy: {comparison['study']}  lesion: {comparison['lesion']}")
    head = ("core mL", 8), ("penumbra mL", 12), ("Tmax MAEC s", 12), ("hypo Dice", 10), ("core Dice", 10)
    print(f"{'':10s} " + " ".join(f"{name:>{width}s}" for name, width in head))
    print(f"{'truth':10s} {t['core']:8.1f} {t['penumbra']:12.1f}")
    for method in comparison["methods"]:
        c = comparison[method]
        v = c["volumes_ml"]
        print(
            f"{method:10s} {v['core']:8.1f} {v['penumbra']:12.1f} {c['tmax_maec_s']:12.2f}"
            f" {c['hypoperfused_dice']:10.3f} {c['core_dice']:10.3f}"
        )
    for method in comparison["methods"]:
        c = comparison[method]
        print(f"QC ({method}): {c['qc']}" + (f" ({', '.join(c['qc_flags'])})" if c["qc_flags"] else ""))
    check = comparison.get("cnn", {}).get("cross_check")
    if check:  # either direction of the CNN's core cross-check, as its flag says it
        cnn, inside = check["cnn_core_ml"], check["core_in_cnn_hypoperfused_ml"]
        region = "the CNN's hypoperfused region"
        said = {  # the record's key → the flag cnn_core_<key>
            "disagrees": f"oSVD calls {inside:.1f} mL of core inside {region}, the CNN {cnn:.1f} mL",
            "unsupported": f"the CNN calls {cnn:.1f} mL of core, oSVD {inside:.1f} mL inside {region}",
        }
        for key, says in said.items():
            if check.get(key):
                print(f"cross-check: {says}: flagged (cnn_core_{key})")
    for method in comparison["methods"]:
        print(f"report ({method}): {comparison[method]['report']}")
    print(f"comparison: {out / 'comparison.json'}  ({comparison['seconds']:.0f} s)")
