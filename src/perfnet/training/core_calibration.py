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
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the thresholds tried
THRESHOLDS = np.round(np.arange(0.15, 0.605, 0.01), 2)
#: the issue's bound on false core in a study without one (mL)
FALSE_CORE_ML = 5.0
#: the largest total core found / total true core allowed (studies with a core)
VOLUME_RATIO_MAX = 1.0
#: a study "has a core" from this truth volume on (mL)
MIN_CORE_ML = 1.0
#: resamples of the calibration studies in :func:`bootstrap`
RESAMPLES = 200


def score_maps(maps: Any, truth_core: np.ndarray, exclude: np.ndarray | None = None) -> dict[str, Any]:
    """Per threshold: the core Dice against ``truth_core`` (``scores``; for a study without a core
    the core volume found, mL) and the core volume found (``volumes``, mL); the true volume
    (``true_ml``). ``maps``: a :class:`~perfnet.io.types.PerfusionMaps` with cbf and tmax."""
    from perfnet.evaluation import dice
    from perfnet.lesions import LesionSettings, segment_lesions, voxel_volume_ml

    voxel_ml = voxel_volume_ml(maps.affine)
    true_ml = float(truth_core.sum() * voxel_ml)
    has_core = true_ml >= MIN_CORE_ML
    scores, volumes = [], []
    for t in THRESHOLDS:
        settings = LesionSettings(core_relative_cbf=float(t))
        found = segment_lesions(
            maps["cbf"], maps["tmax"], maps.brain_mask, maps.affine, settings, exclude
        ).core
        volumes.append(round(float(found.sum() * voxel_ml), 3))
        scores.append(dice(found, truth_core) if has_core else volumes[-1])
    return {"has_core": has_core, "scores": scores, "volumes": volumes, "true_ml": round(true_ml, 3)}


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


def bootstrap(
    rows: list[dict[str, Any]], rule: float = 0.30, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """The threshold :func:`choose` picks on ``resamples`` resamples of ``rows`` (as many studies
    as there are, drawn with replacement; seeded, so the same rows give the same answer): its 5th,
    50th and 95th percentiles and the share of resamples that pick the threshold chosen on all
    rows. A wide interval says the calibration studies are too few to fix the factor."""
    chosen, _ = choose(rows, rule)
    rng = np.random.default_rng(seed)
    picks = np.array(
        [choose([rows[i] for i in rng.integers(0, len(rows), len(rows))], rule)[0] for _ in range(resamples)]
    )
    p5, p50, p95 = (round(float(v), 2) for v in np.percentile(picks, [5, 50, 95]))
    return {
        "resamples": resamples,
        "threshold_p5": p5,
        "threshold_median": p50,
        "threshold_p95": p95,
        "share_choosing_it": round(float(np.isclose(picks, chosen).mean()), 3),
    }


__all__ = [
    "FALSE_CORE_ML",
    "MIN_CORE_ML",
    "RESAMPLES",
    "THRESHOLDS",
    "VOLUME_RATIO_MAX",
    "bootstrap",
    "choose",
    "score_maps",
]
