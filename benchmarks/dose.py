"""Fewer frames, lower dose (Gava et al.'s motivation): accuracy against frame count and dose.

The same CT phantom studies (seeds 600–603, never used in training) are simulated at four doses
and analysed with every frame, every 2nd and every 4th frame, by the bundled CNN and by the oSVD
and box-NLR pipelines (no motion correction: the phantoms are still). Prints Tmax MAEC (clipped to
[0, 20] s) and the hypoperfused Dice (Tmax > 6 s) against truth, and plots both to
``build/bench/dose.png``. The CNN takes a subsampled series as it is: its input is resampled onto
the model's 1 s grid by linear interpolation.

    python benchmarks/dose.py [--weights FILE] [--methods cnn,osvd,boxnlr]

``--weights`` scores candidate CNN weights instead of the bundled ones (e.g. before bundling).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from perfnet.conventional.pipeline import AnalysisOptions, analyze
from perfnet.errors import PerfnetInputError
from perfnet.evaluation import dice, maec
from perfnet.inference import predict
from perfnet.io.types import PerfusionSeries
from perfnet.phantom import PhantomConfig, simulate_study

SEEDS = (600, 601, 602, 603)
DOSES = (50.0, 100.0, 200.0, 400.0)  # mAs
STEPS = (1, 2, 4)
METHODS = ("cnn", "osvd", "boxnlr")
OUT = Path(__file__).resolve().parent.parent / "build" / "bench"


def subsample(series: PerfusionSeries, step: int) -> PerfusionSeries:
    return series.with_data(np.ascontiguousarray(series.data[..., ::step]), series.times[::step])


def score(tmax: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    return maec(tmax, truth, brain, (0.0, 20.0)), dice(brain & (tmax > 6), brain & (truth > 6))


def run_method(method: str, series: PerfusionSeries, weights: str | None = None) -> np.ndarray:
    if method == "cnn":
        return predict(series, weights, device="cpu")["tmax"]
    return analyze(series, AnalysisOptions(method=method, motion_correction=False)).maps["tmax"]


def main(argv: list[str] | None = None) -> None:
    from perfnet.inference.weights import bundled_weights

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--weights", help="CNN weights file (default: the bundled CT weights)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    try:
        if args.weights is None:
            bundled_weights("CT")
    except PerfnetInputError as exc:
        print(f"dose: skipped ({exc})")
        return
    print(f"dose: CT phantoms {SEEDS}, 128×128×8, doses {DOSES} mAs, every 1/2/4 frames", flush=True)
    results: dict[tuple[str, float, int], list[tuple[float, float]]] = {}
    for seed in SEEDS:
        for dose in DOSES:
            cfg = PhantomConfig.draw(
                seed,
                "CT",
                matrix=128,
                slices=8,
                coverage_mm=64.0,
                lesion="penumbra",
                motion=False,
                dose_mas=dose,
            )
            study = simulate_study(cfg)
            truth, brain = study.truth.maps["tmax"], study.truth.masks["brain"]
            for step in STEPS:
                series = subsample(study.series, step)
                for method in methods:
                    results.setdefault((method, dose, step), []).append(
                        score(run_method(method, series, args.weights), truth, brain)
                    )
    print(f"  {'method':8s} {'dose':>6s} {'frames':>7s} {'MAEC s':>7s} {'Dice':>6s}")
    table = {}
    for (method, dose, step), values in sorted(results.items()):
        maec, dice = np.mean(values, axis=0)
        table[(method, dose, step)] = (maec, dice)
        print(f"  {method:8s} {dose:6.0f} {'1/' + str(step):>7s} {maec:7.2f} {dice:6.3f}", flush=True)
    for method in methods:
        full = table[(method, 200.0, 1)]
        quarter = table[(method, 50.0, 4)]
        print(
            f"  {method}: 1/4 dose and 1/4 frames vs full: MAEC {quarter[0] / full[0]:.2f}x,"
            f" Dice {quarter[1] / max(full[1], 1e-9):.2f}x",
            flush=True,
        )
    _plot(table, methods)


def _plot(table: dict[tuple[str, float, int], tuple[float, float]], methods: tuple[str, ...]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib missing: no plot)")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, method in enumerate(methods):
        colour = f"C{i}"
        axes[0].plot(
            DOSES,
            [table[(method, d, 1)][0] for d in DOSES],
            marker="o",
            color=colour,
            label=f"{method}, all frames",
        )
        axes[0].plot(
            DOSES,
            [table[(method, d, 4)][0] for d in DOSES],
            marker="s",
            ls="--",
            color=colour,
            label=f"{method}, 1/4 frames",
        )
        axes[1].plot(
            [1, 1 / 2, 1 / 4],
            [table[(method, 200.0, s)][1] for s in STEPS],
            marker="o",
            color=colour,
            label=f"{method}, 200 mAs",
        )
    axes[0].set(xlabel="dose (mAs)", ylabel="Tmax MAEC (s)", xscale="log", title="accuracy against dose")
    axes[1].set(
        xlabel="fraction of frames kept", ylabel="hypoperfused Dice (Tmax > 6 s)", title="against frames"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = OUT / "dose.png"
    fig.savefig(path, dpi=110)
    print(f"  plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
