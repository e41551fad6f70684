"""The CNN's core cross-checked against a deconvolution method run on the same preprocessed series.

The CT network's known failure is a core it reads at too high a CBF, so that the rCBF rule finds
little or nothing (docs/cnn.md "The CNN's core": the demo's 11 mL core, at a short delay, is read at
45 % of healthy tissue and 0.4 mL of it is called; oSVD calls 7.9 mL). No check on the network's
own output sees that, and the model-free peak-enhancement check (:mod:`perfnet.inference.enhancement`)
does not separate a CT core (its peak stays at 0.8–0.9 of healthy tissue's, stop 31). A
deconvolution method reads the core from the curve and the arterial input instead, so where the
deconvolution calls a core of :data:`MIN_MISSED_ML` or more inside the network's own
hypoperfused region, :data:`MIN_RATIO` times the network's core or more, ``cnn_core_disagrees``
(verdict review) names both volumes: read the core on both methods' maps,
or the diffusion core. The other way round, a core of :data:`MIN_MISSED_ML` or more that the
network calls while the deconvolution calls under 1 / :data:`UNSUPPORTED_RATIO` of it inside the
network's hypoperfused region raises ``cnn_core_unsupported`` (verdict review): an over-called
core can deny a patient thrombectomy, and the candidates' false cores on moving studies (docs/cnn.md
"`mr-beta` trained in full") were of this kind. ``analyze --method cnn --cross-check osvd``
(the study API's ``cross_check``) runs it; it costs one conventional analysis on the shared
preprocessing (no second motion correction), so it is not on by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perfnet import qc

#: the deconvolution's core inside the network's own hypoperfused region (Tmax > 6 s) is at
#: least this many mL ...
MIN_MISSED_ML = 5.0
#: ... and at least this many times the network's core (counted as ≥ 1 mL)
MIN_RATIO = 2.0
#: the network's core (>= MIN_MISSED_ML) at least this many times the deconvolution's inside the
#: network's hypoperfused region (counted as ≥ 1 mL): ``cnn_core_unsupported``. Higher than
#: MIN_RATIO because deconvolution under-calls a core on noisy studies (at 2, four of 78 studies
#: were flagged where the network's core was within 11 % of the truth or below it; stop 39,
#: docs/analyze.md "Core cross-check")
UNSUPPORTED_RATIO = 3.0


def compare_cores(
    cnn: dict[str, Any],
    other: dict[str, Any],
    cnn_masks: dict[str, np.ndarray],
    other_masks: dict[str, np.ndarray],
    voxel_ml: float,
    method: str,
    seconds: float,
) -> dict[str, Any]:
    """The cross-check's record (provenance ``cross_check``) from the two analyses' lesions.json
    contents and lesion masks. Only the network's known failure is flagged: a core the
    deconvolution calls *inside the region the network itself calls hypoperfused* and the network
    does not. Deconvolution's own false cores (noise in tissue the network reads as normal: 8–13 mL
    on lesion-free phantoms, stop 32) lie outside that region and raise nothing."""
    a, b = (float(x["volumes_ml"]["core"]) for x in (cnn, other))
    hypo = [float(x["volumes_ml"]["hypoperfused"]) for x in (cnn, other)]
    inside = float((other_masks["core"] & cnn_masks["hypoperfused"]).sum() * voxel_ml)
    missed = inside >= MIN_MISSED_ML and inside >= MIN_RATIO * max(a, 1.0)
    unsupported = a >= MIN_MISSED_ML and a >= UNSUPPORTED_RATIO * max(inside, 1.0)
    return {
        "method": method,
        "cnn_core_ml": round(a, 2),
        "core_ml": round(b, 2),
        "core_in_cnn_hypoperfused_ml": round(inside, 2),
        "cnn_hypoperfused_ml": round(hypo[0], 2),
        "hypoperfused_ml": round(hypo[1], 2),
        "core_rule": other.get("core_rule"),
        "disagrees": bool(missed),
        "unsupported": bool(unsupported),
        "rule": f"{method}'s core inside the network's hypoperfused region >= {MIN_MISSED_ML:g} mL"
        f" and >= {MIN_RATIO:g} x the network's core (disagrees), or the network's core"
        f" >= {MIN_MISSED_ML:g} mL and >= {UNSUPPORTED_RATIO:g} x {method}'s there (unsupported)",
        "seconds": round(seconds, 3),
    }


def cross_check_flags(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``cnn_core_disagrees`` (a core the network may have missed) or ``cnn_core_unsupported``
    (one it may have over-called) when the record says so."""
    if not record:
        return []
    return [
        qc.flag(
            code,
            record["cnn_core_ml"],
            method=record["method"],
            other=record["core_in_cnn_hypoperfused_ml"],
        )
        for code, raised in (
            ("cnn_core_disagrees", record["disagrees"]),
            ("cnn_core_unsupported", record.get("unsupported", False)),
        )
        if raised
    ]
