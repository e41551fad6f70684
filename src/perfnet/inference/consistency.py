"""Shift consistency of a CNN's Tmax: a self-check that needs no truth.

The networks read a series on a time grid that starts ``align_lead_s`` before the detected bolus
arrival (:mod:`perfnet.inference.inputs`) and were trained with their inputs shifted in time
(the bundled ones −3…+8 frames, reflect-padded; :mod:`perfnet.training.dataset`). Where a network has learned
perfusion, shifting its input by a few seconds moves the bolus and the arteries together and leaves
Tmax where it was. Where it has not (a study unlike its training data), its Tmax follows the grid
instead of the bolus. On the generalisation benchmark's studies the networks whose hypoperfused
region came apart (Dice against the truth 0.15–0.36 where oSVD had 0.25–0.96) changed that region
by 50 to 900 mL under a 3 s shift, while most studies they read well stayed within Dice 0.8 of
themselves (docs/analyze.md "Shift-consistency check": the design and the check set, hits, misses and false
alarms).

:func:`shift_consistency` compares the Tmax > 6 s region of the main prediction with those of the
input delayed and advanced by :data:`SHIFT_S`; :func:`consistency_flags` raises
``cnn_inconsistent`` (a warning, verdict review) when one of them overlaps the main region with a
Dice below :data:`MIN_DICE` and differs from it by more than :data:`MIN_CHANGE_ML`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perfnet import qc

#: seconds by which the grid start is moved each way
SHIFT_S = 3.0
#: the region compared: Tmax above this (the hypoperfused threshold of the default lesion preset)
TMAX_THRESHOLD_S = 6.0
#: below this Dice between the main and a shifted region, and ...
MIN_DICE = 0.7
#: ... above this many mL of symmetric difference, the study is flagged
MIN_CHANGE_ML = 5.0


def shift_consistency(
    tmax: np.ndarray,
    shifted: dict[float, np.ndarray],
    brain: np.ndarray,
    voxel_ml: float,
    shift_s: float = SHIFT_S,
) -> dict[str, Any]:
    """For each shifted prediction (keyed by how many seconds later its grid starts than the main
    one's: −3, +3; on a compressed time axis, :mod:`perfnet.inference.timescale`, that many
    seconds of the study, ``shift_s``): the Dice between its Tmax > 6 s region and the main
    prediction's (inside ``brain``), their symmetric difference and its region's volume in mL;
    plus the main region's."""
    from perfnet.evaluation.metrics import dice  # lazily: the evaluation package loads scipy.stats

    main = (tmax > TMAX_THRESHOLD_S) & brain
    rows = {}
    for shift, other in sorted(shifted.items()):
        region = (other > TMAX_THRESHOLD_S) & brain
        rows[f"{shift:+g}"] = {
            "dice": round(dice(main, region), 4),
            "changed_ml": round(float((main ^ region).sum()) * voxel_ml, 2),
            "region_ml": round(float(region.sum()) * voxel_ml, 2),
        }
    return {
        "shift_s": round(float(shift_s), 3),
        "tmax_threshold_s": TMAX_THRESHOLD_S,
        "region_ml": round(float(main.sum()) * voxel_ml, 2),
        "shifts": rows,
    }


def consistency_flags(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``cnn_inconsistent`` when a shifted region overlaps the main one with Dice < 0.7 and
    differs from it by > 5 mL (value: the largest change in mL)."""
    if not result:
        return []
    bad = {
        k: v for k, v in result["shifts"].items() if v["dice"] < MIN_DICE and v["changed_ml"] > MIN_CHANGE_ML
    }
    if not bad:
        return []
    worst = max(v["changed_ml"] for v in bad.values())
    detail = "; ".join(
        f"grid start {k} s: {v['region_ml']:.0f} mL against {result['region_ml']:.0f} mL,"
        f" Dice {v['dice']:.2f}"
        for k, v in bad.items()
    )
    return [qc.flag("cnn_inconsistent", worst, detail)]
