"""Quality control of a perfusion study, the same for every method (conventional and CNN alike).

What a reader of the maps must know first: each check raises a *flag* (a code, a one-line message
and the value that raised it) and the flags give the study's *verdict*:

- ``ok``: nothing was raised but informational flags (what was done, not what is wrong);
- ``review``: a warning was raised: the maps are computed as usual, read them with the flag;
- ``unreliable``: a flag of :data:`UNRELIABLE_FLAGS` was raised: the maps are shown, not trusted.

Three groups of checks, all emitted through this module:

* input checks (:func:`input_flags`), which need no arterial input and run once in the shared
  preprocessing (:mod:`perfnet.preprocess.shared`) before the method branch: truncated
  acquisition, tissue still enhancing at the last frame (a bolus that arrived too late for the
  acquisition), no pre-contrast baseline, low SNR, head motion (large / unrecoverable) and
  non-steady-state frames removed;
* arterial-input checks (:func:`aif_flags`) of the methods that select an AIF (the conventional
  ones): the venous curve's truncation and the AIF/VOF selection's own flags;
* lesion checks (:func:`lesion_flags`) on the segmented lesions, the same for every method:
  hypoperfusion in both hemispheres (``bilateral_hypoperfusion``).

The thresholds and where they come from are in docs/analyze.md ("Quality control").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

#: Tissue (or venous) curve still above this fraction of its peak over the last three frames:
#: the acquisition stopped before the first pass was over (CBV and MTT are underestimated).
TRUNCATION_FRACTION = 0.35
#: Head displacement (mm, sphere of 80 mm) above which motion correction may not suffice.
LARGE_MOTION_MM = 2.0
#: Tissue contrast-to-noise ratio below which the maps are dominated by noise (``low_snr``):
#: peak of the brain's mean enhancement curve over the typical voxel's temporal noise SD (see
#: :func:`input_measures`).
MIN_TISSUE_CNR = 0.65
#: ``bilateral_hypoperfusion``: the hypoperfused volume (Tmax > 6 s, cleaned) on the side without
#: the lesion is at least this many mL and this fraction of the affected side's. An ischaemic stroke
#: is one-sided; hypoperfusion on both sides is far more often an artefact (head motion left at the
#: brain's edges, a mistimed or misplaced arterial input) than a bilateral lesion (e.g. the basilar
#: artery's two posterior territories, bilateral carotid disease), so it is a warning, not a verdict.
BILATERAL_MIN_ML = 10.0
BILATERAL_FRACTION = 0.25
#: At most this many brain voxels (an evenly strided subset) enter the input measures.
MAX_VOXELS = 50_000
#: ``late_bolus``: the series is averaged in-plane to voxels of about this size (mm) ...
LATE_GRID_MM = 2.0
#: ... and each curve over this many such voxels square (about 9 mm: a voxel's own curve is too
#: noisy to tell a rise in its last frames) before it is judged (:func:`late_peaking`) ...
LATE_SMOOTH_VOXELS = 5
#: ... with these thresholds: the last 3-frame mean is the curve's highest, ``LATE_PEAK_Z`` noise
#: SDs of such a mean above baseline and at most ``LATE_PEAK_CAP`` times the peak of the brain's
#: median curve (a rise beyond that is bone or air moved in by the head, not contrast) ...
LATE_PEAK_Z = 3.0
LATE_PEAK_CAP = 2.0
#: ... and what is left after an in-plane opening (3 × 3: a territory, not the rim that residual
#: motion leaves) is at least this many mL: the bolus reached that tissue at or after the last
#: frame, so its Tmax, CBF and the core there are not measured, by any method.
LATE_BOLUS_ML = 10.0
# motion_unrecoverable: more than a third of the frames cannot be aligned, or an unaligned frame in
# the bolus passage lies in a gap wider than half the passage (perfnet.preprocess.motion
# MAX_EXCLUDED_FRACTION, MAX_GAP_FRACTION; the reason is in provenance motion.unrecoverable_reason)

_MESSAGES = {
    "truncated_bolus": "the {curve} curve has not returned near baseline by the last frame "
    "({value:.0%} of its peak): CBV and MTT are underestimated",
    "late_bolus": "{value:.0f} mL of brain tissue is still enhancing at the last frame: the bolus "
    "reached it after the acquisition ended, so its CBF, Tmax and core are not measured by any "
    "method (a cut curve reads as low flow: a core there may be over-called, or missed); read the "
    "diffusion images, or acquire longer",
    "truncated_aif": "the arterial curve is cut off by the end of the acquisition",
    "large_motion": "head motion above {value:.1f} mm was corrected; check the maps for artefacts",
    "through_plane_steps": "the head moved through the thick slices at {frames} (up to {value:.1f} mm): "
    "the signal steps this left were levelled in {fraction:.0%} of the brain voxels; read the edge "
    "slices with care",
    "motion_unrecoverable": "{value:.0f} frame(s) cannot be aligned (through-plane motion) and cannot "
    "be replaced from their neighbours in time: the maps are unreliable",
    "weak_aif": "the arterial input is weak relative to the noise",
    "late_aif": "the arterial input peaks late in the acquisition",
    "low_snr": "tissue contrast-to-noise ratio {value:.2f} (< {threshold:g}): the bolus barely rises "
    "above the image noise (very low dose?); the maps are noisy",
    "no_baseline": "the bolus arrives in the first frames: no pre-contrast baseline",
    "no_vof": "no venous output found: the AIF is not corrected for partial volume",
    "aif_partial_volume_high": "the arterial voxels hold little blood (AIF scaled by {value:.1f})",
    "aif_implausible": "no arterial input passed the plausibility checks: the maps are unreliable",
    "outside_training_domain": "the study lies outside what this network was trained on: its maps "
    "are not trusted; read a conventional method's",
    "cnn_inconsistent": "the network's Tmax > 6 s region changes by {value:.0f} mL when its input "
    "starts 3 s earlier or later (it follows its time grid, not only the bolus): compare its maps "
    "with a conventional method's",
    "cnn_unenhanced_normal": "{value:.0f} mL of brain tissue barely enhances (peak below {low:.0%} of "
    "the tissue's median) yet the network reads it as Tmax < 6 s: a core it may have missed; compare "
    "a conventional method's maps or the diffusion core",
    "cnn_core_disagrees": "the network calls a core of {value:.1f} mL where {method} on the same series "
    "calls {other:.1f} mL inside the network's own hypoperfused region: a core the network may have "
    "missed; read the core on both methods' maps, or the diffusion core, before deciding",
    "cnn_core_unsupported": "the network calls a core of {value:.1f} mL where {method} on the same "
    "series calls {other:.1f} mL inside the network's own hypoperfused region: a core the network may "
    "have over-called; read the core on both methods' maps, or the diffusion core, before deciding",
    "bilateral_hypoperfusion": "hypoperfusion on both sides of the brain: {value:.0f} mL on the side "
    "without the lesion ({fraction:.0%} of the affected side's {affected:.0f} mL); a stroke is "
    "one-sided, so check head motion, the arterial input and the timing before reading the volumes "
    "(a bilateral lesion, e.g. of both posterior territories, also looks like this)",
    "non_steady_state_frames_removed": "{value:.0f} leading non-steady-state frame(s) left out of the "
    "baseline and the fit; TTP is still timed from the first acquired frame",
}
#: The AIF selection's details entry that says why an AIF flag was raised.
_AIF_REASONS = {"aif_implausible": "aif_implausible_reason", "no_vof": "vof_rejected"}
#: Flags after which the maps are computed but marked unreliable (``provenance["reliable"]``).
#: ``outside_training_domain`` is raised by a CNN only (:mod:`perfnet.inference.domain`; so is
#: ``cnn_inconsistent``, :mod:`perfnet.inference.consistency`, and ``cnn_unenhanced_normal``,
#: :mod:`perfnet.inference.enhancement`, and ``cnn_core_disagrees`` / ``cnn_core_unsupported``,
#: :mod:`perfnet.inference.crosscheck`, warnings: verdict ``review``).
UNRELIABLE_FLAGS = frozenset({"aif_implausible", "motion_unrecoverable", "outside_training_domain"})
#: Flags that say what was done, not what is wrong: they leave the verdict ``ok``.
INFORMATIONAL_FLAGS = frozenset({"non_steady_state_frames_removed"})
#: The verdicts, mildest first.
VERDICTS = ("ok", "review", "unreliable")


def flag(code: str, value: float | None = None, detail: str | None = None, **fields: Any) -> dict[str, Any]:
    """One QC flag: ``{"code", "message", "value"}`` (``fields`` fill the message's placeholders)."""
    fields = {"curve": "tissue", "threshold": float("nan")} | fields
    message = _MESSAGES[code].format(value=value if value is not None else float("nan"), **fields)
    if detail:
        message = f"{message} ({detail})"
    return {"code": code, "message": message, "value": None if value is None else round(float(value), 4)}


def verdict(flags: Iterable[dict[str, Any]]) -> str:
    """The study's QC verdict: ``unreliable`` when a flag of :data:`UNRELIABLE_FLAGS` was raised
    (the maps are shown, not trusted), ``review`` when any other warning was, else ``ok``."""
    codes = {f["code"] for f in flags}
    if codes & UNRELIABLE_FLAGS:
        return "unreliable"
    return "review" if codes - INFORMATIONAL_FLAGS else "ok"


def reliable(flags: Iterable[dict[str, Any]]) -> bool:
    """False when a flag in :data:`UNRELIABLE_FLAGS` was raised (the maps are shown, not trusted)."""
    return not any(f["code"] in UNRELIABLE_FLAGS for f in flags)


def end_fraction(curve: np.ndarray) -> float:
    """Mean of the last three frames over the peak of an enhancement curve (0 without a peak)."""
    curve = np.asarray(curve, dtype=np.float64)
    peak = float(np.max(curve)) if curve.size else 0.0
    if peak <= 0:
        return 0.0
    return float(np.mean(curve[-3:]) / peak)


# --- input checks (no arterial input needed) -------------------------------------------------------
def motion_flags(motion: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The ``large_motion``, ``through_plane_steps`` and ``motion_unrecoverable`` flags of a motion summary
    (:func:`perfnet.preprocess.shared.motion_provenance`), if raised."""
    flags: list[dict[str, Any]] = []
    # how far the head moved (its estimate where accepted), also where only part of it was applied
    moved = (
        None if motion is None else motion.get("max_head_displacement_mm") or motion["max_displacement_mm"]
    )
    if moved is not None and moved > LARGE_MOTION_MM:
        flags.append(flag("large_motion", moved))
    steps = None if motion is None else motion.get("through_plane_steps")
    if steps and steps.get("frames"):
        at = ", ".join(f"{t:.0f} s" for t in steps["times_s"])
        flags.append(
            flag(
                "through_plane_steps",
                max(steps["jump_mm"]),
                frames=f"{len(steps['frames'])} frame(s) ({at})",
                fraction=steps.get("levelled_brain_fraction", 0.0),
            )
        )
    if motion is not None and motion.get("motion_unrecoverable"):
        flags.append(flag("motion_unrecoverable", len(motion.get("excluded_frames", []))))
    return flags


def non_steady_state_flags(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The informational ``non_steady_state_frames_removed`` flag of a
    :meth:`perfnet.preprocess.nonsteady.NonSteadyState.to_dict` record, if frames were removed."""
    if record and record.get("frames", 0) > 0:
        how = "forced by --skip-frames" if record.get("source") == "forced" else "detected"
        return [flag("non_steady_state_frames_removed", record["frames"], how)]
    return []


def _enhancement(values: np.ndarray, baseline_end: int, modality: str, echo_time: float | None) -> np.ndarray:
    """(V, T) signal → enhancement over the first ``baseline_end`` frames (CT HU; MR ΔR2*)."""
    from perfnet.preprocess.concentration import to_concentration

    conc = to_concentration(values[:, None, None, :], baseline_end, modality, echo_time)
    return conc[:, 0, 0, :].astype(np.float64)


def temporal_noise_sd(curves: np.ndarray) -> np.ndarray:
    """(V, T) → per-curve white-noise SD from second differences, 1.4826·median|Δ²c|/√6, measured on
    every frame (:func:`perfnet.preprocess.bolus.noise_sd_per_curve`, the one implementation)."""
    from perfnet.preprocess.bolus import noise_sd_per_curve

    return noise_sd_per_curve(curves)


def late_peaking(curves: np.ndarray, noise_sd: np.ndarray, reference_peak: float) -> np.ndarray:
    """(V, T) enhancement curves, their temporal noise SDs and the peak of the brain's median curve
    → bool (V,): the curve's 3-frame mean is highest over the last three frames, ``LATE_PEAK_Z``
    noise SDs of such a mean above zero and at most ``LATE_PEAK_CAP`` × ``reference_peak``: the
    bolus had not passed its peak there when the acquisition stopped. A curve that does not
    enhance (CSF, noise) rarely passes (its highest window is as likely anywhere and seldom
    ``LATE_PEAK_Z`` SDs up)."""
    curves = np.asarray(curves, dtype=np.float32)
    if curves.shape[1] < 4:
        return np.zeros(curves.shape[0], dtype=bool)
    means = (curves[:, 2:] + curves[:, 1:-1] + curves[:, :-2]) / 3.0
    last = means[:, -1]
    return (
        (last >= means[:, :-1].max(axis=1))
        & (last >= LATE_PEAK_Z * np.asarray(noise_sd) / np.sqrt(3.0))
        & (last <= LATE_PEAK_CAP * reference_peak)
    )


def late_tissue(series: Any, mask: np.ndarray, baseline_end: int) -> np.ndarray:
    """(X, Y, Z) bool: the brain tissue whose enhancement is still rising at the last frame
    (``late_bolus``; lesions.json ``in_late_tissue_ml``).

    The frames are averaged in-plane to about :data:`LATE_GRID_MM` voxels (brain voxels only, one
    slice at a time), converted to enhancement, averaged over :data:`LATE_SMOOTH_VOXELS` such voxels
    square within the brain, judged by :func:`late_peaking`, the late voxels opened in-plane
    (3 × 3), and brought back to the series' grid (within ``mask``)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    nx, ny, nz, nt = series.data.shape
    dx, dy, _ = series.voxel_size
    f = max(1, round(LATE_GRID_MM / min(dx, dy)))
    found = np.zeros(mask.shape, dtype=bool)
    if nt < 4 or not mask.any():
        return found
    # the mask's in-plane bounding box, whole blocks of f × f, with a margin for the smoothing
    margin = f * (LATE_SMOOTH_VOXELS // 2 + 1)
    columns = np.argwhere(mask.any(axis=2))
    (x0, y0), (x1, y1) = columns.min(axis=0), columns.max(axis=0)
    x0, y0 = max(0, x0 - margin) // f * f, max(0, y0 - margin) // f * f
    cx, cy = (min(nx, x1 + 1 + margin) - x0) // f, (min(ny, y1 + 1 + margin) - y0) // f
    if cx < 3 or cy < 3:
        return found
    box = (slice(x0, x0 + cx * f), slice(y0, y0 + cy * f))
    weight = mask[box].reshape(cx, f, cy, f, nz).sum(axis=(1, 3)).astype(np.float32)
    coarse = np.zeros((cx, cy, nz, nt), dtype=np.float32)
    for z in range(nz):  # one slice at a time: a 512² study is never copied whole
        frames = np.asarray(series.data[(*box, z)], dtype=np.float32) * mask[(*box, z, None)]
        coarse[:, :, z] = frames.reshape(cx, f, cy, f, nt).sum(axis=(1, 3))
    inside = weight >= 0.5 * f * f
    coarse[inside] /= weight[inside][:, None]
    te = getattr(series, "echo_time", None)
    conc = np.zeros_like(coarse)
    conc[inside] = _enhancement(coarse[inside], baseline_end, series.modality, te).astype(np.float32)
    size = (LATE_SMOOTH_VOXELS, LATE_SMOOTH_VOXELS, 1)
    total = ndimage.uniform_filter(conc, (*size, 1), mode="constant")
    share = ndimage.uniform_filter(inside.astype(np.float32), size, mode="constant")
    curves = total[inside] / np.maximum(share[inside], 1e-6)[:, None]
    late = np.zeros(inside.shape, dtype=bool)
    late[inside] = late_peaking(curves, temporal_noise_sd(curves), float(np.median(curves, axis=0).max()))
    late = ndimage.binary_opening(late, np.ones((3, 3, 1), dtype=bool))
    found[box] = np.repeat(np.repeat(late, f, axis=0), f, axis=1)
    return found & mask


def late_peak_ml(series: Any, mask: np.ndarray, baseline_end: int) -> float:
    """The volume (mL) of :func:`late_tissue`."""
    return _volume_ml(series, late_tissue(series, mask, baseline_end))


def _volume_ml(series: Any, mask: np.ndarray) -> float:
    from perfnet.lesions import voxel_volume_ml

    return float(mask.sum()) * voxel_volume_ml(series.affine)


def _brain_values(data4d: np.ndarray, mask: np.ndarray, max_voxels: int) -> np.ndarray:
    index = np.flatnonzero(mask)
    index = index[:: max(1, index.size // max_voxels)]
    return np.asarray(data4d.reshape(-1, data4d.shape[3])[index], dtype=np.float32)


def input_measures(
    series: Any,
    mask: np.ndarray,
    baseline_end: int,
    acquired_data: np.ndarray | None = None,
    max_voxels: int = MAX_VOXELS,
    late: np.ndarray | None = None,
) -> dict[str, float]:
    """The numbers the input checks judge, from the series every method analyses.

    ``series``: the preprocessed :class:`~perfnet.io.types.PerfusionSeries` (non-steady-state frames
    removed, motion corrected); ``acquired_data``: the same frames before motion correction (the
    noise is measured there: resampling blurs it); ``baseline_end``: the baseline frames of the
    bolus timing.

    - ``tissue_peak``: peak of the brain's mean enhancement curve (CT HU − baseline; MR ΔR2* =
      −ln(S/S₀)/TE), brain voxels as given by ``mask``;
    - ``tissue_end_fraction``: that curve's mean over the last three frames / its peak;
    - ``noise_sd``: median over the brain voxels of each voxel's temporal noise SD
      (:func:`temporal_noise_sd`) in the same units;
    - ``tissue_cnr``: ``tissue_peak / noise_sd``: how far an average voxel's bolus rises above its
      own noise — the quantity that sets the noise of every voxel-wise map, whatever the method;
    - ``late_peak_ml``: the brain volume whose enhancement is still rising at the last frame
      (``late``, the :func:`late_tissue` of the same series when given, else computed here; on
      all brain voxels, not the sampled ones).
    """
    mask = np.asarray(mask, dtype=bool)
    te = getattr(series, "echo_time", None)

    def enhancement(data: np.ndarray) -> np.ndarray:
        return _enhancement(_brain_values(data, mask, max_voxels), baseline_end, series.modality, te)

    tissue = enhancement(series.data)
    noisy = tissue if acquired_data is None or acquired_data is series.data else enhancement(acquired_data)
    noise = float(np.median(temporal_noise_sd(noisy)))
    tissue_curve = tissue.mean(axis=0)
    peak = float(tissue_curve.max())
    return {
        "tissue_peak": round(peak, 5),
        "tissue_end_fraction": round(end_fraction(tissue_curve), 4),
        "noise_sd": round(noise, 5),
        "tissue_cnr": round(peak / noise, 4) if noise > 0 else float("inf"),
        "late_peak_ml": round(
            _volume_ml(series, late_tissue(series, mask, baseline_end) if late is None else late), 2
        ),
    }


def input_flags(
    measures: dict[str, float],
    no_baseline: bool,
    motion: dict[str, Any] | None = None,
    non_steady_state: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The flags of the input checks (see the module docstring) from :func:`input_measures`, the
    bolus timing's ``no_baseline``, the motion summary and the non-steady-state record."""
    flags: list[dict[str, Any]] = []
    if measures["tissue_end_fraction"] > TRUNCATION_FRACTION:
        flags.append(flag("truncated_bolus", measures["tissue_end_fraction"]))
    if measures.get("late_peak_ml", 0.0) >= LATE_BOLUS_ML:
        flags.append(flag("late_bolus", measures["late_peak_ml"]))
    flags += motion_flags(motion)
    if measures["tissue_cnr"] < MIN_TISSUE_CNR:
        flags.append(flag("low_snr", measures["tissue_cnr"], threshold=MIN_TISSUE_CNR))
    if no_baseline:
        flags.append(flag("no_baseline"))
    return flags + non_steady_state_flags(non_steady_state)


# --- arterial-input checks (methods that select an AIF) ---------------------------------------------
def aif_flags(aif: Any, flags: list[dict[str, Any]], times: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The arterial-input flags of an AIF selection (an object with ``flags``, ``details``,
    ``scale`` and ``vof``, e.g. :class:`perfnet.conventional.aif.AifResult`) added to the input
    flags ``flags``: ``truncated_bolus`` from the venous curve when the tissue curve did not raise
    it, then the selection's own flags (weak / late / truncated / implausible AIF, no VOF, high
    partial volume) with the reason it gives."""
    out = list(flags)
    vof = getattr(aif, "vof", None)
    venous_end = end_fraction(vof) if vof is not None else 0.0
    if venous_end > TRUNCATION_FRACTION and not any(f["code"] == "truncated_bolus" for f in out):
        out.insert(0, flag("truncated_bolus", venous_end, curve="venous"))
    for code in aif.flags:
        value = aif.scale if code == "aif_partial_volume_high" else None
        detail = aif.details.get(_AIF_REASONS.get(code, ""))
        out.append(flag(code, value, detail))
    return out


def lesion_flags(lesions: dict[str, Any]) -> list[dict[str, Any]]:
    """The lesion checks of a lesions.json content (:func:`perfnet.lesions.segment_map_set`):
    ``bilateral_hypoperfusion`` when the side without the lesion holds at least
    :data:`BILATERAL_MIN_ML` of hypoperfused tissue and at least :data:`BILATERAL_FRACTION` of the
    affected side's."""
    sides = lesions.get("hypoperfused_by_side_ml") or {}
    affected, other = float(sides.get("affected", 0.0)), float(sides.get("contralateral", 0.0))
    if other >= BILATERAL_MIN_ML and other >= BILATERAL_FRACTION * affected:
        return [flag("bilateral_hypoperfusion", other, fraction=other / affected, affected=affected)]
    return []


def summary(flags: list[dict[str, Any]], measures: dict[str, Any] | None = None) -> dict[str, Any]:
    """provenance.json's ``qc``: verdict, flag codes, the measures judged and the thresholds."""
    return {
        "verdict": verdict(flags),
        "flags": [f["code"] for f in flags],
        "measures": measures or {},
        "thresholds": {
            "truncation_fraction": TRUNCATION_FRACTION,
            "late_bolus_ml": LATE_BOLUS_ML,
            "large_motion_mm": LARGE_MOTION_MM,
            "min_tissue_cnr": MIN_TISSUE_CNR,
            "bilateral_min_ml": BILATERAL_MIN_ML,
            "bilateral_fraction": BILATERAL_FRACTION,
        },
    }
