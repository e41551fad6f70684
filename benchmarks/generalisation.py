"""Generalisation across phantom styles: the CNN (trained on style A only) against oSVD and box-NLR
on studies of style A (``geometric``) and of the independent style B (``mni``).

For every style and modality, N studies are simulated (128×128×8 unless ``--size``/``--slices``
say otherwise; seeds 70000+, disjoint from the tests (< 10000) and from the bundled cohorts
(10000–11119 CT, 20000–21089 MR, the mr-mixed candidate 22000–22011 and 23000–23011;
tools/train_weights.py); lesions stratified: study i is
lesion-free when i % 6 == 3, penumbra-only when i % 3 == 1, core with penumbra otherwise; all
other parameters drawn as the style draws them, motion included) and analysed as ``perfnet
analyze`` does (motion correction, the method, lesions with the default ``rapid`` preset and
contralateral reference, the outputs written and read back by ``evaluate_study``; the
preprocessing every method starts with -- non-steady-state frames dropped, motion correction,
unalignable frames interpolated, through-plane steps levelled, mask, timing and input QC:
:func:`perfnet.inference.series.prepare_series` -- runs once per study and every method is handed
it, as ``perfnet analyze`` does, flags and arterial-search exclusions included). Per study
and per method it prints Tmax MAEC (s, clipped to [0, 20]), hypoperfused Dice, core Dice (studies
with a true core), rCBF Pearson r (CBF / the median CBF of the contralateral non-hypoperfused
brain, over the truth brain), the Tmax bias (median signed error over the truth brain outside the
truth hypoperfused tissue: an offset every voxel shares, e.g. the SVD family's smoothed residue
peaking late, which MAEC alone mixes with noise), the core volume found and the QC flags raised (the CNN's
``outside_training_domain`` and ``cnn_inconsistent`` among them); per style the means, the false core
(mL found on lesion-free and penumbra-only studies, mean and max); then the cross-style gap of
each method (style B − style A).

    python benchmarks/generalisation.py [--studies 6] [--first 0] [--modality ct,mr] [--styles geometric,mni]
        [--methods cnn,osvd,boxnlr] [--weights FILE ...] [--candidate FILE ...] [--size 128]
        [--slices 8] [--set NAME=VALUE ...] [--json OUT]

``--methods`` takes ``cnn``, ``candidate``, any conventional method (``osvd``, ``boxnlr``,
``ssvd``, ``csvd``, ``tikhonov``) and ``truth``: the phantom's
true maps through the same lesion rule and contralateral reference, the rule's own ceiling (what
any method's maps could give it; e.g. ``--methods truth`` alone, seconds per study).

``--set NAME=VALUE`` (repeatable) overrides one drawn parameter of every study, every other
parameter drawn as before (the draws apply overrides after drawing): a factor ablation, e.g. style
B's studies with a residue family style A knows, ``--styles mni --set residue=exponential``, or
without truncation, ``--set truncated=false``; the names are the style's config fields, checked
before any study runs.

``--weights`` (repeatable, one file per modality, or ``a.pt,b.pt`` for an ensemble of files;
the modality is read from the file) scores
candidate CNN weights instead of the bundled ones: e.g. a model trained on style B, tested on
style A ("trained on B, tested on A"). ``--candidate`` (same form) adds the method ``candidate``:
a second CNN scored beside ``cnn`` on the very same studies (old against new weights in one run;
the simulation and the preprocessing are shared). E.g. the MR model alone:

    python benchmarks/generalisation.py --modality mr --methods cnn,osvd --candidate new-mr.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

SEED_BASE = 70000
STYLE_SEED_OFFSET = {"geometric": 0, "mni": 1000}
MODALITY_SEED_OFFSET = {"CT": 0, "MR": 100}
METHODS = ("cnn", "osvd", "boxnlr")


def lesion_of(index: int) -> str:
    """Stratified lesion kinds: every 6 studies hold 1 lesion-free, 2 penumbra-only, 3 with a core."""
    if index % 6 == 3:
        return "none"
    if index % 3 == 1:
        return "penumbra"
    return "core"


def study_seed(style: str, modality: str, index: int) -> int:
    return SEED_BASE + STYLE_SEED_OFFSET[style] + MODALITY_SEED_OFFSET[modality] + index


def relative_cbf_r(pred_cbf: np.ndarray, reference_cbf: float, truth: Any, affine: np.ndarray) -> float:
    """Pearson r of CBF / contralateral healthy median, predicted vs true, over the truth brain."""
    from perfnet.lesions import hemisphere_sides

    brain, hypo = truth.masks["brain"], truth.masks["hypoperfused"]
    true_cbf = truth.maps["cbf"]
    sides = hemisphere_sides(brain, affine)
    affected = None
    if hypo.any():
        counts = {s: int((hypo & (sides == s)).sum()) for s in (1, -1)}
        affected = max(counts, key=counts.get)
    pool = brain & ~hypo & ((sides == -affected) if affected is not None else True)
    if pool.sum() < 10:
        pool = brain & ~hypo
    true_ref = float(np.median(true_cbf[pool]))
    x = np.nan_to_num(pred_cbf[brain].astype(np.float64)) / max(reference_cbf, 1e-6)
    y = true_cbf[brain].astype(np.float64) / max(true_ref, 1e-6)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def preprocessed(series: Any) -> Any:
    """The preprocessing every method starts with (non-steady-state frames, motion correction,
    unalignable frames interpolated, through-plane steps levelled, brain mask, bolus timing and
    input QC: :func:`perfnet.preprocess.shared.preprocess`, what ``perfnet analyze`` runs before
    the method), done once per study and shared by the methods."""
    from perfnet.inference.series import prepare_series

    return prepare_series(series)


def analyse(
    method: str,
    prepared: Any,
    weights: str | list[str] | None,
    out: Path,
    truth: Any = None,
    time_scaling: bool | str | None = None,
) -> dict[str, Any]:
    """``perfnet analyze`` (cmd_analyze's path, no report) from the shared preprocessing
    ``prepared`` (each method gets its own shallow copy: the conventional pipeline releases the
    frames it has copied): maps (TTP from the first acquired frame), lesions, the outputs written
    to ``out``; the input QC flags and the voxels kept out of the arterial search are the shared
    step's, as in ``perfnet analyze``. Method ``truth``: the phantom's true maps and brain
    (``truth``) through the same lesion rule, what the rule gives on perfect maps. ``time_scaling``:
    how the CNN reads a slow bolus (``analyze --time-scaling``; None: the default, gated)."""
    from perfnet.conventional.pipeline import AnalysisOptions, analyze
    from perfnet.inference import analyze_cnn
    from perfnet.io.outputs import write_output_set
    from perfnet.io.types import PerfusionMaps
    from perfnet.lesions import PRESETS, segment_map_set

    started = time.perf_counter()
    series = prepared.series
    json_files: dict[str, Any] = {}
    if method == "truth":
        true_maps = {k: v for k, v in truth.maps.items() if k in ("cbf", "cbv", "mtt", "ttp", "tmax")}
        maps = PerfusionMaps(true_maps, series.affine, truth.masks["brain"], "truth", {"method": "truth"})
    elif method in ("cnn", "candidate"):
        maps, _ = analyze_cnn(
            series, weights, device="cpu", prepared=replace(prepared), time_scaling=time_scaling
        )
    else:
        options = AnalysisOptions(method=method, device="cpu")
        result = analyze(series, options, prepared=replace(prepared))
        maps = result.maps
        json_files["aif"] = result.aif.to_json(result.times)
    lesions = segment_map_set(maps, series, replace(PRESETS["rapid"], reference="contralateral"))
    seconds = time.perf_counter() - started
    write_output_set(maps, out, json_files | {"lesions": lesions, "provenance": maps.provenance})
    return {"maps": maps, "lesions": lesions, "seconds": seconds}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` items as draw overrides: VALUE read as JSON (``false``, ``1.5``,
    ``[1, 2]`` as a tuple), else taken as a string (``exponential``)."""
    from perfnet.errors import PerfnetInputError

    overrides: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise PerfnetInputError("--set", f"must be NAME=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[name.strip()] = tuple(value) if isinstance(value, list) else value
    return overrides


def run_study(
    style: str, modality: str, index: int, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    from perfnet.evaluation import evaluate_study
    from perfnet.inference.timescale import healthy_median
    from perfnet.phantom.cohort import write_study
    from perfnet.phantom.styles import draw_config, simulate

    seed = study_seed(style, modality, index)
    overrides = getattr(args, "overrides", {})  # main's --set; a caller's own namespace may have none
    drawn = {"matrix": args.size, "slices": args.slices, "lesion": lesion_of(index), **overrides}
    cfg = draw_config(style, seed, modality, **drawn)
    study = simulate(cfg)
    truth_dir = work / f"{style}-{modality}-{index}" / "truth-study"
    write_study(study, truth_dir, "sub-0001")
    truth = study.truth
    true_core = truth.parameters["volumes_ml"]["core"]
    started = time.perf_counter()
    # the truth row alone needs no preprocessing (only the series' grid)
    needs_series = set(args.methods) - {"truth"}
    prepared = preprocessed(study.series) if needs_series else SimpleNamespace(series=study.series)
    motion_seconds = time.perf_counter() - started
    rows = []
    for method in args.methods:
        out = work / f"{style}-{modality}-{index}" / method
        weights = {"cnn": args.weights_by_modality, "candidate": args.candidate_by_modality}
        result = analyse(
            method,
            prepared,
            weights.get(method, {}).get(modality),
            out,
            truth,
            getattr(args, "time_scaling", None),
        )
        metrics = evaluate_study(out, truth_dir / "truth")
        found_core = float(result["lesions"]["volumes_ml"]["core"])
        rows.append(
            {
                "style": style,
                "modality": modality,
                "study": index,
                "seed": seed,
                "lesion": cfg.lesion,
                "motion": bool(cfg.motion),
                "method": method,
                "tmax_maec": float(metrics["tmax_maec"]),
                "tmax_bias_s": tmax_bias(result["maps"], truth),
                "hypoperfused_dice": float(metrics["hypoperfused_dice"])
                if truth.masks["hypoperfused"].any()
                else None,
                "core_dice": float(metrics["core_dice"]) if true_core > 0 else None,
                "rcbf_r": relative_cbf_r(
                    result["maps"]["cbf"],
                    float(result["lesions"]["reference_cbf"]),
                    truth,
                    study.series.affine,
                ),
                "core_ml": found_core,
                "true_core_ml": float(true_core),
                "true_hypoperfused_ml": float(truth.parameters["volumes_ml"]["hypoperfused"]),
                "false_core_ml": found_core if true_core == 0 else None,
                "seconds": round(result["seconds"] + motion_seconds, 2),
                # a slow bolus the CNN read on a compressed time axis (perfnet.inference.timescale)
                "time_scale": (result["maps"].provenance.get("time_scale") or {}).get("factor"),
                # the method's own healthy Tmax: the median over the brain it reads <= 6 s (the gate's
                # measure, perfnet.inference.timescale.healthy_median), against the truth's
                "healthy_tmax_s": healthy_median(result["maps"]["tmax"], result["maps"].brain_mask),
                "true_healthy_tmax_s": float(
                    np.median(truth.maps["tmax"][truth.masks["brain"] & ~truth.masks["hypoperfused"]])
                ),
                # the gated mode's reading of the healthy tissue as acquired, where the study is flagged
                "late_read_s": (result["maps"].provenance.get("time_scale_gate") or {}).get(
                    "healthy_tmax_median_s"
                ),
                # the study's flags: the method's and the lesion checks', as perfnet analyze merges them
                "flags": [
                    f["code"]
                    for f in result["maps"].provenance.get("qc_flags", []) + result["lesions"]["qc_flags"]
                ],
            }
        )
        r = rows[-1]
        moving = "moving" if cfg.motion else ""
        print(
            f"  {style:9s} {modality} #{index} seed {seed} {cfg.lesion:8s} {moving:6s} {method:9s}"
            f" MAEC {r['tmax_maec']:5.2f} s  bias {r['tmax_bias_s']:+5.2f} s"
            f"  hypo {_fmt(r['hypoperfused_dice'])}  core {_fmt(r['core_dice'])}"
            f"  rCBF r {_fmt(r['rcbf_r'])}  core {found_core:6.1f}/{true_core:6.1f} mL"
            f"  ({r['seconds']:.0f} s)"
            + (f"  time ×{r['time_scale']:.2f}" if r["time_scale"] else "")
            + (f"  (healthy Tmax {r['late_read_s']:.2f} s as acquired)" if r["late_read_s"] else "")
            + (f"  [{','.join(r['flags'])}]" if r["flags"] else ""),
            flush=True,
        )
    return rows


def tmax_bias(maps: Any, truth: Any) -> float:
    """Median signed Tmax error (s) over the truth brain outside the truth hypoperfused tissue."""
    healthy = maps.brain_mask & truth.masks["brain"] & ~truth.masks["hypoperfused"]
    if not healthy.any():
        return float("nan")
    return float(np.median(maps["tmax"][healthy] - truth.maps["tmax"][healthy]))


def _fmt(value: float | None, digits: int = 3) -> str:
    return " n/a " if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, float | None]]:
    table: dict[tuple[str, str, str], dict[str, float | None]] = {}
    for key in sorted({(r["modality"], r["style"], r["method"]) for r in rows}):
        sel = [r for r in rows if (r["modality"], r["style"], r["method"]) == key]
        false = [r["false_core_ml"] for r in sel if r["false_core_ml"] is not None]
        table[key] = {
            "tmax_maec": _mean([r["tmax_maec"] for r in sel]),
            "tmax_bias_s": _mean([r["tmax_bias_s"] for r in sel]),
            "hypoperfused_dice": _mean([r["hypoperfused_dice"] for r in sel]),
            "core_dice": _mean([r["core_dice"] for r in sel]),
            "rcbf_r": _mean([r["rcbf_r"] for r in sel]),
            "false_core_ml": _mean(false),
            "false_core_max_ml": max(false) if false else None,
            "studies": float(len(sel)),
        }
    return table


METRICS = (
    ("tmax_maec", "Tmax MAEC s"),
    ("tmax_bias_s", "Tmax bias s"),
    ("hypoperfused_dice", "hypo Dice"),
    ("core_dice", "core Dice"),
    ("rcbf_r", "rCBF r"),
    ("false_core_ml", "false core mL"),
    ("false_core_max_ml", "(max)"),
)


#: what the bundled networks trained on (their weights predate the training record of the styles)
BUNDLED_STYLES = "geometric (the bundled recipe's cohorts)"


def trained_on(config: dict[str, Any]) -> str:
    """The phantom styles a CNN's weights trained on, as the cross-style gap's header says them."""
    from perfnet.inference.weights import trained_styles

    styles = trained_styles(config)
    return "not recorded" if styles is None else (" + ".join(styles) or "no phantom")


def print_tables(
    table: dict[tuple[str, str, str], dict[str, float | None]], trained: dict[str, str] | None = None
) -> None:
    print("\nmeans per modality, style and method")
    header = f"  {'modality':8s} {'style':9s} {'method':9s} " + " ".join(
        f"{label:>13s}" for _, label in METRICS
    )
    print(header)
    for (modality, style, method), values in table.items():
        cells = " ".join(f"{_fmt(values[key], 2):>13s}" for key, _ in METRICS)
        print(f"  {modality:8s} {style:9s} {method:9s} {cells}")
    print("\ncross-style gap (style mni − style geometric)")
    for label, styles in (trained or {}).items():
        print(f"  {label} trained on: {styles}")
    print(f"  {'modality':8s} {'method':9s} " + " ".join(f"{label:>13s}" for _, label in METRICS[:6]))
    for modality in sorted({k[0] for k in table}):
        for method in sorted({k[2] for k in table if k[0] == modality}):
            a, b = table.get((modality, "geometric", method)), table.get((modality, "mni", method))
            if a is None or b is None:
                continue
            cells = []
            for key, _ in METRICS[:6]:
                va, vb = a[key], b[key]
                cells.append(f"{_fmt(None if va is None or vb is None else vb - va, 2):>13s}")
            print(f"  {modality:8s} {method:9s} " + " ".join(cells))


def print_worse_than_osvd(rows: list[dict[str, Any]]) -> None:
    """Studies where a CNN's hypoperfused Dice is more than 0.05 below oSVD's (the issue's bar)."""
    by_study: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_study.setdefault((r["modality"], r["style"], r["study"]), {})[r["method"]] = r
    for cnn in ("cnn", "candidate"):
        if not any(cnn in v for v in by_study.values()):
            continue
        print(f"\n{cnn}: hypoperfused Dice more than 0.05 below oSVD's")
        for modality, style in sorted({k[:2] for k in by_study}):
            studies = [
                v for k, v in by_study.items() if k[:2] == (modality, style) and {cnn, "osvd"} <= set(v)
            ]
            scored = [v for v in studies if v[cnn]["hypoperfused_dice"] is not None]
            worse = [
                v[cnn]["study"]
                for v in scored
                if v[cnn]["hypoperfused_dice"] < v["osvd"]["hypoperfused_dice"] - 0.05
            ]
            print(f"  {modality} {style:9s}: {len(worse)} of {len(scored)} studies {worse if worse else ''}")


def main(argv: list[str] | None = None) -> None:
    from perfnet.errors import PerfnetInputError
    from perfnet.inference.timescale import MODES
    from perfnet.inference.weights import bundled_weights, weights_config

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=6, help="studies per style and modality")
    parser.add_argument("--first", type=int, default=0, help="index of the first study (6: a check set)")
    parser.add_argument("--modality", default="ct,mr", help="ct, mr or ct,mr")
    parser.add_argument("--styles", default="geometric,mni")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weights", action="append", default=[], help="CNN weights (per modality)")
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        help="second CNN's weights, method 'candidate' (per modality)",
    )
    parser.add_argument(
        "--time-scaling",
        choices=MODES,
        help="how the CNN reads a slow bolus (analyze --time-scaling; default: gated, perfnet's own)",
    )
    parser.add_argument("--size", type=int, default=128, help="in-plane matrix")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write every row and the means here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one drawn parameter of every study (a JSON value, else a string), e.g."
        " residue=exponential, truncated=false: one factor changed, every other drawn as before",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="studies at a time (worker processes, one thread each)"
    )
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.overrides = parse_overrides(args.set)
    modalities = [m.strip().upper() for m in args.modality.split(",") if m.strip()]
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    if args.overrides:  # a misspelt name or a bad value fails here, before any study runs
        from perfnet.phantom.styles import draw_config

        for style in styles:
            for modality in modalities:
                draw_config(style, study_seed(style, modality, args.first), modality, **args.overrides)
    args.weights_by_modality, args.candidate_by_modality = {}, {}
    args.trained = {}  # "CT cnn" → the phantom styles its weights trained on
    for method, paths, by_modality in (
        ("cnn", args.weights, args.weights_by_modality),
        ("candidate", args.candidate, args.candidate_by_modality),
    ):
        for path in paths:  # "a.pt,b.pt": an ensemble of those files (their maps averaged)
            files = [f for f in path.split(",") if f]
            config = weights_config(files[0])  # the file's record, no model built
            modality = str(config.get("modality", "CT")).upper()
            by_modality[modality] = files if len(files) > 1 else files[0]
            args.trained[f"{modality} {method}"] = trained_on(config)
    if args.candidate and "candidate" not in args.methods:
        args.methods.append("candidate")
    if "cnn" in args.methods:
        for modality in modalities:
            if modality not in args.weights_by_modality:
                try:
                    bundled_weights(modality)
                except PerfnetInputError as exc:
                    print(f"generalisation: no CNN for {modality} ({exc})")
                    args.methods = [m for m in args.methods if m != "cnn"]
                    continue
                args.trained[f"{modality} cnn"] = BUNDLED_STYLES
    print(
        f"generalisation: {args.studies} studies per style {styles} and modality {modalities},"
        f" {args.size}²×{args.slices}, methods {args.methods}, seeds {SEED_BASE}+"
        + (f", set {args.overrides}" if args.overrides else ""),
        flush=True,
    )
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    studies = [
        (style, modality, index)
        for modality in modalities
        for style in styles
        for index in range(args.first, args.first + args.studies)
    ]
    with tempfile.TemporaryDirectory(prefix="perfnet-generalisation-") as tmp:
        if args.jobs > 1:  # the same rows, in the same order, whatever the count
            from perfnet.parallel import result, worker_pool

            with worker_pool(min(args.jobs, len(studies))) as pool:
                futures = [pool.submit(run_study, *study, args, Path(tmp)) for study in studies]
                for future in futures:
                    rows += result(future)
        else:
            for study in studies:
                rows += run_study(*study, args, Path(tmp))
    table = summarise(rows)
    print_tables(table, {k: v for k, v in sorted(args.trained.items()) if k.split()[1] in args.methods})
    print_worse_than_osvd(rows)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        means = [{"modality": k[0], "style": k[1], "method": k[2], **v} for k, v in table.items()]
        document = {"rows": rows, "means": means, "trained_on": args.trained, "overrides": args.overrides}
        args.json.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
