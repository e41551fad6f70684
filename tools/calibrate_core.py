"""Calibrate the core rule for a CNN's CBF (issue 12, item 3): one factor stored in its weights.

    python tools/calibrate_core.py [--weights src/perfnet/weights/ct.pt] [--studies 24] [--out FILE]
    python tools/calibrate_core.py --weights a.pt b.pt --out DIR      # an ensemble: one rule for all

The clinical core is a ratio: hypoperfused tissue with CBF < 30 % of the healthy reference. A
network regressing CBF pulls the core's low values towards the population mean (the bundled CT
U-Net reads a true 5.7 mL/100 g/min core as about 9, style B 8 as 14), so the 30 % rule on its
maps under-calls the core. This fits the relative-CBF threshold that reproduces the phantom's
*truth* core best on held-out studies and stores it as a factor over the rule
(``config["core_calibration"]``; :mod:`perfnet.lesions` multiplies every core threshold by it when
it segments that model's maps, and lesions.json's ``core_rule`` says so). The maps themselves are
untouched (bit for bit those of the weights before).

Studies: ``--studies`` style-A (``geometric``) phantoms of the weights' modality, 128² × 8 slices,
every parameter drawn (motion included; ``--motion``: forced on, for a specialist that
reads moving studies only), lesions cycling core / core / penumbra / core / none /
core; seeds ``CALIBRATION_SEED`` + i, disjoint from the tests (< 10000), the training cohorts
(10000–11119, 12100–12299, 20000–23011), the scale head's calibration studies (12000–12099) and the
benchmarks (70000+; style B is never used here, so benchmarks/generalisation.py's style-B numbers
stay out-of-style). Each is analysed as ``perfnet analyze --method cnn`` analyses it (shared
preprocessing with motion correction, then the model); thresholds 0.15–0.80 in steps of 0.01
are scored by the mean core Dice against the truth core over the studies with a core, among the
thresholds that call no more core than there is in all (an over-called core can deny a patient
thrombectomy) and put no more than ``FALSE_CORE_ML`` of core into any study without one
(:mod:`perfnet.training.core_calibration`). ``--rows FILE`` keeps the per-study scores (JSON) and
reuses them when the file exists, so the choice can be re-made without analysing again. The
record also keeps how firmly the studies fix the choice (``bootstrap``: the threshold chosen on
200 resamples of them, 5th–95th percentile; the source line states it).

``--cut LO,HI``: the studies of every second block of six (i // 6 odd: 6–11, 18–23, …; each block
holds the whole lesion mix) end a drawn LO–HI s after the phantom's arterial arrival (uniform, from
the study's seed), the others as drawn: for a specialist that routing gives cut-short acquisitions
too (``ct-moving.pt`` also reads every CT study ending under 30 s after the arrival,
:data:`perfnet.inference.domain.ROUTED_WITHIN_MARGIN`), so its rule is fitted on what it reads.

``--offsets`` also fits an offset (:data:`perfnet.training.core_calibration.OFFSETS`, the network's
CBF units) with the threshold: core where CBF − offset < threshold × (reference − offset), the rule
read on the flow above the network's reading of no flow (``choose_offset``; the record's
``offset``, and ``references``, the lowest and highest reference CBF of the calibration studies,
inside which :mod:`perfnet.lesions` holds the offset's share of a study's threshold). For a network
whose regression puts a floor under a core's flow rather than scaling it (the MR network, stop 45).

``--cbv`` fits a CBV weight w (:data:`perfnet.training.core_calibration.CBV_WEIGHTS`) with the
threshold instead: core where the weighted geometric mean (rCBF · rCBV^w)^(1/(1+w)) < the threshold
(``choose_cbv_weight``; the record's ``cbv_weight``), for a network that reads a core's flow partly
by its delay and its blood volume without it (docs/cnn.md "A CBV-weighted core rule"). Not with
``--offsets``.

Several ``--weights`` calibrate an ensemble (``analyze --weights a.pt --weights b.pt``): the studies
are scored on the members' mean maps, as inference reads them, and every member is written into
the ``--out`` folder under its own name with the one shared record (``ensemble`` names the
members), since inference refuses an ensemble whose members carry different calibrations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_SEED = 16000
LESIONS = ("core", "core", "penumbra", "core", "none", "core")
CUT_STREAM = 0xC07  # --cut: the study's cut drawn from its seed and this


def parse_cut(text: str) -> tuple[float, float]:
    """``--cut LO,HI`` (seconds after the arterial arrival, 0 < LO <= HI)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"LO,HI seconds, got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"needs 0 < LO <= HI, got {text!r}")
    return lo, hi


