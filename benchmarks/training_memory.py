"""Memory of one training rank's data, before and after issue 14's prepared slices: peak resident
memory of a fresh process that loads a simulated cohort and reads every training sample once
(one epoch, augmented), for two cohort sizes.

- ``in-memory``: every study's slices held in the process, what every DDP rank did before (the
  same arrays ``load_study`` returned, inputs float16; read here from the prepared files, as a
  resumed run read its cached inputs), the dataset over them;
- ``prepared``: the studies prepared once (rank 0, one study at a time, not measured here) as
  ``RUN/slices/<study>/*.npy``; the rank opens the records and reads one slice per sample.

    python benchmarks/training_memory.py [--cases 8,16] [--size 96] [--slices 8] [--frames 40]

Prints, per cohort size, the peak RSS of each way, its part above a process that only imported
the same modules, and the ratio; the model and optimiser are left out (the same in both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MAPS = ["cbf", "cbv", "mtt", "tmax", "ttp"]


def _child(mode: str, cohort: Path, run: Path) -> None:
    import torch

    from perfnet.inference.targets import log_offsets_for
    from perfnet.training.data import StudySlices, discover
    from perfnet.training.dataset import Augmentation, Normalisation, SliceDataset
    from perfnet.training.prepare import PreparedStudy, SliceRecipe

    recipe = SliceRecipe(MAPS, "truth", 1.0, 80, None, 6.0, log_offsets_for(["cbf", "cbv"]))
    studies = discover(cohort)
    started = time.perf_counter()
    if mode == "imports":
        data: list = []
    elif mode == "in-memory":
        data = []
        for s in studies:
            p = PreparedStudy.open(run / "slices" / s.name)
            arrays = [
                torch.from_numpy(np.load(p.folder / f"{k}.npy")) for k in ("inputs", "targets", "brain")
            ]
            bolus = torch.from_numpy(np.load(p.folder / "bolus.npy"))
            data.append(StudySlices(p.name, p.subject, *arrays, bolus, p.grid, p.offset_s))
        norm = Normalisation.fit(data, MAPS, recipe.log_offsets)
    else:
        data = [PreparedStudy.open(run / "slices" / s.name) for s in studies]
        norm = Normalisation.from_moments([s.moments for s in data], MAPS, recipe.log_offsets)
    if data:
        ds = SliceDataset(data, MAPS, norm, 1.0, crop=64, augment=Augmentation(enabled=True), seed=1)
        for item in range(len(ds)):
            ds[(0, item)]
    # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over fork + exec)
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"peak_bytes": peak, "seconds": time.perf_counter() - started}))


def _measure(mode: str, cohort: Path, run: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(cohort), str(run)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="8,16")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return

    from perfnet.phantom import PhantomConfig, simulate_study
    from perfnet.phantom.cohort import write_study
    from perfnet.training.data import discover
    from perfnet.training.prepare import SliceRecipe, prepare_cohort

    sizes = [int(c) for c in args.cases.split(",")]
    print(
        f"one rank's data: {args.size}² × {args.slices} slices × {args.frames} frames CT phantoms,"
        " model grid 80 frames, one augmented epoch over every slice"
    )
    print("| studies | prepared on disk | in-memory rank: peak RSS (above imports) | prepared rank | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in sizes:
            cohort, run = root / f"cohort{n}", root / f"run{n}"
            for i in range(n):
                cfg = PhantomConfig.draw(
                    62000 + i, "CT", matrix=args.size, slices=args.slices, frames=args.frames, motion=False
                )
                write_study(simulate_study(cfg), cohort / f"sub-{i:04d}" / "ses-01", f"sub-{i:04d}")
            recipe = SliceRecipe(MAPS, "truth", 1.0, 80, None, 6.0, {"cbf": 1.0, "cbv": 0.1})
            prepare_cohort(discover(cohort), cohort, run, recipe, writer=True)
            disk = sum(p.stat().st_size for p in (run / "slices").rglob("*.npy"))
            base = _measure("imports", cohort, run)["peak_bytes"]
            before = _measure("in-memory", cohort, run)["peak_bytes"]
            after = _measure("prepared", cohort, run)["peak_bytes"]
            print(
                f"| {n} | {disk / 1e6:.0f} MB | {before / 1e6:.0f} MB ({(before - base) / 1e6:+.0f} MB)"
                f" | {after / 1e6:.0f} MB ({(after - base) / 1e6:+.0f} MB)"
                f" | {(before - base) / max(after - base, 1):.0f}× above imports,"
                f" {before / after:.2f}× total |"
            )


if __name__ == "__main__":
    main()
