"""The core rule calibrated for a network's CBF (issue 12, item 3; ``tools/calibrate_core.py``).

The clinical core is hypoperfused tissue with CBF < 30 % of the healthy reference. A network that
regresses CBF pulls the core's low values towards the population mean, so the rule applied to its
maps under-calls the core. :func:`choose` picks, on held-out phantom studies, the relative-CBF
threshold that reproduces the phantom's *truth* core best (mean Dice), among the thresholds that
call no more core than there is (summed over the studies with a core: ``VOLUME_RATIO_MAX``; an
over-called core can deny a patient thrombectomy, DEFUSE-3's core < 70 mL) and put no more than
``FALSE_CORE_ML`` into any study without one (a network reading the core too *low* over-calls at
every threshold: then the least over-calling one); the weights store it as a factor over the rule,
which :mod:`perfnet.lesions` applies to every core threshold of that model's maps.
:func:`bootstrap` says how firmly the studies fix that choice: the threshold chosen on resamples
of them (a handful of large cores or one over-called study can move it by several points).

A regression's pull is not only a factor: the MR network reads a true core of ~5 mL/100 g/min as
~9 whatever the study's healthy flow, a floor rather than a ratio. :func:`choose_offset` picks an
offset a (:data:`OFFSETS`, in the network's CBF units) together with the threshold t, under the
same bounds: core where CBF − a < t × (reference − a), the rule read on the flow above the
network's reading of no flow (:meth:`perfnet.lesions.LesionSettings.core_threshold`);
``score_maps(..., offsets=OFFSETS)`` scores every pair. Ties go to the smaller offset.

A network may read a core's flow partly by its delay (docs/cnn.md "The CNN's core"), and its blood
volume, the area under the curve, without it. :func:`choose_cbv_weight` picks a weight w
(:data:`CBV_WEIGHTS`) with the threshold t, under the same bounds: core where the weighted
geometric mean (rCBF · rCBV^w)^(1/(1+w)) < t (:meth:`perfnet.lesions.LesionSettings.core_mask`);
``score_maps(..., cbv_weights=CBV_WEIGHTS)`` scores every pair; ties go to the smaller weight, and
w = 0 is the plain factor. An offset and a CBV weight are not fitted together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the thresholds tried (up to 0.80: a CBV-weighted index's best threshold lies higher)
THRESHOLDS = np.round(np.arange(0.15, 0.805, 0.01), 2)
#: the issue's bound on false core in a study without one (mL)
FALSE_CORE_ML = 5.0
#: the largest total core found / total true core allowed (studies with a core)
VOLUME_RATIO_MAX = 1.0
#: a study "has a core" from this truth volume on (mL)
MIN_CORE_ML = 1.0
#: resamples of the calibration studies in :func:`bootstrap`
RESAMPLES = 200
#: the offsets tried by :func:`choose_offset` (the network's CBF units, mL/100 g/min)
OFFSETS = np.arange(0.0, 15.0, 2.0)
#: the CBV weights tried by :func:`choose_cbv_weight`
CBV_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0)


def score_maps(
    maps: Any,
    truth_core: np.ndarray,
    exclude: np.ndarray | None = None,
    offsets: Any = None,
    cbv_weights: Any = None,
) -> dict[str, Any]:
    """Per threshold: the core Dice against ``truth_core`` (``scores``; for a study without a core
    the core volume found, mL) and the core volume found (``volumes``, mL); the true volume
    (``true_ml``) and the study's reference CBF (``reference``). ``maps``: a
    :class:`~perfnet.io.types.PerfusionMaps` with cbf and tmax (and cbv for ``cbv_weights``).
    ``offsets``: the same for each offset too (``offset_scores`` / ``offset_volumes``, one list per
    offset, keyed ``f"{a:g}"``); ``cbv_weights``: for each CBV weight (``cbv_scores`` /
    ``cbv_volumes``); not both."""
    from perfnet.evaluation import dice
    from perfnet.lesions import LesionSettings, segment_lesions, voxel_volume_ml

    if offsets is not None and cbv_weights is not None:
        raise ValueError("score_maps: offsets or CBV weights, not both")
    kind = "offset" if offsets is not None else "cbv" if cbv_weights is not None else None
    grid = offsets if kind == "offset" else cbv_weights
    voxel_ml = voxel_volume_ml(maps.affine)
    true_ml = float(truth_core.sum() * voxel_ml)
    has_core = true_ml >= MIN_CORE_ML
    by_value: dict[str, tuple[list[float], list[float]]] = {}
    reference = 0.0
    cbf, tmax = maps["cbf"], maps["tmax"]
    cbv = maps.maps.get("cbv") if kind == "cbv" else None
    for v in [0.0] if kind is None else sorted({0.0, *map(float, grid)}):
        scores, volumes = [], []
        for t in THRESHOLDS:
            settings = LesionSettings(
                core_relative_cbf=float(t),
                cbf_offset=v if kind == "offset" else 0.0,
                core_cbv_weight=v if kind == "cbv" else 0.0,
            )
            result = segment_lesions(
                cbf, tmax, maps.brain_mask, maps.affine, settings, exclude, cbv=cbv, profile=False
            )
            volumes.append(round(float(result.core.sum() * voxel_ml), 3))
            scores.append(dice(result.core, truth_core) if has_core else volumes[-1])
            reference = result.reference_cbf
        by_value[f"{v:g}"] = (scores, volumes)
    scores, volumes = by_value["0"]
    row = {"has_core": has_core, "scores": scores, "volumes": volumes, "true_ml": round(true_ml, 3)}
    row["reference"] = round(float(reference), 3)
    if kind is not None:
        row[f"{kind}_scores"] = {a: v[0] for a, v in by_value.items()}
        row[f"{kind}_volumes"] = {a: v[1] for a, v in by_value.items()}
    return row


def choose(rows: list[dict[str, Any]], rule: float = 0.30) -> tuple[float, dict[str, float]]:
    """The threshold with the best mean core Dice over the studies with a core, among those that
    call at most ``VOLUME_RATIO_MAX`` × the true core volume in all and put at most
    ``FALSE_CORE_ML`` into every study without one. When every threshold within the false-core
    bound over-calls the volume (a network that reads the core too *low*), the least over-calling
    one is taken; when none is within the false-core bound, the rule stays. Ties go to the
    threshold nearest the rule. Returns it and the mean Dice per threshold."""
    cores = [r for r in rows if r["has_core"]]
    dice = np.array([r["scores"] for r in cores], dtype=float)
    false = np.array([r["scores"] for r in rows if not r["has_core"]], dtype=float)
    mean = dice.mean(axis=0) if dice.size else np.zeros(len(THRESHOLDS))
    allowed = false.max(axis=0) <= FALSE_CORE_ML if false.size else np.ones(len(THRESHOLDS), dtype=bool)
    if cores and all("volumes" in r for r in cores) and allowed.any():
        found = np.array([r["volumes"] for r in cores], dtype=float).sum(axis=0)
        within = allowed & (found <= VOLUME_RATIO_MAX * sum(r["true_ml"] for r in cores))
        allowed = within if within.any() else allowed & (found == found[allowed].min())
    if not allowed.any():
        allowed = np.isclose(THRESHOLDS, rule)
    best = max(np.flatnonzero(allowed), key=lambda i: (round(float(mean[i]), 4), -abs(THRESHOLDS[i] - rule)))
    curve = {f"{t:.2f}": round(float(m), 4) for t, m in zip(THRESHOLDS, mean, strict=True)}
    return float(THRESHOLDS[best]), curve


def _at(rows: list[dict[str, Any]], kind: str, value: str) -> list[dict[str, Any]]:
    return [r | {"scores": r[f"{kind}_scores"][value], "volumes": r[f"{kind}_volumes"][value]} for r in rows]


def choose_offset(rows: list[dict[str, Any]], rule: float = 0.30) -> tuple[float, float, dict[str, float]]:
    """The (offset, threshold) pair with the best mean core Dice over the studies with a core, among
    those within both bounds of :func:`choose` (no more core than there is in all, ≤
    ``FALSE_CORE_ML`` in every study without one); ties go to the smaller offset, then to the
    threshold nearest the rule. ``rows`` scored with offsets (:func:`score_maps`). When no pair with
    an offset is within the bounds, :func:`choose`'s pick without one. Returns the offset, the
    threshold and the mean Dice per threshold at that offset."""
    return _choose_along(rows, "offset", rule)


def choose_cbv_weight(
    rows: list[dict[str, Any]], rule: float = 0.30
) -> tuple[float, float, dict[str, float]]:
    """:func:`choose_offset` for the CBV weight (module docstring): the (weight, threshold) pair
    with the best mean core Dice within both bounds, ties to the smaller weight; ``rows`` scored
    with CBV weights. Returns the weight, the threshold and the mean Dice per threshold at it."""
    return _choose_along(rows, "cbv", rule)


def _choose_along(
    rows: list[dict[str, Any]], kind: str, rule: float
) -> tuple[float, float, dict[str, float]]:
    values = sorted(rows[0][f"{kind}_scores"], key=float) if rows else ["0"]
    best: tuple[tuple[float, ...], str, float, dict[str, float]] | None = None
    for value in values:
        at = _at(rows, kind, value)
        threshold, curve = choose(at, rule)
        i = int(np.argmin(abs(THRESHOLDS - threshold)))
        cores = [r for r in at if r["has_core"]]
        false = [r["scores"][i] for r in at if not r["has_core"]]
        within = max(false, default=0.0) <= FALSE_CORE_ML and sum(r["volumes"][i] for r in cores) <= (
            VOLUME_RATIO_MAX * sum(r["true_ml"] for r in cores)
        )
        key = (float(within), curve[f"{threshold:.2f}"], -float(value))
        if best is None or key > best[0]:
            best = (key, value, threshold, curve)
    assert best is not None
    if not best[0][0]:
        threshold, curve = choose(rows, rule)
        return 0.0, threshold, curve
    return float(best[1]), best[2], best[3]


def bootstrap(
    rows: list[dict[str, Any]], rule: float = 0.30, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """The threshold :func:`choose` picks on ``resamples`` resamples of ``rows`` (as many studies
    as there are, drawn with replacement; seeded, so the same rows give the same answer): its 5th,
    50th and 95th percentiles and the share of resamples that pick the threshold chosen on all
    rows. A wide interval says the calibration studies are too few to fix the factor."""
    kind = next((k for k in ("offset", "cbv") if rows and f"{k}_scores" in rows[0]), None)

    def pick(sample: list[dict[str, Any]]) -> tuple[float, float]:
        if kind is not None:
            return _choose_along(sample, kind, rule)[:2]
        return 0.0, choose(sample, rule)[0]

    chosen = pick(rows)
    rng = np.random.default_rng(seed)
    n = len(rows)
    picks = np.array([pick([rows[i] for i in rng.integers(0, n, n)]) for _ in range(resamples)])
    p5, p50, p95 = (round(float(v), 2) for v in np.percentile(picks[:, 1], [5, 50, 95]))
    spread = {
        "resamples": resamples,
        "threshold_p5": p5,
        "threshold_median": p50,
        "threshold_p95": p95,
        "share_choosing_it": round(float(np.all(np.isclose(picks, chosen), axis=1).mean()), 3),
    }
    if kind is not None:
        name = {"offset": "offset", "cbv": "cbv_weight"}[kind]
        o5, o50, o95 = (round(float(v), 2) for v in np.percentile(picks[:, 0], [5, 50, 95]))
        spread |= {f"{name}_p5": o5, f"{name}_median": o50, f"{name}_p95": o95}
    return spread


__all__ = [
    "CBV_WEIGHTS",
    "FALSE_CORE_ML",
    "MIN_CORE_ML",
    "OFFSETS",
    "RESAMPLES",
    "THRESHOLDS",
    "VOLUME_RATIO_MAX",
    "bootstrap",
    "choose",
    "choose_cbv_weight",
    "choose_offset",
    "score_maps",
]
