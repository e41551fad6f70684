"""Quality-control flags of an analysis: what a reader of the maps must know first."""

from __future__ import annotations

from typing import Any

import numpy as np

from perfnet.conventional.aif import AifResult
from perfnet.io.types import PerfusionSeries

#: Thresholds of the flags (documented in provenance.json with each raised flag).
TRUNCATION_FRACTION = 0.35  # tissue/venous curve still above this fraction of its peak at the end
LARGE_MOTION_MM = 2.0  # maximum displacement after which motion correction may not suffice
# motion_unrecoverable: more than a third of the frames cannot be aligned, or an unaligned frame in
# the bolus passage lies in a gap wider than half the passage (perfnet.preprocess.motion
# MAX_EXCLUDED_FRACTION, MAX_GAP_FRACTION; the reason is in provenance motion.unrecoverable_reason)
MIN_CNR = 2.0  # tissue peak enhancement / baseline noise SD
LATE_AIF_FRACTION = 0.6  # AIF peak after this fraction of the acquisition

_MESSAGES = {
    "truncated_bolus": "the tissue or venous curve has not returned near baseline by the last frame: "
    "CBV and MTT are underestimated",
    "truncated_aif": "the arterial curve is cut off by the end of the acquisition",
    "large_motion": "head motion above {value:.1f} mm was corrected; check the maps for artefacts",
    "motion_unrecoverable": "{value:.0f} frame(s) cannot be aligned (through-plane motion) and cannot "
    "be replaced from their neighbours in time: the maps are unreliable",
    "weak_aif": "the arterial input is weak relative to the noise",
    "late_aif": "the arterial input peaks late in the acquisition",
    "noisy_baseline": "tissue contrast-to-noise ratio is low ({value:.1f}); maps are noisy",
    "no_baseline": "the bolus arrives in the first frames: no pre-contrast baseline",
    "no_vof": "no venous output found: the AIF is not corrected for partial volume",
    "aif_partial_volume_high": "the arterial voxels hold little blood (AIF scaled by {value:.1f})",
    "aif_implausible": "no arterial input passed the plausibility checks: the maps are unreliable",
    "non_steady_state_frames_removed": "{value:.0f} leading non-steady-state frame(s) left out of the "
    "baseline and the fit; TTP is still timed from the first acquired frame",
}
#: The AifResult.details entry that says why an AIF flag was raised.
_AIF_REASONS = {"aif_implausible": "aif_implausible_reason", "no_vof": "vof_rejected"}
#: Flags after which the maps are computed but marked unreliable (``provenance["reliable"]``).
UNRELIABLE_FLAGS = frozenset({"aif_implausible", "motion_unrecoverable"})


def _flag(code: str, value: float | None = None, detail: str | None = None) -> dict[str, Any]:
    message = _MESSAGES[code].format(value=value if value is not None else float("nan"))
    if detail:
        message = f"{message} ({detail})"
    return {"code": code, "message": message, "value": None if value is None else round(float(value), 4)}


def _end_fraction(curve: np.ndarray) -> float:
    peak = float(np.max(curve))
    if peak <= 0:
        return 0.0
    return float(np.mean(curve[-3:]) / peak)


def motion_flags(motion: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The ``large_motion`` and ``motion_unrecoverable`` flags of a motion summary
    (:func:`motion_provenance`), if raised."""
    flags: list[dict[str, Any]] = []
    # how far the head moved (its estimate where accepted), also where only part of it was applied
    moved = (
        None if motion is None else motion.get("max_head_displacement_mm") or motion["max_displacement_mm"]
    )
    if moved is not None and moved > LARGE_MOTION_MM:
        flags.append(_flag("large_motion", moved))
    if motion is not None and motion.get("motion_unrecoverable"):
        flags.append(_flag("motion_unrecoverable", len(motion.get("excluded_frames", []))))
    return flags


def non_steady_state_flags(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The informational ``non_steady_state_frames_removed`` flag of a
    :meth:`perfnet.preprocess.nonsteady.NonSteadyState.to_dict` record, if frames were removed."""
    if record and record.get("frames", 0) > 0:
        how = "forced by --skip-frames" if record.get("source") == "forced" else "detected"
        return [_flag("non_steady_state_frames_removed", record["frames"], how)]
    return []


#: Flags that say what was done, not what is wrong: they leave the verdict ``ok``.
INFORMATIONAL_FLAGS = frozenset({"non_steady_state_frames_removed"})


def verdict(flags: list[dict[str, Any]]) -> str:
    """The study's QC verdict: ``unreliable`` when a flag of :data:`UNRELIABLE_FLAGS` was raised
    (the maps are shown, not trusted), ``review`` when any other warning was, else ``ok``."""
    codes = {flag["code"] for flag in flags}
    if codes & UNRELIABLE_FLAGS:
        return "unreliable"
    return "review" if codes - INFORMATIONAL_FLAGS else "ok"


def reliable(flags: list[dict[str, Any]]) -> bool:
    """False when a flag in :data:`UNRELIABLE_FLAGS` was raised (the maps are shown, not trusted)."""
    return not any(flag["code"] in UNRELIABLE_FLAGS for flag in flags)


def quality_flags(
    series: PerfusionSeries,
    conc: np.ndarray,
    mask: np.ndarray,
    bolus: Any,
    aif: AifResult,
    motion: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Flags with a code, a one-line message and the value that raised them."""
    flags: list[dict[str, Any]] = []
    tissue = conc[mask].mean(axis=0)
    end = _end_fraction(tissue)
    venous_end = _end_fraction(aif.vof) if aif.vof is not None else 0.0
    if max(end, venous_end) > TRUNCATION_FRACTION:
        flags.append(_flag("truncated_bolus", max(end, venous_end)))
    flags += motion_flags(motion)
    if bolus.baseline_end >= 3:
        noise = float(np.median(conc[mask][:, : bolus.baseline_end].std(axis=1)))
        cnr = float(tissue.max()) / max(noise, 1e-9)
        if cnr < MIN_CNR:
            flags.append(_flag("noisy_baseline", cnr))
    if bolus.no_baseline:
        flags.append(_flag("no_baseline"))
    for code in aif.flags:
        value = aif.scale if code == "aif_partial_volume_high" else None
        detail = aif.details.get(_AIF_REASONS.get(code, ""))
        flags.append(_flag(code, value, detail))
    return flags
