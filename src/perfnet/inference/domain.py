"""A network's training domain: what its training studies looked like, and whether a study does.

A CNN regresses maps for studies like the ones it was trained on; far outside them it still
returns maps, and they look as confident as any (the bundled CT U-Net, trained on studies without
head motion, keeps a hypoperfused Dice of 0.94 on a static phantom but falls to 0.6 with 4 mm of
corrected motion and to 0.3 with 8 mm, where oSVD on the same corrected series stays at 0.8; docs/analyze.md
"Training-domain check"). So training records, for the studies it trained on, a few
*descriptors* measured by the same preprocessing inference runs (:func:`describe`), as an
*envelope* (min and max per descriptor) in the weights' ``domain`` entry; inference measures the
study the same way and raises the QC flag ``outside_training_domain`` (verdict ``unreliable``: the
maps are shown, not trusted) when a descriptor lies beyond the envelope by more than its margin.

Descriptors (each from the preprocessed series every method analyses):

* ``head_motion_mm``: the largest head displacement the motion correction estimated (the same
  number as the ``large_motion`` check; absent without motion correction). Margin: +2 mm, the
  ``large_motion`` threshold (:data:`perfnet.qc.LARGE_MOTION_MM`), above the training maximum.
* ``max_frame_interval_s``: the longest gap between consecutive kept frames. Margin: ×1.25. A
  network trained with frame thinning (``perfnet train --thin``: every k-th frame of its 1 s
  input grid kept, the rest interpolated, as inference interpolates a sparse acquisition) has
  read curves sampled every k s, so its envelope reaches k × the grid interval (:func:`thinned`;
  measured: the bundled CT network keeps its accuracy from 1 to 3–4 s frames on both phantom
  styles where oSVD's falls, ``benchmarks/frame_interval.py``).
* ``tissue_cnr``: the brain's contrast-to-noise ratio of the input QC
  (:func:`perfnet.qc.input_measures`); a lower bound. Margin: ÷1.5.
* ``after_arrival_s``: how long the acquisition runs after the detected bolus arrival (the last
  kept frame's time minus the shared bolus timing's arrival); a lower bound: a network that never
  saw a first pass cut off reads the cut as low flow. Margin: ÷1.5.
* ``bolus_rise_s``: how long the brain curve takes from the detected bolus arrival to its peak
  (the shared bolus timing's ``peak_s − arrival_s``): long for a slow, broad first pass (a slow
  injection, low cardiac output). Margin: ×1.25. Measured at stop 46: the bundled MR network
  trained on first passes of 4–10 s FWHM (brain rise 6–15 s) reads the healthy Tmax of a broad
  one late (style B at a population-AIF stretch of 1.4–1.6, rise 20–23 s: +0.6 to +2.7 s), and
  fine-tuning it on broad ones moved the error to the others (docs/cnn.md "A slow bolus").

The margins are judgement, not fits: a study a little outside the envelope is not known to fail,
and a flag that fires on every study would be read as noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from perfnet import qc

if TYPE_CHECKING:
    from perfnet.preprocess.shared import Preprocessed

#: descriptor → (which side is checked, margin kind, margin): "upper" compares with the
#: envelope's max, "lower" with its min; "add" adds the margin, "mul" multiplies (upper) or divides
#: (lower) by it.
MARGINS: dict[str, tuple[str, str, float]] = {
    "head_motion_mm": ("upper", "add", qc.LARGE_MOTION_MM),
    "max_frame_interval_s": ("upper", "mul", 1.25),
    "tissue_cnr": ("lower", "mul", 1.5),
    "after_arrival_s": ("lower", "mul", 1.5),
    "bolus_rise_s": ("upper", "mul", 1.25),
}
DESCRIPTORS = tuple(MARGINS)
#: Descriptors that flag a study but do not route it (:func:`perfnet.inference.cnn.route`): no
#: bundled specialist trained on more of them than its primary (both MR networks drew the same
#: first passes; their envelopes differ only by which studies were measured).
FLAG_ONLY = frozenset({"bolus_rise_s"})
ROUTING = frozenset(DESCRIPTORS) - FLAG_ONLY
#: Descriptors on which routing prefers a specialist that trained on a study the primary holds only
#: by its margin (:func:`perfnet.inference.cnn.route`), per modality. CT, the acquisition after the
#: arrival: ``ct.pt`` fails unflagged on acquisitions ending 20–30 s after it, where the specialist
#: trained on cut acquisitions reads them (``benchmarks/truncation.py``, stop 43). Not head motion:
#: static studies read up to ~0.35 mm of estimated motion, beyond ``ct.pt``'s 0.28 mm envelope, and
#: the specialist is the weaker network on static studies (generalisation 71017, 71020, 71023). MR,
#: none: of the three static generalisation studies inside ``mr.pt``'s margin only on the
#: acquisition after the arrival (29–33 s, its envelope 33 s), ``mr-moving.pt`` read one better and
#: two worse (71107 hypoperfused Dice 0.77 → 0.69, 71111 core Dice 0.83 → 0.56; stop 44).
ROUTED_WITHIN_MARGIN: dict[str, frozenset[str]] = {"CT": frozenset({"after_arrival_s"})}
#: How a descriptor reads in the flag's message.
_WORDS = {
    "head_motion_mm": ("head motion", "mm"),
    "max_frame_interval_s": ("frame interval", "s"),
    "tissue_cnr": ("tissue contrast-to-noise ratio", ""),
    "after_arrival_s": ("acquisition after the bolus arrival", "s"),
    "bolus_rise_s": ("bolus rise from arrival to the brain curve's peak", "s"),
}


def describe(prepared: Preprocessed) -> dict[str, float]:
    """The descriptors of a preprocessed study (those that can be measured: no motion entry
    without motion correction)."""
    out: dict[str, float] = {}
    motion = prepared.motion
    if motion is not None:
        moved = motion.get("max_head_displacement_mm") or motion.get("max_displacement_mm") or 0.0
        out["head_motion_mm"] = round(float(moved), 3)
    times = np.asarray(prepared.series.times, dtype=np.float64)
    if times.size > 1:
        out["max_frame_interval_s"] = round(float(np.max(np.diff(times))), 3)
    if times.size and prepared.bolus is not None:
        out["after_arrival_s"] = round(float(times[-1] - prepared.bolus.arrival_s), 3)
        rise = float(prepared.bolus.peak_s - prepared.bolus.arrival_s)
        if math.isfinite(rise) and rise > 0:
            out["bolus_rise_s"] = round(rise, 3)
    cnr = (prepared.qc_measures or {}).get("tissue_cnr")
    if cnr is not None and math.isfinite(float(cnr)):
        out["tissue_cnr"] = round(float(cnr), 3)
    return out


def envelope(descriptors: Iterable[dict[str, float]], source: str | None = None) -> dict[str, Any]:
    """The training domain of studies with these descriptors: per descriptor ``[min, max]`` and
    how many studies described it (``studies``)."""
    rows = [d for d in descriptors if d]
    out: dict[str, Any] = {}
    for name in DESCRIPTORS:
        values = [float(d[name]) for d in rows if name in d and math.isfinite(float(d[name]))]
        if values:
            out[name] = [round(min(values), 3), round(max(values), 3)]
    out["studies"] = len(rows)
    if source:
        out["source"] = source
    return out


def union(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """The domain of a model fine-tuned from one with domain ``a`` on studies of domain ``b``:
    it has seen both (None where neither is known). ``studies`` adds up the descriptions joined
    (a cohort trained on in two stages counts twice)."""
    if not a or not b:
        return dict(a or b) if (a or b) else None
    out: dict[str, Any] = {}
    for name in DESCRIPTORS:
        ranges = [d[name] for d in (a, b) if name in d]
        if ranges:
            out[name] = [min(r[0] for r in ranges), max(r[1] for r in ranges)]
    out["studies"] = int(a.get("studies", 0)) + int(b.get("studies", 0))
    sources = [d["source"] for d in (a, b) if d.get("source")]
    if sources:
        out["source"] = "; ".join(sources)
    return out


def noted(domain: dict[str, Any], note: str) -> str:
    """``domain``'s source with ``note`` appended (the note alone where it has none)."""
    return f"{domain['source']}; {note}" if domain.get("source") else note