def score_study(
    seed: int,
    lesion: str,
    weights: Path | list[Path],
    modality: str,
    motion: bool | None = None,
    offsets: bool = False,
    cut: tuple[float, float] | None = None,
    cbv: bool = False,
) -> dict:
    """One phantom study analysed as `perfnet analyze --method cnn` does, scored per threshold (and
    per offset with ``offsets``); ``motion`` True: head motion forced on (its amplitude still drawn);
    ``cut`` (lo, hi): the acquisition ends a drawn lo–hi s after the arterial arrival; ``cbv``:
    scored per CBV weight too."""
    from perfnet.inference import analyze_cnn
    from perfnet.phantom.styles import draw_config, simulate
    from perfnet.preprocess.mask import csf_mask
    from perfnet.training.core_calibration import CBV_WEIGHTS, OFFSETS, score_maps

    forced = {} if motion is None else {"motion": motion}
    cfg = draw_config("geometric", seed, modality, matrix=128, slices=8, lesion=lesion, **forced)
    study = simulate(cfg)
    series, cut_after_s = study.series, None
    if cut is not None:
        cut_after_s = float(np.random.default_rng([seed, CUT_STREAM]).uniform(*cut))
        keep = series.times <= cfg.arrival_s + cut_after_s
        series = series.with_data(np.ascontiguousarray(series.data[..., keep]), series.times[keep])
    maps, seen = analyze_cnn(series, weights, device="cpu")
    exclude = csf_mask(seen, maps.brain_mask)
    scored = score_maps(
        maps, study.truth.masks["core"], exclude, OFFSETS if offsets else None, CBV_WEIGHTS if cbv else None
    )
    cut_record = {} if cut_after_s is None else {"cut_after_s": round(cut_after_s, 2)}
    return {"seed": seed, "lesion": lesion, **cut_record, **scored}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights",
        type=Path,
        nargs="+",
        default=[ROOT / "src" / "perfnet" / "weights" / "ct.pt"],
        help="one weights file, or several: an ensemble calibrated on its mean maps",
    )
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument(
        "--out",
        type=Path,
        help="write the calibrated weights here (default: over --weights); a folder for an ensemble",
    )
    parser.add_argument("--rows", type=Path, help="per-study scores: reused if present, else written")
    parser.add_argument(
        "--motion",
        action="store_true",
        help="every study with head motion (amplitude drawn): for a specialist that routing gives"
        " moving studies only (ct-moving.pt)",
    )
    parser.add_argument(
        "--cut",
        type=parse_cut,
        metavar="LO,HI",
        help="every second block of six studies ends a drawn LO–HI s after the arterial arrival: for a"
        " specialist that also reads cut-short acquisitions (ct-moving.pt)",
    )
    parser.add_argument(
        "--offsets",
        action="store_true",
        help="fit an offset (the network's reading of no flow) with the threshold: for a network whose"
        " core reads a floor, not a fraction, of the truth (mr.pt)",
    )
    parser.add_argument(
        "--cbv",
        action="store_true",
        help="fit a CBV weight with the threshold: core where (rCBF · rCBV^w)^(1/(1+w)) is below it, for a"
        " network that reads a core's flow partly by its delay (docs/cnn.md)",
    )
    args = parser.parse_args()
    if args.cbv and args.offsets:
        parser.error("--cbv and --offsets: one or the other")
    members = list(args.weights)
    if len(members) > 1 and (args.out is None or args.out.is_file()):
        parser.error("an ensemble's calibrated members need --out FOLDER")
    if len({m.name for m in members}) < len(members):
        parser.error("ensemble members need distinct file names (each is written under its own)")

    from perfnet.inference.weights import load_weights, save_weights
    from perfnet.lesions import PRESETS
    from perfnet.training.core_calibration import (
        FALSE_CORE_ML,
        THRESHOLDS,
        VOLUME_RATIO_MAX,
        bootstrap,
        choose,
        choose_cbv_weight,
        choose_offset,
    )

    loaded = [load_weights(m) for m in members]
    modality = str(loaded[0][1]["modality"])
    if any(c["modality"] != modality for _, c in loaded):
        parser.error("ensemble members of different modalities")
    rule = PRESETS["rapid"].core_relative_cbf
    started = time.perf_counter()
    rows = json.loads(args.rows.read_text()) if args.rows and args.rows.is_file() else []
    # an ensemble is scored as inference takes it: one calibration (here none) for all members
    scratch = Path(tempfile.mkdtemp(prefix="calibrate_core_")) if len(members) > 1 else None
    try:
        scored_by: Path | list[Path] = members[0]
        if scratch is not None:
            scored_by = [scratch / m.name for m in members]
            for path, (model, config) in zip(scored_by, loaded, strict=True):
                save_weights(path, model, {k: v for k, v in config.items() if k != "core_calibration"})
        for i in range(len(rows), args.studies):
            forced = True if args.motion else None
            seed, lesion = CALIBRATION_SEED + i, LESIONS[i % len(LESIONS)]
            cut = args.cut if args.cut and (i // 6) % 2 else None
            row = score_study(seed, lesion, scored_by, modality, forced, args.offsets, cut, args.cbv)
            rows.append(row)
            at_rule = row["scores"][int(np.argmin(abs(THRESHOLDS - rule)))]
            what = "core Dice" if row["has_core"] else "false core mL"
            print(f"  seed {row['seed']} {row['lesion']:8s} {what} at the rule {at_rule:.3f}", flush=True)
            if args.rows:
                args.rows.write_text(json.dumps(rows))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = rows[: args.studies]
    if args.offsets and not all("offset_scores" in r for r in rows):
        parser.error(f"--offsets: the rows in {args.rows} were scored without offsets")
    if args.cbv and not all("cbv_scores" in r for r in rows):
        parser.error(f"--cbv: the rows in {args.rows} were scored without CBV weights")
    plain = choose(rows, rule)  # the factor alone (no offset)
    offset, weight, (threshold, curve) = 0.0, 0.0, plain
    if args.offsets:
        offset, threshold, curve = choose_offset(rows, rule)
    elif args.cbv:
        weight, threshold, curve = choose_cbv_weight(rows, rule)
    # the chosen rule's per-study volumes: its offset's or its weight's, else the factor's alone
    chosen = ("offset", offset) if offset else ("cbv", weight) if weight else None
    factor = round(threshold / rule, 4)
    references = sorted(r["reference"] for r in rows if r.get("reference"))
    spread = bootstrap(rows, rule)
    n_core = sum(r["has_core"] for r in rows)
    names = ", ".join(m.name for m in members)
    whose = f"an ensemble of {len(members)} ({names}), " if len(members) > 1 else ""
    drawn_as = ", head motion forced on" if args.motion else ""
    if args.cut:
        n_cut = sum("cut_after_s" in r for r in rows)
        drawn_as += f", {n_cut} cut {args.cut[0]:g}–{args.cut[1]:g} s after the arterial arrival"
    at_rule = plain[1][f"{rule:.2f}"]  # the plain rule, no offset
    fitted = f"{100 * threshold:.0f} % with an offset of {offset:g}" if offset else f"{100 * threshold:.0f} %"
    if weight:
        fitted = f"{100 * threshold:.0f} % of (rCBF · rCBV^{weight:g})^(1/{1 + weight:g})"
    pair_spread = "".join(
        f", {label} {spread[f'{key}_p5']:g}–{spread[f'{key}_p95']:g}"
        for key, label in (("offset", "offset"), ("cbv_weight", "CBV weight"))
        if f"{key}_p5" in spread
    )
    source = (
        f"tools/calibrate_core.py: {whose}{args.studies} style-A {modality} phantom studies{drawn_as}"
        f" (seeds {CALIBRATION_SEED}–{CALIBRATION_SEED + args.studies - 1}, {n_core} with a core),"
        f" mean core Dice {curve[f'{threshold:.2f}']:.3f} at {fitted} against"
        f" {at_rule:.3f} at {100 * rule:.0f} %; on {spread['resamples']} resamples of the"
        f" studies {100 * spread['threshold_p5']:.0f}–{100 * spread['threshold_p95']:.0f} %{pair_spread}"
        f" (5th–95th percentile)"
    )
    record = {
        "factor": factor,
        "threshold": threshold,
        "rule": rule,
        "source": source,
        "mean_core_dice": curve,
        "false_core_ml_max": FALSE_CORE_ML,
        "volume_ratio_max": VOLUME_RATIO_MAX,
        "bootstrap": spread,
        "motion": bool(args.motion),
        **({"cut": list(args.cut)} if args.cut else {}),
        **({"offset": offset, "references": [references[0], references[-1]]} if offset else {}),
        **({"cbv_weight": weight} if weight else {}),
        "studies": [
            {
                "seed": r["seed"],
                "lesion": r["lesion"],
                **({"cut_after_s": r["cut_after_s"]} if "cut_after_s" in r else {}),
                "true_core_ml": r["true_ml"],
                "core_ml": (r[f"{chosen[0]}_volumes"][f"{chosen[1]:g}"] if chosen else r["volumes"])[
                    int(np.argmin(abs(THRESHOLDS - threshold)))
                ],
            }
            for r in rows
        ],
        **({"ensemble": [m.name for m in members]} if len(members) > 1 else {}),
    }
    if len(members) > 1:
        args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, (model, config) in zip(members, loaded, strict=True):
        config = json.loads(json.dumps(config))
        config["core_calibration"] = record
        out = args.out / path.name if len(members) > 1 else args.out or path
        save_weights(out, model, config)
        written.append(str(out))
    took = time.perf_counter() - started
    offset_text = f", offset {offset:g}" if offset else f", CBV weight {weight:g}" if weight else ""
    print(f"{source}; factor {factor}{offset_text} written to {', '.join(written)} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
