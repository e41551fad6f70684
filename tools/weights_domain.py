"""Measure the training domain of a bundled model (:mod:`perfnet.inference.domain`) and store it.

    python tools/weights_domain.py ct|mr [--studies K] [--write]

``perfnet train`` records the domain of what it trained on in the weights it writes; the bundled
weights were trained before it did. This tool re-draws the first ``K`` studies of each of the
recipe's phantom cohorts (``tools/train_weights.py`` SETTINGS, the same ``perfnet simulate``
arguments and seeds, so these are studies the model trained on), runs the preprocessing inference
runs (:func:`perfnet.inference.series.prepare_series`: non-steady-state frames, motion correction),
measures each study's descriptors (:func:`perfnet.inference.domain.describe`) and prints their
envelope. The frame interval's upper bound and the acquisition-after-arrival's lower bound are
the phantom generator's where the sample does not reach them (``PhantomConfig.draw``: intervals
0.5–2 s, a two-phase second interval ≤ 2 s; durations ≥ 45 s with arrivals ≤ 15 s, so ≥ 30 s).

With ``--write`` the envelope becomes the ``domain`` entry of ``src/perfnet/weights/<modality>.pt``
(the network's tensors are left untouched: its maps stay bit for bit the same).

    python tools/weights_domain.py ct|ct-moving|mr --thinning [--write]

widens the stored domain's frame intervals by the frame thinning its stages trained with (the
``thin`` and ``frame_interval`` of each stage in ``<name>-plan.json``;
:func:`perfnet.inference.domain.thinned`, what ``perfnet train`` records since stop 43), nothing
re-measured.

    python tools/weights_domain.py mr|mr-moving|... --only bolus_rise_s --studies K [--write]

measures one descriptor on the first ``K`` studies of each cohort and adds it to the stored domain,
every other entry kept as stored (a descriptor introduced after the weights were trained).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

#: The phantom generator's longest frame interval (perfnet.phantom.config.PhantomConfig.draw).
GENERATOR_MAX_INTERVAL_S = 2.0
#: The generator's shortest acquisition after the arterial arrival: a drawn duration ≥ 45 s and an
#: arrival ≤ 15 s (PhantomConfig.draw).
GENERATOR_MIN_AFTER_ARRIVAL_S = 30.0


def cohort_configs(modality: str, per_cohort: int) -> list:
    """The drawn configs of the first ``per_cohort`` studies of each of the recipe's cohorts."""
    from train_weights import SETTINGS, _parts

    from perfnet.cli.cohort_commands import _draw_options, _phantom_overrides
    from perfnet.cli.parser import build_parser
    from perfnet.phantom.styles import draw_config

    parser = build_parser()
    configs = []
    for cohort in SETTINGS[modality]["cohorts"]:
        for part in _parts(cohort):
            args = parser.parse_args(["simulate", "unused", *part])
            overrides = _phantom_overrides(args)
            options = _draw_options(args)
            configs += [
                draw_config(args.style, args.seed + i, args.modality, options, **overrides)
                for i in range(min(per_cohort, args.cases))
            ]
    return configs


def measure(modality: str, per_cohort: int) -> dict:
    import torch

    from perfnet.inference.domain import describe, envelope
    from perfnet.inference.series import prepare_series
    from perfnet.phantom.styles import simulate

    torch.set_num_threads(1)
    rows = []
    for cfg in cohort_configs(modality, per_cohort):
        started = time.perf_counter()
        described = describe(prepare_series(simulate(cfg).series))
        rows.append(described)
        print(f"  seed {cfg.seed}: {described} ({time.perf_counter() - started:.0f} s)", flush=True)
    source = (
        f"tools/weights_domain.py: {len(rows)} of the recipe's training studies re-drawn and "
        "preprocessed as inference does; frame interval up to the generator's"
        f" {GENERATOR_MAX_INTERVAL_S:g} s,"
        f" acquisition after the arrival down to its {GENERATOR_MIN_AFTER_ARRIVAL_S:g} s"
    )
    domain = envelope(rows, source)
    lo, hi = domain.get("max_frame_interval_s", [GENERATOR_MAX_INTERVAL_S] * 2)
    domain["max_frame_interval_s"] = [lo, max(hi, GENERATOR_MAX_INTERVAL_S)]
    lo, hi = domain.get("after_arrival_s", [GENERATOR_MIN_AFTER_ARRIVAL_S] * 2)
    domain["after_arrival_s"] = [min(lo, GENERATOR_MIN_AFTER_ARRIVAL_S), hi]
    return domain


def with_descriptor(name: str, descriptor: str, per_cohort: int) -> dict:
    """The stored domain of ``<name>.pt`` with ``descriptor`` measured on the recipe's studies and
    added (or replaced); every other entry as stored."""
    from perfnet.inference.domain import noted
    from perfnet.inference.weights import weights_config

    stored = dict(weights_config(ROOT / "src" / "perfnet" / "weights" / f"{name}.pt")["domain"])
    measured = measure(name, per_cohort)
    if descriptor not in measured:
        raise SystemExit(f"weights_domain: no study described {descriptor}")
    stored[descriptor] = measured[descriptor]
    note = f"{descriptor} from tools/weights_domain.py --only (the first {per_cohort} studies of each cohort)"
    stored["source"] = noted(stored, note)
    return stored


def with_thinning(name: str) -> dict:
    """The stored domain of ``<name>.pt`` widened by the frame thinning of its recipe's stages."""
    from perfnet.inference.domain import thinned
    from perfnet.inference.weights import weights_config

    weights = ROOT / "src" / "perfnet" / "weights"
    domain = weights_config(weights / f"{name}.pt")["domain"]
    for stage in json.loads((weights / f"{name}-plan.json").read_text())["stages"]:
        config = stage["config"]
        domain = thinned(domain, config.get("thin") or [1], float(config["frame_interval"]))
    return domain


def write(modality: str, domain: dict) -> Path:
    import torch

    path = ROOT / "src" / "perfnet" / "weights" / f"{modality}.pt"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["config"]["domain"] = json.loads(json.dumps(domain))
    out = io.BytesIO()
    torch.save(blob, out)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(out.getvalue())
    tmp.replace(path)
    return path


def main() -> int:
    from perfnet.inference.domain import DESCRIPTORS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "modality", choices=["ct", "ct-moving", "mr", "mr-moving"], help="the bundled weights' name"
    )
    parser.add_argument("--studies", type=int, default=8, help="studies per cohort (default 8)")
    parser.add_argument(
        "--thinning", action="store_true", help="only widen the stored domain by the recipe's frame thinning"
    )
    parser.add_argument(
        "--only",
        choices=DESCRIPTORS,
        help="measure this descriptor alone and add it to the stored domain (the rest kept as stored)",
    )
    parser.add_argument("--write", action="store_true", help="store the domain in the bundled weights")
    args = parser.parse_args()
    if args.thinning:
        domain = with_thinning(args.modality)
    elif args.only:
        domain = with_descriptor(args.modality, args.only, args.studies)
    else:
        domain = measure(args.modality, args.studies)
    print(json.dumps(domain, indent=1, ensure_ascii=False))
    if args.write:
        print(f"written to {write(args.modality, domain)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
