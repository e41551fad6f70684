"""Phantom speed: simulate (and write) CT studies of the sizes the issues name.

Prints seconds per study and voxel-frames per second; the target for a 256×256×16×60 CT study,
written to disk, is ≤ 20 s on 2 cores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from perfnet.phantom import PhantomConfig, simulate_study, write_study


def bench(matrix: int, slices: int, frames: int, motion: bool, write: bool) -> dict[str, float]:
    cfg = PhantomConfig.draw(1, "CT", matrix=matrix, slices=slices, frames=frames, motion=motion)
    start = time.perf_counter()
    study = simulate_study(cfg)
    simulated = time.perf_counter() - start
    written = 0.0
    if write:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_study(study, Path(tmp) / "s", "sub-0001")
            written = time.perf_counter() - start
    voxel_frames = matrix * matrix * slices * frames
    return {
        "simulate_s": simulated,
        "write_s": written,
        "mvoxel_frames_per_s": voxel_frames / simulated / 1e6,
    }


def main() -> None:
    print("phantom: CT study simulation (target: 256x256x16x60 simulated and written <= 20 s)")
    for matrix, slices, frames, motion in ((256, 16, 60, False), (256, 16, 60, True), (512, 16, 89, True)):
        r = bench(matrix, slices, frames, motion, write=True)
        total = r["simulate_s"] + r["write_s"]
        print(
            f"  {matrix}x{matrix}x{slices}x{frames} motion={motion!s:5}: simulate {r['simulate_s']:.1f} s,"
            f" write {r['write_s']:.1f} s, total {total:.1f} s"
            f" ({r['mvoxel_frames_per_s']:.1f} M voxel-frames/s; {total / 20.0:.2f} of the 20 s budget)"
        )


if __name__ == "__main__":
    main()