def thinned(domain: dict[str, Any] | None, thin: Iterable[int], grid_s: float) -> dict[str, Any] | None:
    """``domain`` widened by frame thinning: the longest interval at least ``max(thin)`` ×
    ``grid_s`` (the model's input grid), and the source says so. Unchanged without thinning."""
    k = max((int(t) for t in thin), default=1)
    if not domain or k <= 1 or "max_frame_interval_s" not in domain:
        return domain
    lo, hi = (float(v) for v in domain["max_frame_interval_s"])
    reach = round(k * float(grid_s), 3)
    if reach <= hi:
        return domain
    out = dict(domain, max_frame_interval_s=[lo, reach])
    note = f"frame intervals to {reach:g} s by thinning (every {k}th frame of the {float(grid_s):g} s grid)"
    out["source"] = noted(domain, note)
    return out


def truncated(domain: dict[str, Any] | None, cut_after_s: float | None) -> dict[str, Any] | None:
    """``domain`` widened by truncation training (``perfnet train --truncate``): the acquisition
    after the arrival down to ``cut_after_s``, and the source says so. Unchanged without it."""
    if not domain or cut_after_s is None or "after_arrival_s" not in domain:
        return domain
    lo, hi = (float(v) for v in domain["after_arrival_s"])
    if cut_after_s >= lo:
        return domain
    out = dict(domain, after_arrival_s=[round(float(cut_after_s), 3), hi])
    note = f"acquisitions cut from {float(cut_after_s):g} s after the arrival (--truncate)"
    out["source"] = noted(domain, note)
    return out


