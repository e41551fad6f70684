"""`perfnet cohort` throughput: studies per hour with 1 and 2 concurrent jobs on this machine, the
scaling efficiency, peak memory per study process, and a projection (stated as such) for a
1 000-study cohort on N machines.

    python benchmarks/cohort.py [--cases 6] [--size 128] [--slices 8] [--frames 60] [--method osvd]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from perfnet.cli import main as perfnet
from perfnet.runner import run_cohort


def _run(root: Path, deriv: Path, method: str, jobs: int) -> tuple[float, dict]:
    started = time.perf_counter()
    summary = run_cohort(root, deriv, method, jobs=jobs, options=["--no-report"])
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--method", default="osvd")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        sim = f"--modality ct --cases {args.cases} --seed 61000 --size {args.size} --slices {args.slices}"
        sim += f" --frames {args.frames} --no-motion"
        assert perfnet(["simulate", str(root), *sim.split()]) == 0
        rows = {}
        for jobs in (1, 2):
            seconds, summary = _run(root, Path(tmp) / f"deriv{jobs}", args.method, jobs)
            rows[jobs] = {
                "seconds": round(seconds, 1),
                "studies_per_hour": round(3600 * summary["done"] / seconds, 1),
                "median_seconds_per_study": summary["median_seconds_per_study"],
                "max_peak_memory_gb": summary["max_peak_memory_gb"],
                "done": summary["done"],
            }
    efficiency = rows[2]["studies_per_hour"] / (2 * rows[1]["studies_per_hour"])
    shape = f"{args.size}²×{args.slices}×{args.frames}"
    print(f"cohort: {args.cases} CT studies {shape}, method {args.method}, {cores} cores")
    print(f"  {'jobs':>4s} {'studies/h':>10s} {'s/study':>8s} {'peak GB/process':>16s}")
    for jobs, r in rows.items():
        per_study, memory = r["median_seconds_per_study"], r["max_peak_memory_gb"]
        print(f"  {jobs:4d} {r['studies_per_hour']:10.1f} {per_study:8.1f} {memory:16.2f}")
    speedup = rows[2]["studies_per_hour"] / rows[1]["studies_per_hour"]
    print(f"  scaling efficiency 1 → 2 jobs: {efficiency:.2f} (2 jobs: {speedup:.2f}× the throughput of 1)")
    best = max(r["studies_per_hour"] for r in rows.values())
    for machines in (1, 4, 16):
        hours = 1000 / (best * machines)
        print(
            f"  projection (not measured): 1 000 studies on {machines:2d} machine(s) like this: {hours:.1f} h"
        )
    print(json.dumps({"rows": rows, "efficiency": round(efficiency, 3)}))


if __name__ == "__main__":
    main()
