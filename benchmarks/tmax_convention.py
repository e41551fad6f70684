"""How much of each phantom style's Tmax is a convention the curves do not show (issue 12.1).

    python benchmarks/tmax_convention.py [--draws 200] [--seed 0] [--json FILE]

Both phantom styles define the true Tmax alike: the delay plus the argmax of the effective residue
h = D ⊗ R (dispersion kernel ⊗ residue). They differ in what they draw for D and R (style A:
exponential, box, gamma and log-normal residues, an exponential kernel; style B: exponential,
gamma with a minimum transit, lagged-normal and two-compartment residues, a gamma kernel) and in
the arterial input (A: a gamma variate; B: Parker's population curve, stretched). A network learns
Tmax from the tissue curve, whose peak it sees; so the measure here is, for healthy tissue
(MTT 3–6 s; the family parameters and the dispersion kernel of configs drawn as each style draws
its studies, ``draw_config``, so the ranges are the styles' own; noise-free, no delay),
Tmax − (tissue peak − arterial peak): one number per curve that two simulators agree on if they
map alike curves to alike Tmax.

Three tables:

1. each residue family of each style behind one common arterial input (a Gaussian of 5 s and of
   9 s FWHM), and each style's mean over its own family weights: the share of the difference that
   no arterial input explains;
2. the same with each style's own drawn arterial input (``draw_config`` of that style, the
   studies of ``--seed`` on): the whole difference a network trained on one style meets in the
   other (stop 51 measured it on the cohorts' healthy tissue: −2.94 s against −2.02 s); and style
   B again with its first pass a gamma variate (``aif_model="gamma"``, same peak time, width and
   area): what the population curve's shape adds;
3. style A's kernel shape (``--wide-dispersion``): Tmax and the tissue peak at gamma-kernel shape
   1 (exponential), 2, 3 and 6 for the same mean, behind the 5 s bolus.

Seconds on this machine; nothing is written but ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from perfnet.phantom import config as style_a_config
from perfnet.phantom import physiology as style_a
from perfnet.phantom.mni import config as style_b_config
from perfnet.phantom.mni import physiology as style_b
from perfnet.phantom.styles import draw_config

DT = 0.1  # s, both styles' fine grid
N = 1600  # fine samples (160 s)
#: each style's residue families and how often its draw picks them (style A: equally often)
FAMILIES = {
    "A": dict.fromkeys(style_a_config.RESIDUE_FAMILIES, 1.0 / len(style_a_config.RESIDUE_FAMILIES)),
    "B": dict(zip(style_b_config.RESIDUE_FAMILIES, style_b_config.RESIDUE_WEIGHTS, strict=True)),
}
STYLE_NAMES = {"A": "geometric", "B": "mni"}
KERNEL_SHAPES = (1.0, 2.0, 3.0, 6.0)


def _peak(curve: np.ndarray) -> float:
    """Sub-sample time of a curve's first maximum on the fine grid (s)."""
    return float(style_b.parabolic_peak(curve[None, :])[0]) * DT


def _healthy_curve(style: str, cfg: Any, aif: np.ndarray, mtt: float) -> tuple[float, float]:
    """(Tmax, tissue peak) of one healthy curve of MTT ``mtt`` s with the residue family, family
    parameters and dispersion kernel (mean and shape) of the drawn config ``cfg`` of ``style``;
    style A's box residue without dispersion (plug flow, as ``perfnet.phantom.perfusion`` has it)."""
    beta = 0.0 if cfg.residue == "box" else round(float(cfg.baseline_dispersion_s), 1)
    mtts, betas = np.array([mtt]), np.array([beta])
    if style == "A":
        table = style_a.build_curve_table(
            aif, cfg.residue, cfg.residue_shape, mtts, betas, dispersion_shape=cfg.dispersion_shape
        )
        return float(table.tmax[0]), float(table.peak_time[0])
    params = style_b.residue_parameters(cfg.residue, cfg.residue_shape)
    table = style_b.tissue_table(aif, cfg.residue, params, cfg.dispersion_shape, mtts, betas)
    return float(table.tmax[0]), float(table.peak[0])


def _draws(style: str, seed: int, draws: int, **overrides: Any) -> list[Any]:
    """``draws`` configs of ``style`` (CT) drawn as its studies are, seeds ``seed`` on."""
    return [draw_config(STYLE_NAMES[style], seed + i, "CT", **overrides) for i in range(draws)]


def _offsets(pairs: list[tuple[float, float]], aif_peak: float) -> np.ndarray:
    """Tmax − (tissue peak − arterial peak) of each (Tmax, tissue peak) pair."""
    return np.array([tmax - (peak - aif_peak) for tmax, peak in pairs])


