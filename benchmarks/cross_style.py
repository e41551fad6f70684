"""The cross-style gap both ways (issue 12.1): one reduced recipe trained on style A, on style B
and on both, each scored on the studies of both styles of ``benchmarks/generalisation.py``.

    python benchmarks/cross_style.py --modality ct [--train A,B,AB] [--cases 48] [--seed 0]
        [--work DIR] [--studies 12] [--jobs 1]

The bundled networks train on style A only (``tools/train_weights.py``), so ``generalisation.py``
measures their gap one way. This runs the experiment that measures it both ways, from the
simulation to the table:

1. cohorts of ``--cases`` static studies (``perfnet simulate --no-motion``) of style A
   (``geometric``) and of style B (``mni``) at the seeds of :data:`COHORT_SEEDS` (disjoint from the
   tests, the bundled cohorts, the calibration studies and the benchmarks' 70000+), and ``AB``: the
   first half of each merged, style B's subjects renumbered from sub-1001 (the same studies as in
   the one-style cohorts, since study i of a cohort is drawn from seed + i);
2. each trained with the reduced recipe :data:`RECIPES` of the modality (``perfnet train``, fold 0
   of 5: the bundled recipe's first stage, shortened for CT; no log targets, frame thinning or core
   calibration, so its core Dice is near 0 and not the point), reusing the prepared slices of another
   seed's run on the same cohort where there is one;
3. each network scored by ``generalisation.py --methods cnn --weights W --time-scaling off`` on its
   ``--studies`` studies per style (the weights record the styles they trained on,
   ``training.phantom_styles``, and the scores say so);
4. the table: per training set, Tmax MAEC / hypoperfused Dice / rCBF r tested on A and on B and
   the gap B − A (``--json``: the table and each run's means).

Every step is skipped where its output already lies in ``--work`` (default
``cross-style-<modality>``), so an interrupted run continues and a second ``--seed`` trains only
the networks. ``--simulate-args``, ``--train-args`` and ``--score-args`` append options to the
three commands (a later option overrides the recipe's, e.g. ``--train-args "--epochs 2"``).
On this 2-core machine one CT network of the recipe trains in ~18 min (2 threads) to ~25 min (1),
one MR network in ~45 min (1 thread); scoring takes ~3 min (CT) / ~10 min (MR) per network.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_weights  # noqa: E402  (tools/: the cohort simulation and merge of `make weights`)

STYLES = {"A": "geometric", "B": "mni"}
#: first seed of each style's cohort per modality (stops 50 and 51 trained on these cohorts)
COHORT_SEEDS = {("CT", "A"): 15100, ("CT", "B"): 15200, ("MR", "A"): 15300, ("MR", "B"): 15400}
#: the grid each modality's cohorts are simulated on (the bundled cohorts')
GRIDS = {"CT": ["--size", "128"], "MR": ["--slices", "10"]}
#: the reduced recipes, from the bundled recipes' own first stages (tools/train_weights.py): CT's
#: (U-Net width 16, 1.8 mm, 4 epochs at 128² then the rest, linear targets) at 24 epochs instead of
#: 57 with the learning rate halved every 8; MR's as it is (temporal network, arterial bolus patch,
#: 27 epochs). A later option overrides an earlier one.
RECIPES = {
    "CT": [*train_weights.SETTINGS["ct"]["stages"][0]["train"], "--epochs", "24", "--lr-step", "8"],
    "MR": list(train_weights.SETTINGS["mr"]["stages"][0]["train"]),
}
#: the metrics of the table (generalisation.py's means) and how they print
TABLE = (("tmax_maec", "Tmax MAEC s", 2), ("hypoperfused_dice", "hypo Dice", 2), ("rcbf_r", "rCBF r", 2))


def cohort_args(modality: str, training: str, cases: int, extra: list[str]) -> list:
    """``perfnet simulate`` arguments of a training set's cohort (a list of them for ``AB``)."""
    if training == "AB":
        return [cohort_args(modality, s, cases // 2, extra) for s in ("A", "B")]
    seed = COHORT_SEEDS[(modality, training)]
    return [
        *("--style", STYLES[training], "--modality", modality, "--cases", str(cases)),
        *("--seed", str(seed), *GRIDS[modality], "--no-motion", *extra),
    ]


def means_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The cnn means of one scoring run, per style (A / B)."""
    by_style = {v: k for k, v in STYLES.items()}
    return {by_style[m["style"]]: m for m in document["means"] if m["method"] == "cnn"}


def gap_table(scores: dict[str, dict[str, Any]]) -> list[str]:
    """The table's lines: per training set (``scores``: its scoring run's JSON), the metrics tested
    on A, on B, and the gap B − A."""

    def cells(values: dict[str, Any] | None, sign: str = "") -> str:
        return " / ".join(
            "n/a" if values is None or values.get(k) is None else f"{values[k]:{sign}.{d}f}"
            for k, _, d in TABLE
        )

    labels = " / ".join(label for _, label, _ in TABLE)
    lines = [
        f"  {'trained on':12s} {'tested on A':>22s} {'tested on B':>22s} {'gap B − A':>24s}   ({labels})"
    ]
    for training, document in scores.items():
        m = means_of(document)
        a, b = m.get("A"), m.get("B")
        gap = None
        if a is not None and b is not None:
            gap = {k: None if a[k] is None or b[k] is None else b[k] - a[k] for k, _, _ in TABLE}
        trained = document.get("trained_on", {}).get(f"{document['means'][0]['modality']} cnn", "")
        lines.append(f"  {training:12s} {cells(a):>22s} {cells(b):>22s} {cells(gap, '+'):>24s}   ({trained})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modality", choices=["ct", "mr"], required=True)
    parser.add_argument("--train", default="A,B,AB", help="training sets: A, B, AB (comma-separated)")
    parser.add_argument(
        "--cases", type=int, default=48, help="studies per one-style cohort (AB: half of each)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the training runs' seed")
    parser.add_argument("--work", type=Path, help="cohorts, runs and scores (default cross-style-<modality>)")
    parser.add_argument("--studies", type=int, default=12, help="scored studies per style")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for simulation and preparation")
    parser.add_argument("--simulate-args", default="", help="options appended to `perfnet simulate`")
    parser.add_argument("--train-args", default="", help="options appended to `perfnet train`")
    parser.add_argument("--score-args", default="", help="options appended to generalisation.py")
    parser.add_argument("--json", type=Path, help="write the table's numbers here")
    args = parser.parse_args(argv)
    modality = args.modality.upper()
    sets = [s.strip().upper() for s in args.train.split(",") if s.strip()]
    unknown = [s for s in sets if s not in ("A", "B", "AB")]
    if unknown or not sets:
        parser.error(f"--train: A, B or AB, got {args.train!r}")
    if args.cases < 2:
        parser.error("--cases: at least 2")
    work = args.work or Path(f"cross-style-{args.modality}")
    work.mkdir(parents=True, exist_ok=True)
    train_weights.JOBS = args.jobs
    import generalisation

    scores: dict[str, dict[str, Any]] = {}
    for training in sets:
        cohort = work / f"{args.modality}-{training}-cohort"
        train_weights.ensure_cohort(
            cohort, cohort_args(modality, training, args.cases, shlex.split(args.simulate_args))
        )
        run = work / f"{args.modality}-{training}-seed{args.seed}"
        if not (run / "weights.pt").is_file():
            reuse = [  # another seed's run on the same cohort: its prepared slices (same files)
                token
                for other in sorted(work.glob(f"{args.modality}-{training}-seed*"))
                if other.is_dir() and other != run
                for token in ("--reuse-slices", str(other))
            ]
            train_weights.perfnet(
                "train", str(cohort), "--out", str(run), *RECIPES[modality], "--seed", str(args.seed),
                "--jobs", str(args.jobs), *reuse, *shlex.split(args.train_args),
            )  # fmt: skip
        scored = run.with_suffix(".json")
        if not scored.is_file():
            generalisation.main(
                [
                    *("--modality", args.modality, "--studies", str(args.studies), "--methods", "cnn"),
                    *("--weights", str(run / "weights.pt"), "--time-scaling", "off"),
                    *("--json", str(scored), *shlex.split(args.score_args)),
                ]
            )
        scores[training] = json.loads(scored.read_text())
    print(f"\ncross-style gap, {modality}: the reduced recipe trained on each set (seed {args.seed}), scored")
    print("\n".join(gap_table(scores)))
    if args.json:
        table = {t: means_of(d) for t, d in scores.items()}
        args.json.write_text(
            json.dumps({"modality": modality, "seed": args.seed, "means": table}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
