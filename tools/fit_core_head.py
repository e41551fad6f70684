"""Fit the CT U-Net's core head on the frozen bundled backbone (issue 12, item 3: a lesion head).

    python tools/fit_core_head.py [--weights src/perfnet/weights/ct.pt] [--out FILE]
        [--studies 48] [--validation-studies 24] [--steps 600] [--hidden 32]

The maps stay bit for bit those of ``--weights`` (the head reads detached features; only its
parameters train; :mod:`perfnet.training.core_head`). Two disjoint sets of style-A
(``geometric``) CT phantom studies, 128² × 8 slices, every parameter drawn (motion included),
lesions cycling core / core / penumbra / core / none / core (as tools/calibrate_core.py):

1. fit: ``--studies`` studies, seeds ``FIT_SEED`` + i: never trained on by any stage, and
   disjoint from the tests (< 10000), the training cohorts (10000–11119, 12100–13031), the scale
   head's calibration studies (12000–12099), the core rule's calibration studies (16000–16099)
   and the benchmarks (70000+; style B is never used here). Inputs are made by inference's own
   chain, motion correction included; every brain voxel is a sample (the truth core: the
   phantom's tissue with CBF < 30 % of its own healthy value).
2. validation: the core rule's calibration studies (seeds 16000 + i, tools/calibrate_core.py),
   each analysed as ``perfnet analyze --method cnn`` analyses it; the core from the head
   (probability ≥ 0.5, the lesion clean-up) against the weights' calibrated rCBF rule on the
   same maps, both against the truth core: mean Dice over the studies with a core, core found
   in all, the largest false core in a study without one. The rule's factor was fitted on these
   studies, so the comparison favours the rule.

Writes the weights (``model_kwargs.core_head`` true and a ``core_head`` record of this fit, with
the validation) to ``--out`` (default: over ``--weights``). ``analyze --method cnn`` then takes
its core from the head and says so (lesions.json ``core_source``, ``core_rule``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "perfnet" / "weights"
FIT_SEED = 17000
VALIDATION_SEED = 16000  # tools/calibrate_core.py's CALIBRATION_SEED
SHAPE = {"matrix": 128, "slices": 8}
LESIONS = ("core", "core", "penumbra", "core", "none", "core")
#: The head's decision threshold on the core probability (stored in its ``core_head`` record).
THRESHOLD = 0.5


def with_core_head(path: Path, hidden: int) -> tuple[torch.nn.Module, dict]:
    """The network of a weights file (its scale head kept) with a new, unfitted core head."""
    from perfnet.training.scale import with_new_head

    try:
        return with_new_head(path, {"core_head": True, "core_hidden": hidden}, ("core_",))
    except ValueError as exc:
        raise SystemExit(f"fit_core_head: {exc}") from None


def fit_samples(model: torch.nn.Module, config: dict, seeds: list[int], cache: Path) -> Any:
    """The head's samples of the fit studies, each study's cached in ``cache`` (a folder per backbone)."""
    from perfnet.phantom.styles import draw_config, simulate
    from perfnet.training.core_head import CoreSamples, collect_core
    from perfnet.training.scale import study_tensors

    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for k, seed in enumerate(seeds):
        path = cache / f"fit-{seed}.pt"
        if not path.is_file():
            started = time.perf_counter()
            lesion = LESIONS[k % len(LESIONS)]
            study = simulate(draw_config("geometric", seed, "CT", lesion=lesion, **SHAPE))
            truth = study.truth
            x, _, mask = study_tensors(study.series, truth.maps, truth.masks["brain"], config)
            part = collect_core(model, x, mask, truth.masks["core"])
            torch.save({"inputs": part.inputs, "core": part.core, "study": part.study}, path)
            seconds = time.perf_counter() - started
            print(
                f"  fit study {seed} ({lesion}): {int(part.core.sum())} core voxels ({seconds:.0f} s)",
                flush=True,
            )
        parts.append(CoreSamples(**torch.load(path, weights_only=True)))
    return CoreSamples.cat(parts)


def validate(weights: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Per validation study: the head's and the calibrated rule's core against the truth."""
    from perfnet.constants import CORE_PROBABILITY
    from perfnet.evaluation import dice
    from perfnet.inference import analyze_cnn
    from perfnet.lesions import PRESETS, calibrated, segment_lesions, voxel_volume_ml
    from perfnet.phantom.styles import draw_config, simulate
    from perfnet.preprocess.mask import csf_mask
    from perfnet.training.core_calibration import MIN_CORE_ML

    rows = []
    for k, seed in enumerate(seeds):
        lesion = LESIONS[k % len(LESIONS)]
        study = simulate(draw_config("geometric", seed, "CT", lesion=lesion, **SHAPE))
        maps, seen = analyze_cnn(study.series, weights, device="cpu")
        csf = csf_mask(seen, maps.brain_mask)
        truth = study.truth.masks["core"]
        ml = voxel_volume_ml(maps.affine)
        rule = calibrated(PRESETS["rapid"], maps.provenance.get("core_calibration"))
        row: dict[str, Any] = {"seed": seed, "lesion": lesion, "true_ml": round(float(truth.sum() * ml), 2)}
        row["has_core"] = row["true_ml"] >= MIN_CORE_ML
        args = (maps["cbf"], maps["tmax"], maps.brain_mask, maps.affine)
        found = {
            "head": segment_lesions(
                *args, PRESETS["rapid"], csf, core_probability=maps[CORE_PROBABILITY]
            ).core,
            "rule": segment_lesions(*args, rule, csf, cbv=maps.maps.get("cbv")).core,
        }
        for name, core in found.items():
            row[f"{name}_ml"] = round(float(core.sum() * ml), 2)
            row[f"{name}_dice"] = round(dice(core, truth), 3) if row["has_core"] else None
        rows.append(row)
        print(f"  validation {json.dumps(row)}", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cores = [r for r in rows if r["has_core"]]
    empty = [r for r in rows if not r["has_core"]]
    out: dict[str, Any] = {"studies": len(rows), "with_core": len(cores)}
    for name in ("head", "rule"):
        out[name] = {
            "mean_core_dice": round(float(np.mean([r[f"{name}_dice"] for r in cores])), 3) if cores else None,
            "core_ml_in_all": round(sum(r[f"{name}_ml"] for r in cores), 1),
            "false_core_ml_max": round(max((r[f"{name}_ml"] for r in empty), default=0.0), 2),
        }
    out["true_core_ml_in_all"] = round(sum(r["true_ml"] for r in cores), 1)
    return out


def main() -> int:
    from perfnet.inference.weights import save_weights
    from perfnet.training.core_head import dice_per_study, fit_core_head

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=WEIGHTS / "ct.pt")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "core-head", help="sample cache")
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--validation-studies", type=int, default=24)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--hidden", type=int, default=32, help="hidden channels (0: a linear head)")
    parser.add_argument(
        "--inputs", choices=["all", "maps"], default="all", help="maps: without the decoder features"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    model, config = with_core_head(args.weights, args.hidden)
    digest = hashlib.sha256(args.weights.read_bytes()).hexdigest()[:12]
    seeds = [FIT_SEED + i for i in range(args.studies)]
    samples = fit_samples(model, config, seeds, args.work / f"backbone-{digest}")
    print(
        f"fit set: {len(seeds)} studies, {samples.core.numel()} brain voxels, {int(samples.core.sum())} core"
    )
    history = fit_core_head(model, samples, steps=args.steps, maps_only=args.inputs == "maps")
    print("loss every 50 steps:", " ".join(f"{h:.3f}" for h in history))
    fit_dice = dice_per_study(model, samples, THRESHOLD)
    print(f"fit-set voxel Dice (studies with core in truth or head): {np.nanmean(fit_dice):.3f}", flush=True)
    config["core_head"] = {
        "threshold": THRESHOLD,
        "fitted_on": "frozen backbone; soft Dice + BCE on the phantom's truth core (flip-averaged inputs)",
        "fit_seeds": [seeds[0], seeds[-1]],
        "fit_shape": SHAPE,
        "hidden": args.hidden,
        "inputs": "maps and relative maps" if args.inputs == "maps" else "features, maps and relative maps",
        "steps": args.steps,
        "loss": [round(h, 4) for h in history],
    }
    val_seeds = [VALIDATION_SEED + i for i in range(args.validation_studies)]
    if val_seeds:
        with tempfile.TemporaryDirectory() as tmp:
            staged = save_weights(Path(tmp) / "headed.pt", model, config)
            rows = validate(staged, val_seeds)
        config["core_head"]["validation"] = summary(rows) | {"seeds": [val_seeds[0], val_seeds[-1]]}
        head, rule = config["core_head"]["validation"]["head"], config["core_head"]["validation"]["rule"]
        print(f"validation: head {head}; calibrated rule {rule}")
    v = config["core_head"].get("validation", {})
    config["core_head"]["source"] = (
        f"tools/fit_core_head.py: {len(seeds)} style-A CT phantom studies (seeds {seeds[0]}–{seeds[-1]})"
        + (
            f"; validation on {v['studies']} others, mean core Dice {v['head']['mean_core_dice']}"
            f" against the calibrated rule's {v['rule']['mean_core_dice']}"
            if v
            else ""
        )
    )
    config["core_head"]["seconds"] = round(time.perf_counter() - started, 1)
    out = save_weights(args.out or args.weights, model, config)
    print(f"wrote {out} ({config['core_head']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