def envelope_bound(name: str, domain: dict[str, Any]) -> float | None:
    """The envelope's own bound of ``name`` (its max for an upper, its min for a lower check)."""
    if name not in domain:
        return None
    lo, hi = (float(v) for v in domain[name])
    return hi if MARGINS[name][0] == "upper" else lo


def limit(name: str, domain: dict[str, Any]) -> float | None:
    """The value beyond which ``name`` is outside ``domain`` (the envelope plus its margin)."""
    if name not in domain:
        return None
    side, kind, margin = MARGINS[name]
    lo, hi = (float(v) for v in domain[name])
    if side == "upper":
        return hi + margin if kind == "add" else hi * margin
    return lo - margin if kind == "add" else lo / margin


def outside(
    descriptors: dict[str, float],
    domain: dict[str, Any] | None,
    margin: bool = True,
    only: frozenset[str] | None = None,
) -> list[str]:
    """What of a study lies outside a domain, one phrase per descriptor (empty: inside, or no
    domain recorded); ``margin`` False: outside the envelope itself (what the network was trained
    on, without the margin the flag allows); ``only``: these descriptors alone."""
    if not domain:
        return []
    found = []
    for name, value in descriptors.items():
        if only is not None and name not in only:
            continue
        bound = (limit(name, domain) if margin else envelope_bound(name, domain)) if name in MARGINS else None
        if bound is None:
            continue
        side = MARGINS[name][0]
        if (side == "upper" and value > bound) or (side == "lower" and value < bound):
            words, unit = _WORDS[name]
            lo, hi = domain[name]
            seen = f"≤ {hi:g}" if side == "upper" else f"≥ {lo:g}"
            found.append(f"{words} {value:g}{(' ' + unit) if unit else ''}, trained on {seen}")
    return found


def domain_flags(descriptors: dict[str, float], domain: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The ``outside_training_domain`` flag of a study, if raised (its value: how many
    descriptors lie outside)."""
    found = outside(descriptors, domain)
    return [qc.flag("outside_training_domain", len(found), "; ".join(found))] if found else []