def common_input(fwhm: float, draws: int, seed: int) -> dict[str, Any]:
    """Table 1: every family of both styles behind one Gaussian arterial input of ``fwhm`` s: per
    family, ``draws`` configs drawn with that family (their family parameters and kernels)."""
    t = np.arange(N) * DT
    aif = np.exp(-0.5 * ((t - 20.0) / (fwhm / 2.3548)) ** 2)
    rng = np.random.default_rng([seed, int(fwhm * 10)])
    rows: dict[str, dict[str, float]] = {}
    for style, families in FAMILIES.items():
        for family in families:
            configs = _draws(style, seed, draws, residue=family)
            pairs = [_healthy_curve(style, cfg, aif, _mtt(rng)) for cfg in configs]
            offsets = _offsets(pairs, 20.0)
            rows[f"{style} {family}"] = {"mean": float(offsets.mean()), "sd": float(offsets.std())}
    means = {
        style: sum(w * rows[f"{style} {f}"]["mean"] for f, w in families.items())
        for style, families in FAMILIES.items()
    }
    return {"fwhm_s": fwhm, "families": rows, "style_means": means, "difference_s": means["B"] - means["A"]}


def own_input(draws: int, seed: int) -> dict[str, Any]:
    """Table 2: each style's curves behind its own drawn arterial inputs: ``draws`` configs as drawn
    (family, kernel and arterial input each the config's own)."""
    t = np.arange(N) * DT
    out: dict[str, Any] = {}
    for name, style, overrides, make_aif in (
        ("A", "A", {}, style_a.ArterialInput.from_config),
        ("B", "B", {}, style_b.PopulationAIF.from_config),
        ("B gamma first pass", "B", {"aif_model": "gamma"}, style_b.PopulationAIF.from_config),
    ):
        rng = np.random.default_rng([seed, 2])  # the same transit times for each
        offsets: list[float] = []
        for cfg in _draws(style, seed, draws, **overrides):
            aif = make_aif(cfg)(t)
            offsets += list(_offsets([_healthy_curve(style, cfg, aif, _mtt(rng))], _peak(aif)))
        values = np.array(offsets)
        out[name] = {"mean": float(values.mean()), "sd": float(values.std())}
    out["difference_s"] = out["B"]["mean"] - out["A"]["mean"]
    out["gamma_difference_s"] = out["B gamma first pass"]["mean"] - out["A"]["mean"]
    return out


def _mtt(rng: np.random.Generator) -> float:
    """A healthy mean transit time: 3–6 s (both styles' grey and white matter), to 0.1 s."""
    return round(float(rng.uniform(3, 6)), 1)


def kernel_shapes() -> dict[str, Any]:
    """Table 3: style A's kernel shape at one mean, exponential residue of MTT 6 s, 5 s bolus."""
    t = np.arange(N) * DT
    aif = np.exp(-0.5 * ((t - 20.0) / (5.0 / 2.3548)) ** 2)
    rows = {}
    for family, shape in (("exponential", 0.0), ("gamma", 2.5), ("lognormal", 0.5)):
        for beta in (0.3, 2.0):
            tmax, lag = [], []
            for k in KERNEL_SHAPES:
                table = style_a.build_curve_table(
                    aif, family, shape, np.array([6.0]), np.array([beta]), dispersion_shape=k
                )
                tmax.append(round(float(table.tmax[0]), 2))
                lag.append(round(float(table.peak_time[0]) - 20.0, 2))
            rows[f"{family}, beta {beta:g} s"] = {"tmax_s": tmax, "tissue_peak_lag_s": lag}
    return {"kernel_shapes": list(KERNEL_SHAPES), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--draws", type=int, default=200, help="curves per family (table 1) and per style (2)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error("--draws: at least 1")
    started = time.perf_counter()
    result: dict[str, Any] = {"common": [common_input(f, args.draws, args.seed) for f in (5.0, 9.0)]}
    print("Tmax − (tissue peak − arterial peak), healthy tissue, s (mean ± SD over the draws)\n")
    print("1. one common Gaussian arterial input")
    for table in result["common"]:
        print(f"   FWHM {table['fwhm_s']:g} s")
        for name, row in table["families"].items():
            print(f"     {name:18s} {row['mean']:6.2f} ± {row['sd']:.2f}")
        means = table["style_means"]
        print(
            f"     style A {means['A']:.2f}, style B {means['B']:.2f} (family weights): B − A "
            f"{table['difference_s']:+.2f} s"
        )
    result["own"] = own_input(args.draws, args.seed)
    own = result["own"]
    print("\n2. each style behind its own drawn arterial inputs")
    print(
        f"   style A {own['A']['mean']:.2f} ± {own['A']['sd']:.2f}, style B {own['B']['mean']:.2f} ± "
        f"{own['B']['sd']:.2f}: B − A {own['difference_s']:+.2f} s"
    )
    gamma = own["B gamma first pass"]
    print(
        f"   style B with a gamma first pass {gamma['mean']:.2f} ± {gamma['sd']:.2f}: B − A "
        f"{own['gamma_difference_s']:+.2f} s (the population shape's share "
        f"{own['difference_s'] - own['gamma_difference_s']:+.2f} s)"
    )
    result["kernel"] = kernel_shapes()
    print("\n3. style A's kernel shape k at one mean (MTT 6 s, 5 s bolus): Tmax s | tissue peak lag s")
    for name, row in result["kernel"]["rows"].items():
        tmax = " / ".join(f"{v:.2f}" for v in row["tmax_s"])
        lag = " / ".join(f"{v:.2f}" for v in row["tissue_peak_lag_s"])
        print(f"   {name:26s} k = 1/2/3/6: {tmax} | {lag}")
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({**result, "seconds": seconds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
