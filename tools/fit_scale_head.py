"""Fit the CT U-Net's Laplace scale head on the frozen bundled backbone (issue 12, item 4).

    python tools/fit_scale_head.py [--weights src/perfnet/weights/ct.pt] [--out FILE]
        [--fit-studies 24] [--calibration-studies 8] [--voxels 20000] [--steps 400]

The maps stay bit for bit those of ``--weights`` (the head reads detached features; only its
parameters train; :mod:`perfnet.training.scale`). Three disjoint sets of phantom studies:

1. fit: ``--fit-studies`` held-out patients of the bundled recipe's fold 0 (the
   ``validation_subjects`` of ``ct-plan.json``), i.e. studies of ``perfnet simulate --modality ct
   --cases 120 --seed S --size 128 --no-motion``, S = 10000 and 11000 (seed S + i − 1 for sub-i),
   that no stage of the backbone trained on, so the head learns the error the backbone makes on
   unseen studies; voxels drawn at random in the truth brain, inputs made by inference's chain (no motion to
   correct in this cohort);
2. calibration: ``--calibration-studies`` style-A studies (``geometric``, every parameter drawn,
   motion included, or with ``--calibration-motion`` forced on; seeds 12000+, 128² × 8 slices)
   run through ``analyze_cnn`` as ``perfnet analyze --method cnn`` runs them; per map one
   temperature T (b ← T·b) that puts 90 % of the truth inside the written 90 % interval (map
   units, brain voxels);
3. test: ``benchmarks/calibration.py`` (seeds 70000+ of style A and style B), never used here.

Writes the weights (config: ``model_kwargs.scale_head`` true and a ``scale_head`` record of this
fit) to ``--out`` (default: over ``--weights``).
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
#: The bundled recipe's first cohort (tools/train_weights.py SETTINGS["ct"]) and its overrides.
FIT_COHORT_SEEDS = (10000, 11000)
FIT_OVERRIDES = {"matrix": 128, "motion": False}
#: Calibration studies: style A, every parameter drawn; disjoint from the tests (< 10000), the
#: bundled cohorts (10000–11119, 20000–23011) and the benchmarks (70000+).
CALIBRATION_SEED = 12000
CALIBRATION_SHAPE = {"matrix": 128, "slices": 8}


def with_head(path: Path) -> tuple[torch.nn.Module, dict]:
    """The backbone of a weights file with a new (unfitted) scale head."""
    from perfnet.training.scale import with_new_head

    try:
        return with_new_head(path, {"scale_head": True}, ("scale_head.", "scale_temp"))
    except ValueError as exc:
        raise SystemExit(f"fit_scale_head: {exc}") from None


def fit_seeds(count: int, cohorts: tuple[int, ...] = FIT_COHORT_SEEDS) -> list[int]:
    """Seeds of the first ``count`` held-out patients of the bundled fold 0, alternating between the
    recipe's cohorts ``cohorts`` (stages 1 and 3 trained on cohort 10000, stage 2 on cohort 11000, all
    with the same split by patient: these patients were held out of every stage)."""
    plan = json.loads((WEIGHTS / "ct-plan.json").read_text())
    held_out = [int(s.split("-")[1]) for s in plan["stages"][0]["splits"][0]["validation_subjects"]]
    seeds = [base + i - 1 for i in held_out for base in cohorts]
    return seeds[:count]


def fit_samples(model: torch.nn.Module, config: dict, seeds: list[int], voxels: int, cache: Path) -> Any:
    """The head's training voxels of the fit studies; each study's are cached in ``cache`` (a
    folder per backbone: a rerun, e.g. with other steps, does not simulate them again)."""
    from perfnet.phantom.styles import draw_config, simulate
    from perfnet.training.scale import ScaleSamples, collect, study_tensors

    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for seed in seeds:
        started = time.perf_counter()
        path = cache / f"fit-{seed}-{voxels}.pt"
        if path.is_file():  # features stored in half precision, trained on in single
            cached = torch.load(path, weights_only=True)
            parts.append(ScaleSamples(**(cached | {"features": cached["features"].float()})))
            continue
        gen = torch.Generator().manual_seed(seed)
        study = simulate(draw_config("geometric", seed, "CT", **FIT_OVERRIDES))
        truth = study.truth
        x, y, mask = study_tensors(
            study.series, truth.maps, truth.masks["brain"], config, motion_correction=False
        )
        parts.append(collect(model, x, y, mask, voxels=voxels, generator=gen))
        part = parts[-1]
        torch.save({"features": part.features.half(), "mean": part.mean, "target": part.target}, path)
        parts[-1].features = part.features.half().float()  # as a rerun reads it back
        seconds = time.perf_counter() - started
        print(f"  fit study seed {seed}: {parts[-1].mean.shape[0]} voxels ({seconds:.0f} s)", flush=True)
    return ScaleSamples.cat(parts)


def written_errors(
    weights: Path, seeds: list[int], style: str = "geometric", motion: bool | None = None
) -> dict[str, tuple]:
    """Per map, (error, written scale) over the brain voxels of ``analyze_cnn`` on the studies;
    ``motion`` True: head motion forced on (its amplitude still drawn)."""
    from perfnet.inference import analyze_cnn
    from perfnet.phantom.styles import draw_config, simulate

    out: dict[str, list] = {}
    for seed in seeds:
        forced = {} if motion is None else {"motion": motion}
        study = simulate(draw_config(style, seed, "CT", **CALIBRATION_SHAPE, **forced))
        maps, _ = analyze_cnn(study.series, weights, device="cpu")
        brain = maps.brain_mask & study.truth.masks["brain"]
        for name in maps.maps:
            if name.endswith("_uncertainty"):
                continue
            err = maps[name][brain] - study.truth.maps[name][brain]
            out.setdefault(name, []).append((err, maps[f"{name}_uncertainty"][brain]))
    return {m: (np.concatenate([e for e, _ in v]), np.concatenate([b for _, b in v])) for m, v in out.items()}


def main() -> int:
    from perfnet.inference.weights import save_weights
    from perfnet.training.scale import coverage, fit_scale_head, temperature

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=WEIGHTS / "ct.pt")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "scale-head", help="sample cache")
    parser.add_argument("--fit-studies", type=int, default=24)
    parser.add_argument(
        "--fit-cohorts",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        default=FIT_COHORT_SEEDS,
        help="first seeds of the bundled cohorts whose held-out patients fit the head (default both;"
        " the CT specialist, which replays cohort 10000's first studies, takes 11000 only)",
    )
    parser.add_argument("--calibration-studies", type=int, default=6)
    parser.add_argument(
        "--calibration-motion",
        action="store_true",
        help="calibration studies with head motion forced on: the temperatures of a specialist that"
        " routing gives moving studies only (ct-moving.pt)",
    )
    parser.add_argument("--voxels", type=int, default=20000, help="brain voxels drawn per fit study")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    model, config = with_head(args.weights)
    seeds = fit_seeds(args.fit_studies, args.fit_cohorts)
    print(f"fit set: {len(seeds)} held-out patients of the bundled fold 0", flush=True)
    digest = hashlib.sha256(args.weights.read_bytes()).hexdigest()[:12]
    samples = fit_samples(model, config, seeds, args.voxels, args.work / f"backbone-{digest}")
    history = fit_scale_head(model, samples, steps=args.steps)
    fit_coverage = coverage(samples, model)
    print("NLL every 50 steps:", " ".join(f"{h:.3f}" for h in history))
    fitted = ", ".join(f"{m} {c:.3f}" for m, c in zip(config["maps"], fit_coverage, strict=True))
    print(f"90 % coverage on the fit voxels (network domain): {fitted}", flush=True)
    cal_seeds = [CALIBRATION_SEED + i for i in range(args.calibration_studies)]
    temperatures = {m: 1.0 for m in config["maps"]}
    if cal_seeds:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.pt"
            save_weights(raw, model, config)
            errors = written_errors(raw, cal_seeds, motion=True if args.calibration_motion else None)
        for i, m in enumerate(config["maps"]):
            err, b = errors[m]
            temperatures[m] = temperature(err, b)
            before = float(np.mean(np.abs(err) <= b * np.log(10)))
            print(f"  calibration {m}: coverage {before:.3f} before, temperature {temperatures[m]:.3f}")
            model.scale_temperature[i] = temperatures[m]
    config["scale_head"] = {
        "fitted_on": "frozen backbone; Laplace NLL of the flip-averaged residuals (network domain)",
        "fit_seeds": seeds,
        "fit_overrides": FIT_OVERRIDES,
        "voxels_per_study": args.voxels,
        "steps": args.steps,
        "nll": [round(h, 4) for h in history],
        "calibration_seeds": cal_seeds,
        "calibration_shape": CALIBRATION_SHAPE,
        "calibration_motion": bool(args.calibration_motion),
        "temperature": {m: round(t, 4) for m, t in temperatures.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = save_weights(args.out or args.weights, model, config)
    print(f"wrote {out} ({config['scale_head']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
