"""Candidate CNN weights against phantom truth, core first: per study Tmax MAEC, hypoperfused
Dice, and the core's Dice and volume from the weights' core head (when they carry one) and from the
rCBF < 30 % rule scaled by each calibration factor (the factor `tools/calibrate_core.py` would
store in the weights). Study sets:

- ``unseen`` (default): the seven unseen studies of tests/models/test_bundled.py (seeds
  4242–4848: a core with its penumbra, no motion; `predict` as the test runs it) and, for CT, the
  demo study (`perfnet demo`'s seed and overrides, analysed as the demo does);
- ``apart``: eight studies drawn as ``unseen``'s (seeds 5000–5007) with the lesion's delay drawn
  apart from its flow (``PhantomConfig.draw``'s ``delay_power`` 0.3–2, ``delay_mix`` 0.3–1: the
  core can sit at a moderate Tmax, as the demo's does); no trained phantom had such lesions
  before the ``ct-decoupled`` candidate;
- ``delay``: the seven studies of ``unseen``, each simulated three times with only the delay at
  the lesion's centre changed (7, 11.5, 16 s: the phantom's range for a core; its flow, volume,
  noise and everything else the same, so the true core read is the same at every delay). A
  network that reads the core's flow and not its delay reads it the same at each; the summary
  gives the median read per delay;
- ``noise``: the seven studies of ``unseen`` at lesion delay 11.5 s, each simulated four times
  with only the noise changed (CT tube current 40, 80, 160, 320 mAs: ≈ 24 … 8 HU; MR SNR 12, 25,
  50, 100; the training phantoms draw 50–400 mAs and SNR 15–150). A network that reads a noisy
  core towards the average brain (what a regression trained by MSE does where the curves say
  little: the stop-36 probes read seed 4343, 57 mAs, at 0.86 of healthy flow and 0.59 at 285 mAs)
  reads it higher at the low levels; the summary gives the median read and the core Dice per level;
- ``A`` / ``B``: the studies of benchmarks/generalisation.py of style A (geometric) or B (MNI
  template, never trained on): same seeds, lesion strata and size, motion drawn, analysed as
  `analyze --method cnn` analyses them (motion correction, CSF left out of the lesions).

    python benchmarks/candidate_core.py WEIGHTS [--modality CT|MR] [--set unseen|apart|delay|noise|A|B]
        [--style geometric|mni] [--studies 12] [--factors 1.0,1.2] [--json F]

``--style mni`` draws the seeds of ``unseen``, ``delay`` and ``noise`` in style B (the MNI-template
phantom, never trained on: other anatomy, residues, an FBP noise texture, leakage) instead of
style A, with the same overrides (128² × 8 over 64 mm, a core, no motion; no demo study), so a
screen can be read on both styles.

WEIGHTS ``a.pt,b.pt`` is an ensemble (its members' mean maps, as ``analyze --weights a.pt
--weights b.pt`` reads them; the members must share one core calibration, e.g. the folder
``tools/calibrate_core.py --weights a.pt b.pt --out DIR`` writes).

WEIGHTS ``osvd`` (or ``ssvd``, ``csvd``, ``tikhonov``, ``boxnlr``) measures that conventional
method on the same studies instead (sets ``unseen``, ``apart``, ``delay``, ``noise``; for ``A`` /
``B`` use benchmarks/generalisation.py ``--methods osvd``), so a candidate can be read against the
anchor.

A quick screen of a candidate's core before the 20-minute generalisation benchmark; it prints
absolute figures per study and the means (no timing). ``read_core`` is the median CNN CBF in the
true core over its median in healthy brain (Tmax ≤ 6 s), beside the same ratio of the truth: a
network that reads a core's flow by its delay reads a core at a short Tmax too high (``read_core_cbv``:
the same for CBV).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from perfnet.constants import CORE_PROBABILITY
from perfnet.evaluation import dice, maec
from perfnet.inference import predict
from perfnet.lesions import PRESETS, calibrated, segment_lesions, voxel_volume_ml
from perfnet.phantom.config import DrawOptions
from perfnet.phantom.styles import draw_config, simulate
from perfnet.training.core_calibration import MIN_CORE_ML

#: tests/models/test_bundled.py's unseen studies
SEEDS = tuple(range(4242, 4849, 101))
#: the ``delay`` set: the delays (s) at the lesion's centre each of :data:`SEEDS` is simulated with
DELAYS = (7.0, 11.5, 16.0)
#: the ``noise`` set: the lesion delay (s) and the noise levels each of :data:`SEEDS` is simulated at
NOISE_DELAY = 11.5
NOISE_LEVELS = {"CT": ("dose_mas", (40.0, 80.0, 160.0, 320.0)), "MR": ("snr", (12.0, 25.0, 50.0, 100.0))}
#: WEIGHTS that name a conventional method instead of a weights file
CONVENTIONAL = ("osvd", "ssvd", "csvd", "tikhonov", "boxnlr")
#: the ``apart`` set: seeds and the ranges its lesion delays are drawn in
APART_SEEDS = tuple(range(5000, 5008))
APART = {"delay_power": (0.3, 2.0), "delay_mix": (0.3, 1.0)}


def _core_read(value: np.ndarray, truth: dict, masks: dict, name: str = "cbf") -> list[float]:
    """Median ``name`` (CBF, CBV) in the true core over its median in healthy brain, CNN and truth."""
    healthy = masks["brain"] & (truth["tmax"] <= 6.0)
    core = masks["core"]
    return [
        round(float(np.median(c[core]) / max(float(np.median(c[healthy])), 1e-6)), 3)
        for c in (value, truth[name])
    ]


def _row(
    name: str,
    maps: Any,
    truth: dict,
    masks: dict,
    affine: np.ndarray,
    factors: list[float],
    exclude: np.ndarray | None = None,
) -> dict:
    brain, true_core = masks["brain"], masks["core"]
    ml = voxel_volume_ml(affine)
    row: dict = {
        "study": name,
        "tmax_maec": round(maec(maps["tmax"][brain], truth["tmax"][brain], None, (0.0, 20.0)), 3),
        "hypo_dice": round(dice(maps["tmax"][brain] > 6, truth["tmax"][brain] > 6), 3),
        "true_core_ml": round(float(true_core.sum() * ml), 1),
    }
    has_core = row["true_core_ml"] >= MIN_CORE_ML
    if has_core:
        row["true_core_tmax_s"] = round(float(np.median(truth["tmax"][true_core])), 2)
        row["read_core"] = _core_read(maps["cbf"], truth, masks)
        if "cbv" in truth:
            row["read_core_cbv"] = _core_read(maps["cbv"], truth, masks, "cbv")
    args = (maps["cbf"], maps["tmax"], brain, affine)
    cores = {}
    if CORE_PROBABILITY in maps.maps:
        head = maps.provenance.get("core_head") or {}
        cores["head"] = segment_lesions(
            *args,
            PRESETS["rapid"],
            exclude,
            core_probability=maps[CORE_PROBABILITY],
            core_threshold=float(head.get("threshold", 0.5)),
        ).core
    for f in factors:
        cores[f"{f:g}"] = segment_lesions(*args, replace(PRESETS["rapid"], cbf_calibration=f), exclude).core
    own = maps.provenance.get("core_calibration")
    if own:  # the rule the weights carry, as analyze applies it (its offset included)
        own_rule = calibrated(PRESETS["rapid"], own)  # a CBV weight reads the CBV map too
        cores["own"] = segment_lesions(*args, own_rule, exclude, cbv=maps.maps.get("cbv")).core
    for key, core in cores.items():
        volume = round(float(core.sum() * ml), 1)
        row[f"core_{key}"] = [round(dice(core, true_core), 3) if has_core else None, volume]
    return row


def _unseen_config(args: argparse.Namespace, seed: int, **apart: Any) -> Any:
    """One study of the ``unseen`` seeds (or ``apart``'s, ``apart`` its delay ranges) drawn in
    ``--style``: 128² × 8 slices over 64 mm, a core with its penumbra, no motion."""
    return draw_config(
        args.style,
        seed,
        args.modality,
        DrawOptions(**apart),
        matrix=128,
        slices=8,
        coverage_mm=64.0,
        lesion="core",
        motion=False,
    )


def _model(weights: str) -> str | list[str]:
    """WEIGHTS as inference takes it: a conventional method's name, one file, or an ensemble's."""
    return weights.split(",") if "," in weights else weights


def _maps(series: Any, args: argparse.Namespace) -> Any:
    """The maps of ``series`` from the candidate weights (``predict`` as the bundled-weights test
    runs it) or from the conventional method WEIGHTS names."""
    if args.weights in CONVENTIONAL:
        from perfnet.conventional.pipeline import AnalysisOptions, analyze

        return analyze(series, AnalysisOptions(method=args.weights, device=args.device)).maps
    return predict(series, _model(args.weights), device=args.device, consistency=False)


def _demo_row(weights: str, factors: list[float], device: str) -> dict:
    """The demo study through :func:`perfnet.analyze` (motion correction and all), as the demo runs it."""
    from perfnet.demo import OVERRIDES
    from perfnet.io import load_map
    from perfnet.phantom import write_cohort
    from perfnet.study import analyze

    with tempfile.TemporaryDirectory() as tmp:
        write_cohort(Path(tmp), "CT", 1, 2024, overrides=OVERRIDES, overwrite=True)
        series = next(Path(tmp).rglob("*_ctp.nii.gz"))
        if weights in CONVENTIONAL:
            result = analyze(series, weights, device=device)
        else:
            result = analyze(series, "cnn", weights=_model(weights), device=device)
        t = series.parent / "truth"
        truth = {m: load_map(t / f"{m}.nii.gz")[0] for m in ("tmax", "cbf", "cbv")}
        masks = {m: load_map(t / f"{m}.nii.gz")[0] > 0 for m in ("brain", "core")}
        return _row("demo", result.maps, truth, masks, result.maps.affine, factors)


def _studies(args: argparse.Namespace, factors: list[float]) -> list[dict]:
    rows = []
    if args.set in ("delay", "noise"):
        # each unseen study simulated once per variant, one thing changed: (name, changes, row tags)
        if args.set == "delay":
            variants = [(f"{d:g} s", {"lesion_delay_s": d}, {"lesion_delay_s": d}) for d in DELAYS]
        else:
            field, levels = NOISE_LEVELS[args.modality]
            variants = [
                (
                    f"{field} {v:g}",
                    {"lesion_delay_s": NOISE_DELAY, field: v},
                    {"noise_level": f"{field} {v:g}"},
                )
                for v in levels
            ]
        for seed in SEEDS:
            drawn = _unseen_config(args, seed)
            for name, changes, tags in variants:
                study = simulate(replace(drawn, **changes))
                t = study.truth
                row = _row(
                    f"{seed} {name}", _maps(study.series, args), t.maps, t.masks, study.series.affine, factors
                )
                rows.append(row | tags)
                print(json.dumps(rows[-1]), flush=True)
        return rows
    if args.set in ("unseen", "apart"):
        apart = args.set == "apart"
        for seed in APART_SEEDS if apart else SEEDS:
            study = simulate(_unseen_config(args, seed, **(APART if apart else {})))
            maps = _maps(study.series, args)
            t = study.truth
            rows.append(_row(str(seed), maps, t.maps, t.masks, study.series.affine, factors))
            print(json.dumps(rows[-1]), flush=True)
        if args.modality == "CT" and not args.no_demo and not apart and args.style == "geometric":
            rows.append(_demo_row(args.weights, factors, args.device))
            print(json.dumps(rows[-1]), flush=True)
        return rows
    if args.weights in CONVENTIONAL:
        raise SystemExit(f"--set {args.set}: use benchmarks/generalisation.py --methods {args.weights}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generalisation import lesion_of, study_seed

    from perfnet.inference import analyze_cnn
    from perfnet.preprocess.mask import csf_mask

    style = {"A": "geometric", "B": "mni"}[args.set]
    for i in range(args.first, args.first + args.studies):
        seed = study_seed(style, args.modality, i)
        cfg = draw_config(style, seed, args.modality, matrix=128, slices=8, lesion=lesion_of(i))
        study = simulate(cfg)
        maps, seen = analyze_cnn(study.series, _model(args.weights), device=args.device)
        exclude = csf_mask(seen, maps.brain_mask)
        t = study.truth
        rows.append(_row(f"{seed} {lesion_of(i)}", maps, t.maps, t.masks, maps.affine, factors, exclude))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights")
    p.add_argument("--modality", choices=["CT", "MR"], default="CT")
    p.add_argument("--factors", default="1.0,1.2,1.4", help="core-rule calibration factors")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-demo", action="store_true", help="CT: skip the demo study")
    p.add_argument("--set", choices=["unseen", "apart", "delay", "noise", "A", "B"], default="unseen")
    p.add_argument(
        "--style",
        choices=["geometric", "mni"],
        default="geometric",
        help="unseen / delay / noise: the style their seeds are drawn in (mni: style B, never trained on)",
    )
    p.add_argument("--studies", type=int, default=12, help="A / B: studies (generalisation.py's)")
    p.add_argument("--first", type=int, default=0, help="A / B: index of the first study")
    p.add_argument("--json", type=Path)
    p.add_argument("--rows", type=Path, help="summarise the rows of an earlier --json (or of its log)")
    args = p.parse_args(argv)
    if args.style != "geometric" and args.set not in ("unseen", "delay", "noise"):
        p.error(f"--style {args.style}: sets unseen, delay and noise only (--set B: generalisation.py's)")
    factors = [float(f) for f in args.factors.split(",")]
    rows = _studies(args, factors) if args.rows is None else json.loads(args.rows.read_text())["rows"]
    scored = [r for r in rows if r["study"] != "demo"]
    print(
        f"means over {len(scored)} studies ({args.set}): Tmax MAEC"
        f" {np.mean([r['tmax_maec'] for r in scored]):.3f} s,"
        f" hypo Dice {np.mean([r['hypo_dice'] for r in scored]):.3f}"
    )
    cores = [r for r in scored if r["true_core_ml"] >= MIN_CORE_ML]
    empty = [r for r in scored if r["true_core_ml"] < MIN_CORE_ML]
    for key in [k.removeprefix("core_") for k in rows[0] if k.startswith("core_")]:
        k = f"core_{key}"
        big = [r[k][1] / r["true_core_ml"] for r in cores if r["true_core_ml"] >= 10]
        name = {"head": "head", "own": "the weights' own rule"}.get(key, f"rule x {key}")
        true_ml = sum(r["true_core_ml"] for r in cores)
        print(
            f"  {name}: core Dice {np.mean([r[k][0] for r in cores]):.3f} ({len(cores)} with a core),"
            f" core mL in all {sum(r[k][1] for r in cores):.1f} of {true_ml:.1f},"
            f" smallest found fraction of a core >= 10 mL {min(big, default=float('nan')):.2f},"
            f" false core max {max((r[k][1] for r in empty), default=0.0):.1f} mL ({len(empty)} without)"
        )

    def medians(pairs: list, label: str) -> None:
        if pairs:
            cnn, truth = np.median([c for c, _ in pairs]), np.median([t for _, t in pairs])
            print(f"  {label}: {cnn:.3f} / {truth:.3f} (medians of {len(pairs)})")

    medians(
        [r["read_core"] for r in rows if "read_core" in r],
        "core read (CNN / truth, median CBF in the true core over healthy brain)",
    )
    for delay in sorted({r["lesion_delay_s"] for r in rows if "lesion_delay_s" in r}):
        at = [r for r in rows if r.get("lesion_delay_s") == delay and "read_core" in r]
        tmax = np.median([r["true_core_tmax_s"] for r in at])
        medians([r["read_core"] for r in at], f"delay {delay:g} s (true core Tmax {tmax:.1f} s): core read")
    levels = {r["noise_level"]: None for r in rows if "noise_level" in r}  # in the order simulated
    for level in levels:
        at = [r for r in rows if r.get("noise_level") == level and "read_core" in r]
        medians([r["read_core"] for r in at], f"{level}: core read")
        rule = f"core_{factors[0]:g}"
        print(f"    {level}: core Dice (rule x {factors[0]:g}) {np.mean([r[rule][0] for r in at]):.3f}")
    medians([r["read_core_cbv"] for r in rows if "read_core_cbv" in r], "CBV read likewise")
    if args.json:
        args.json.write_text(json.dumps({"weights": args.weights, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
