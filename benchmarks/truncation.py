"""Accuracy against how long the acquisition runs after the bolus arrival: both bundled CT
networks (forced) and oSVD on the same static studies cut short at several points.

Why: a network's training domain records the shortest acquisition after the detected bolus
arrival it trained on (``after_arrival_s``; ``ct.pt`` 30 s, flagged below 20 s; the specialist
``ct-moving.pt``, trained on cut acquisitions since stop 43, 12 s) and routing sends a study to
the network whose domain holds it. Whether ``ct.pt`` is still right between its envelope and its
margin is a measurement: this is it.

Each study is drawn as ``benchmarks/generalisation.py`` draws it (same seeds and lesions, 128² × 8),
static, re-timed to uniform 1 s frames over its drawn duration (``frame_interval.study_at_1s``),
then cut to end ``--cuts`` seconds after the arterial arrival the phantom drew (the measured
``after_arrival_s`` is printed beside it) and analysed as ``perfnet analyze`` does (the shared
preprocessing, the method, lesions with the ``rapid`` preset).

    python benchmarks/truncation.py [--studies 6] [--first 0] [--styles geometric,mni]
        [--cuts 15,20,25,30,45] [--json OUT]
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

from frame_interval import means, print_means, score, study_at_1s, write_truth
from generalisation import _fmt, preprocessed

CUTS = (15, 20, 25, 30, 45)


def main(argv: list[str] | None = None) -> None:
    from perfnet.inference.domain import describe
    from perfnet.inference.weights import BUNDLED

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--studies", type=int, default=6, help="studies per style")
    parser.add_argument("--first", type=int, default=0, help="index of the first study")
    parser.add_argument("--styles", default="geometric,mni")
    parser.add_argument("--cuts", default=",".join(map(str, CUTS)), help="seconds after the arrival")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cuts = [float(c) for c in args.cuts.split(",")]
    methods = {"ct.pt": BUNDLED / "ct.pt", "ct-moving.pt": BUNDLED / "ct-moving.pt", "osvd": None}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="truncation_") as tmp:
        for style in args.styles.split(","):
            for index in range(args.first, args.first + args.studies):
                cfg, study = study_at_1s(style, index, args.size, args.slices)
                truth = write_truth(study, Path(tmp) / f"{style}-{index}-truth")
                series = study.series
                for cut in cuts:
                    keep = series.times <= cfg.arrival_s + cut
                    sub = series.with_data(np.ascontiguousarray(series.data[..., keep]), series.times[keep])
                    prepared = preprocessed(sub)
                    after = describe(prepared).get("after_arrival_s")
                    for name, weights in methods.items():
                        method = "osvd" if weights is None else "cnn"
                        out = Path(tmp) / f"{style}-{index}-{cut:g}" / name
                        r = score(
                            method, prepared, study, truth, None if weights is None else str(weights), out
                        )
                        r |= {"style": style, "study": index, "seed": cfg.seed, "lesion": cfg.lesion}
                        r |= {"cut_s": cut, "after_arrival_s": after, "method": name}
                        rows.append(r)
                        print(
                            f"  {style:9s} #{index} {cfg.lesion:8s} cut {cut:4.0f} s (after arrival {after})"
                            f" {name:12s} MAEC {r['tmax_maec']:5.2f} s hypo {_fmt(r['hypoperfused_dice'])}"
                            f" core {_fmt(r['core_dice'])} {r['core_ml']:6.1f}/{r['true_core_ml']:6.1f} mL"
                            + (" [outside_training_domain]" if r["outside"] else ""),
                            flush=True,
                        )
    print(f"\nmeans ({time.perf_counter() - started:.0f} s in all)")
    table = means(rows, args.styles.split(","), "cut_s", cuts, list(methods))
    print_means(table, "cut_s", "cut")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "means": table}, indent=1))


if __name__ == "__main__":
    main()
