"""Automatic arterial input function (AIF) and venous output function (VOF).

AIF (after Mouridsen et al. 2006, MRM 55:524): among brain voxels with a large, smooth,
complete bolus, cluster the area-normalised curves (k-means) and keep the cluster that arrives
first (lowest first moment); repeat once inside it; average the few voxels with the highest peaks.
Shape checks reject truncated, late and ragged curves.

Plausibility, before clustering (:func:`arterial_checks`): timed against the brain's tissue curve
(:class:`TissueReference`), an arterial candidate must arrive no later than the tissue, peak no
later than the tissue's peak and not before the bolus reaches the tissue, hold more contrast than
the tissue, fall back below half its peak (a bolus, not a motion step) and stay inside the imaged
volume in every frame. Arteries feed the tissue: an input that arrives or peaks after it is a vein
(a sinus on a cerebellar slice), one that peaks before the bolus reaches the brain an artefact (a
moving edge). When no candidate passes, the AIF is still computed from the best one and flagged
``aif_implausible``.

VOF: the superior sagittal sinus: voxels that peak after the AIF, no narrower than it (the venous
curve is the AIF dispersed by the transit through the brain), with the largest area.
Partial volume of the AIF is corrected by scaling it to the VOF's area (the sinus is large enough
to be free of partial volume; Knutsson 2010): AIF × ∫VOF/∫AIF when that ratio exceeds 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from perfnet.conventional.curves import FEATURE_CHUNK, CurveFeatures, TissueReference
from perfnet.errors import PerfnetInputError
from perfnet.preprocess.bolus import noise_sd as curve_noise_sd


@dataclass
class AifResult:
    """Selected input/output curves at the frame times, and how they were chosen."""

    aif: np.ndarray  # the AIF used for deconvolution (scaled when a VOF allowed it)
    aif_raw: np.ndarray  # mean of the selected arterial voxels
    aif_voxels: np.ndarray  # (n, 3) voxel indices
    vof: np.ndarray | None
    vof_voxels: np.ndarray
    scale: float  # applied partial-volume scale ∫VOF/∫AIF (1 when not applied)
    source: str  # "automatic" | "mask"
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self, times: np.ndarray) -> dict[str, Any]:
        return {
            "times": [round(float(t), 4) for t in times],
            "aif": [float(v) for v in self.aif],
            "aif_raw": [float(v) for v in self.aif_raw],
            "vof": None if self.vof is None else [float(v) for v in self.vof],
            "aif_voxels": self.aif_voxels.astype(int).tolist(),
            "vof_voxels": self.vof_voxels.astype(int).tolist(),
            "partial_volume_scale": self.scale,
            "source": self.source,
            "flags": self.flags,
            **self.details,
        }


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 30) -> np.ndarray:
    """Labels of a plain k-means (k-means++ start) on rows of x."""
    k = min(k, x.shape[0])
    centres = [x[rng.integers(x.shape[0])]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        centres.append(x[rng.choice(x.shape[0], p=d2 / total)] if total > 0 else x[rng.integers(x.shape[0])])
    c = np.array(centres)
    labels = np.zeros(x.shape[0], dtype=int)
    for _ in range(iterations):
        labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return labels


def _earliest_cluster(curves: np.ndarray, times: np.ndarray, feats: CurveFeatures, k: int) -> np.ndarray:
    """Indices (into curves) of the k-means cluster of peak-normalised curves arriving first.

    Peak, not area, normalises the shapes: areas of long noisy acquisitions are dominated by
    baseline errors integrated over the tail. Clusters of fewer than 5 curves are noise; among
    clusters whose median first moment lies within one frame of the earliest, the one with the
    highest peaks wins (partial-volume arteries arrive as early as pure ones, with less signal).
    """
    norm = curves / np.maximum(feats.peak, 1e-12)[:, None]
    labels = _kmeans(norm, k, np.random.default_rng(0))
    clusters = [np.flatnonzero(labels == j) for j in range(labels.max() + 1)]
    clusters = [c for c in clusters if c.size >= 5] or clusters
    moments = np.array([np.median(feats.first_moment[c]) for c in clusters])
    frame = float(np.median(np.diff(times)))
    early = [c for c, m in zip(clusters, moments, strict=True) if m <= moments.min() + frame]
    return max(early, key=lambda c: float(np.median(feats.peak[c])))


#: Plausibility of an arterial candidate against the tissue curve (:class:`TissueReference`), in
#: frame intervals of tolerance: arrival no later than the tissue's (on the phantom true arteries
#: arrive ≥ 0.67 frames earlier), peak no later than the tissue's peak + 0.5 frame (the sampling
#: error of a noisy sub-frame peak; MR arteries peak up to +0.5 frame late, saturated tops), peak
#: no earlier than the tissue's fitted bolus onset − 1 frame (arteries peak 2.4 s or more after they
#: arrive, the tissue follows them by 0–1.5 s).
ARRIVAL_TOLERANCE_FRAMES = 0.0
PEAK_TOLERANCE_FRAMES = 0.5
ONSET_TOLERANCE_FRAMES = 1.0
#: A voxel holding arterial blood holds far more contrast than the average tissue (CBV ≈ 4 %, its
#: curve dispersed; a voxel 3 % artery already peaks about twice as high): its peak must exceed
#: this multiple of the tissue curve's (true arteries on the phantom: ≥ 12×). Grey matter and noise
#: arriving with the tissue must not pass for an input when the slice holds no artery. (A "brain"
#: mask cropped around an artery, as OSIPI's 25×25 patient crop, makes the "tissue" mostly artery
#: and the check fails: such a crop is flagged.)
MIN_PEAK_OVER_TISSUE = 2.0
#: Shortest FWHM (s) of an arterial bolus: an injection of 4–10 s gives 4–10 s in the arteries
#: (the phantom's 4–10 s); shorter is a noise spike or an artefact.
MIN_ARTERIAL_FWHM_S = 2.0
#: Deepest dip below baseline (fraction of the peak) of an arterial curve. Concentration is never
#: negative: noise on an artery's high peak dips a few %, while a curve that falls far below its
#: baseline is a voxel whose signal steps with motion (through-plane partial volume on thick
#: slices), the bolus only riding on it.
MAX_ARTERIAL_DIP = 0.25

#: What each check says when it fails (the aif_implausible flag's message lists them).
CHECK_MESSAGES = {
    "inside": "outside the imaged volume in some frame",
    "arrives_before_tissue": "arrives after the tissue",
    "peaks_before_tissue": "peaks after the tissue",
    "peaks_after_onset": "peaks before the bolus reaches the tissue",
    "returns": "does not fall below half its peak (a step, not a bolus)",
    "not_a_spike": f"is narrower than {MIN_ARTERIAL_FWHM_S:g} s (a spike, not a bolus)",
    "above_tissue": f"peaks below {MIN_PEAK_OVER_TISSUE:g}× the tissue curve",
    "not_negative": f"falls more than {MAX_ARTERIAL_DIP:.0%} of its peak below its baseline (motion)",
}


def arterial_checks(
    feats: CurveFeatures,
    times: np.ndarray,
    reference: TissueReference | None,
    inside: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-curve results (bool, True = passed) of the plausibility checks of an arterial input:
    timed against the tissue curve (skipped without a ``reference``), returning towards baseline,
    and ``inside`` the imaged volume in every frame."""
    n = feats.peak.size
    frame = float(np.median(np.diff(times))) if times.size > 1 else 1.0
    checks: dict[str, np.ndarray] = {
        "inside": np.ones(n, dtype=bool) if inside is None else np.asarray(inside, dtype=bool),
        "returns": np.isfinite(feats.fwhm),
        "not_a_spike": feats.fwhm >= MIN_ARTERIAL_FWHM_S,
        "not_negative": feats.lowest >= -MAX_ARTERIAL_DIP * np.maximum(feats.peak, 0.0),
    }
    if reference is not None:
        checks["arrives_before_tissue"] = (
            feats.arrival <= reference.arrival_s + ARRIVAL_TOLERANCE_FRAMES * frame
        )
        checks["peaks_before_tissue"] = feats.peak_time <= reference.peak_s + PEAK_TOLERANCE_FRAMES * frame
        checks["peaks_after_onset"] = feats.peak_time >= reference.onset_s - ONSET_TOLERANCE_FRAMES * frame
        checks["above_tissue"] = feats.peak >= MIN_PEAK_OVER_TISSUE * reference.peak
    return checks


def failed_checks(checks: dict[str, np.ndarray], among: np.ndarray | None = None) -> dict[str, int]:
    """How many curves (of ``among``, bool, default all) failed each check."""
    return {
        name: int((~ok if among is None else ~ok & among).sum()) for name, ok in checks.items() if (~ok).any()
    }


def implausible_reason(failed: dict[str, int], total: int) -> str:
    """One line: how many of ``total`` candidates failed which check."""
    parts = [
        f"{count} {CHECK_MESSAGES[name]}" for name, count in sorted(failed.items(), key=lambda kv: -kv[1])
    ]
    return f"of {total} candidate(s): " + "; ".join(parts) if parts else ""


def select_arterial_voxels(
    conc: np.ndarray,
    times: np.ndarray,
    candidates: np.ndarray,
    n_voxels: int = 5,
    reference: TissueReference | None = None,
    inside: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Flat indices of the arterial voxels among ``candidates`` (flat indices into conc).

    1. complete curves (peak before the last frames, falling back below 60 % of it by the end);
    2. plausible ones (:func:`arterial_checks` against the tissue ``reference``, ``inside``: bool
       per candidate); when none is, the best implausible ones are kept and ``details`` says
       ``aif_implausible`` with the reason;
    3. with a high peak (top 2 %, ≥ 40 voxels): vessels (arterial curves are sharp, so a
       curvature-based smoothness test would reject exactly them);
    4. of those, the earliest half by first moment (arteries precede veins and tissue);
    5. k-means on the peak-normalised shapes (twice), keeping the earliest cluster;
    6. the ``n_voxels`` highest peaks of that cluster.
    """
    flat = conc.reshape(-1, conc.shape[-1])
    feats = CurveFeatures.of_voxels(flat, candidates, times)
    n_t = times.shape[0]
    complete = (feats.peak_index < n_t - 2) & (feats.peak > 0) & (feats.end_fraction < 0.6)
    if complete.sum() < n_voxels:
        complete = feats.peak > 0
    pool = np.flatnonzero(complete)
    if pool.size == 0:
        raise PerfnetInputError(
            None, "no voxel shows a contrast bolus: cannot find an arterial input function"
        )
    checks = arterial_checks(feats, times, reference, inside)
    plausible = np.logical_and.reduce(list(checks.values()))
    details: dict[str, Any] = {"aif_candidates": int(candidates.size)}
    rejected = failed_checks(checks, complete)
    details["aif_rejected"] = rejected
    if plausible[pool].any():
        pool = pool[plausible[pool]]
    else:  # keep computing from the best candidate, so that a reader can look; the flag says why
        details["aif_implausible_reason"] = "no candidate passed: " + implausible_reason(
            rejected, int(complete.sum())
        )
    keep = min(pool.size, max(40, int(0.02 * pool.size)))
    pool = pool[np.argsort(feats.peak[pool])[::-1][:keep]]
    pool = pool[feats.first_moment[pool] <= np.quantile(feats.first_moment[pool], 0.5)]
    for _ in range(2):
        if pool.size <= 2 * n_voxels:
            break
        curves = flat[candidates[pool]].astype(np.float64)
        pool = pool[_earliest_cluster(curves, times, _subset(feats, pool), k=4)]
    best = pool[np.argsort(feats.peak[pool])[::-1][:n_voxels]]
    details |= {
        "aif_peak": float(feats.peak[best].mean()),
        "aif_ttp_s": float(np.median(feats.ttp[best])),
        "aif_width_s": float(np.median(feats.width[best])),
    }
    return candidates[best], details


def _subset(feats: CurveFeatures, idx: np.ndarray) -> CurveFeatures:
    return CurveFeatures(**{name: getattr(feats, name)[idx] for name in feats.__dataclass_fields__})


#: Least correlation of a venous candidate with the delayed AIF (see :func:`select_venous_voxels`).
VOF_MIN_CORRELATION = 0.8


def bolus_correlation(
    curves: np.ndarray, aif: np.ndarray, times: np.ndarray, max_delay_s: float = 15.0
) -> np.ndarray:
    """Largest Pearson correlation of each curve (V, T) with the AIF delayed by 0…``max_delay_s``
    (steps of half the median frame interval; the AIF is held at its first value before t₀)."""
    step = 0.5 * float(np.median(np.diff(times)))
    delays = np.arange(0.0, max_delay_s + 1e-9, step)
    shifted = np.stack([np.interp(times - d, times, aif) for d in delays])  # (D, T)
    shifted = shifted - shifted.mean(axis=1, keepdims=True)
    shifted /= np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)
    centred = curves - curves.mean(axis=1, keepdims=True)
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    return (centred @ shifted.T).max(axis=1)


#: A venous candidate must peak at least this long (s) after the AIF ...
VOF_MIN_DELAY_S = 1.0
#: ... and be no narrower (FWHM) than the AIF less this many frame intervals (sampling error): the
#: venous curve is the AIF dispersed by the brain's transit times, never sharper.
VOF_WIDTH_TOLERANCE_FRAMES = 0.5


def venous_checks(
    feats: CurveFeatures, times: np.ndarray, aif_peak_s: float, aif_fwhm: float | None
) -> dict[str, np.ndarray]:
    """Per-curve results (bool) of the checks of a venous output against the AIF: peaks
    :data:`VOF_MIN_DELAY_S` after it and is no narrower than it."""
    frame = float(np.median(np.diff(times))) if times.size > 1 else 1.0
    checks = {"peaks_after_aif": (feats.peak_time > aif_peak_s + VOF_MIN_DELAY_S) & (feats.peak > 0)}
    if aif_fwhm is not None and np.isfinite(aif_fwhm):
        checks["broader_than_aif"] = feats.fwhm >= aif_fwhm - VOF_WIDTH_TOLERANCE_FRAMES * frame
    return checks


VOF_CHECK_MESSAGES = {
    "peaks_after_aif": f"does not peak ≥ {VOF_MIN_DELAY_S:g} s after the AIF",
    "broader_than_aif": "is narrower than the AIF",
}


def select_venous_voxels(
    conc: np.ndarray,
    times: np.ndarray,
    candidates: np.ndarray,
    aif_ttp: float,
    n_voxels: int = 5,
    aif: np.ndarray | None = None,
    aif_fwhm: float | None = None,
) -> np.ndarray:
    """Flat indices of sinus voxels: bolus-shaped, peak after the AIF (``aif_ttp``, s), no
    narrower than it (``aif_fwhm``, s; :func:`venous_checks`), largest area.

    Bolus-shaped: the curve correlates (r ≥ :data:`VOF_MIN_CORRELATION`) with the AIF delayed by
    0–15 s. Residual motion at the skull gives late, large-area curves too, but as steps, not as a
    bolus; without the shape check they would pass for the sinus and scale the AIF far off.
    """
    flat = conc.reshape(-1, conc.shape[-1])
    feats = CurveFeatures.of_voxels(flat, candidates, times)
    late = np.logical_and.reduce(list(venous_checks(feats, times, aif_ttp, aif_fwhm).values()))
    if aif is not None and late.any():
        idx = np.flatnonzero(late)
        corr = [
            bolus_correlation(flat[candidates[idx[i : i + FEATURE_CHUNK]]].astype(np.float64), aif, times)
            for i in range(0, idx.size, FEATURE_CHUNK)
        ]
        late[idx] = np.concatenate(corr) >= VOF_MIN_CORRELATION
    pool = np.flatnonzero(late)
    if pool.size == 0:
        return np.zeros(0, dtype=np.int64)
    keep = max(3 * n_voxels, int(0.002 * candidates.size))
    pool = pool[np.argsort(feats.area[pool])[::-1][:keep]]
    return candidates[pool[np.argsort(feats.area[pool])[::-1][:n_voxels]]]


#: A user's AIF mask whose mean curve never rises this many noise SDs (its own, from second
#: differences) above its median holds no bolus: an input error, not a flag.
MASK_MIN_BOLUS_SD = 4.0


def _mask_bolus(curve: np.ndarray, source: str) -> None:
    """Refuse a user mask whose mean curve shows no contrast bolus at all (air, bone, a typo)."""
    rise = float(np.max(curve) - np.median(curve))
    sd = curve_noise_sd(curve)
    if not rise > max(MASK_MIN_BOLUS_SD * sd, 0.0):
        raise PerfnetInputError(
            source,
            f"the mask's mean curve shows no contrast bolus (peak {rise:.3g} above its median, "
            f"noise SD {sd:.3g}): is it on an artery?",
        )


def arterial_input(
    conc: np.ndarray,
    times: np.ndarray,
    brain_mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    aif_mask: np.ndarray | None = None,
    vof_mask: np.ndarray | None = None,
    n_voxels: int = 5,
    noise_sd: float | None = None,
    valid: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> AifResult:
    """Choose the AIF and VOF from concentration (X, Y, Z, T) and scale the AIF by the VOF.

    ``valid`` (bool X, Y, Z) restricts the automatic search, e.g. to MR voxels whose signal does
    not reach the noise floor at the bolus peak (saturated voxels underestimate the AIF).
    ``exclude`` (bool X, Y, Z): voxels that left the imaged volume in some frame (motion
    correction filled them from outside the slab): never an AIF or VOF.

    Plausibility (:func:`arterial_checks`, :func:`venous_checks`): arterial candidates are timed
    against the brain's tissue curve and must fall back after their peak; when none passes, or a
    user's ``aif_mask`` fails, the AIF is still computed (from the best candidate) and flagged
    ``aif_implausible`` with the reason (``details["aif_implausible_reason"]``). A VOF that does
    not peak after the AIF or is narrower than it is rejected (``no_vof``; a user mask's reason in
    ``details["vof_rejected"]``). A user ``aif_mask`` with no bolus at all is an input error.
    """
    shape = conc.shape[:3]
    flags: list[str] = []
    exclude = None if exclude is None else np.asarray(exclude, dtype=bool)
    if exclude is not None and exclude.shape != shape:
        raise ValueError(f"exclude mask {exclude.shape} does not match the grid {shape}")
    search = brain_mask if valid is None else brain_mask & valid
    flat_brain = np.flatnonzero(search)
    reference = TissueReference.of(conc, times, brain_mask)
    flat = conc.reshape(-1, conc.shape[-1])
    inside_flat = None if exclude is None else ~exclude.reshape(-1)
    if aif_mask is not None:
        region = np.flatnonzero(aif_mask)
        if region.size == 0:
            raise PerfnetInputError("--aif-mask", "the AIF mask is empty")
        if region.size <= 50:
            aif_flat, details = region, {"aif_candidates": int(region.size)}
        else:
            inside = None if inside_flat is None else inside_flat[region]
            aif_flat, details = select_arterial_voxels(conc, times, region, n_voxels, reference, inside)
            details.pop("aif_implausible_reason", None)  # the mask's mean curve is judged below
        source = "mask"
        _mask_bolus(flat[aif_flat].astype(np.float64).mean(axis=0), "--aif-mask")
    else:
        if flat_brain.size < 10:
            raise PerfnetInputError(None, "brain mask too small to search for an arterial input function")
        inside = None if inside_flat is None else inside_flat[flat_brain]
        aif_flat, details = select_arterial_voxels(conc, times, flat_brain, n_voxels, reference, inside)
        source = "automatic"
    aif_raw = flat[aif_flat].astype(np.float64).mean(axis=0)
    aif_feats = CurveFeatures.of(aif_raw[None], times)
    inside_aif = None if inside_flat is None else np.array([bool(inside_flat[aif_flat].all())])
    aif_checks = {k: bool(v[0]) for k, v in arterial_checks(aif_feats, times, reference, inside_aif).items()}
    details["aif_checks"] = aif_checks
    details["tissue_reference"] = None if reference is None else reference.to_dict()
    details["aif_fwhm_s"] = float(aif_feats.fwhm[0]) if np.isfinite(aif_feats.fwhm[0]) else None
    failed = [CHECK_MESSAGES[k] for k, ok in aif_checks.items() if not ok]
    if failed and "aif_implausible_reason" not in details:  # the averaged curve judged as a whole
        who = "the --aif-mask curve" if source == "mask" else "the averaged AIF"
        details["aif_implausible_reason"] = f"{who} " + ", ".join(failed)
    if "aif_implausible_reason" in details:
        flags.append("aif_implausible")
    aif_peak_s, aif_fwhm = float(aif_feats.peak_time[0]), float(aif_feats.fwhm[0])
    # venous output: search a brain mask grown by ~6 mm (the sinus lies at its edge)
    if vof_mask is not None:
        vof_flat = np.flatnonzero(vof_mask)
        if vof_flat.size == 0:
            raise PerfnetInputError("--vof-mask", "the VOF mask is empty")
        vof_feats = CurveFeatures.of(flat[vof_flat].astype(np.float64).mean(axis=0)[None], times)
        vof_checks = venous_checks(vof_feats, times, aif_peak_s, aif_fwhm)
        failed_vof = [VOF_CHECK_MESSAGES[k] for k, ok in vof_checks.items() if not ok[0]]
        if failed_vof:
            details["vof_rejected"] = "the --vof-mask curve " + ", ".join(failed_vof)
            vof_flat = np.zeros(0, dtype=np.int64)
    else:
        iterations = max(1, round(6.0 / min(voxel_size[:2])))
        grown = ndimage.binary_dilation(brain_mask, structure=_disk_2d(), iterations=iterations)
        if valid is not None:
            grown &= valid
        if exclude is not None:
            grown &= ~exclude
        vof_flat = select_venous_voxels(
            conc, times, np.flatnonzero(grown), aif_peak_s, n_voxels, aif=aif_raw, aif_fwhm=aif_fwhm
        )
    vof = flat[vof_flat].astype(np.float64).mean(axis=0) if vof_flat.size else None
    scale = 1.0
    if vof is not None:
        ratio = np.trapezoid(np.clip(vof, 0, None), times) / max(
            np.trapezoid(np.clip(aif_raw, 0, None), times), 1e-12
        )
        details["vof_aif_area_ratio"] = float(ratio)
        if ratio > 1.0:
            scale = float(min(ratio, 10.0))
            if ratio > 4.0:
                flags.append("aif_partial_volume_high")
    else:
        flags.append("no_vof")
    duration = float(times[-1] - times[0])
    if aif_feats.ttp[0] > times[0] + 0.6 * duration:
        flags.append("late_aif")
    if aif_feats.peak_index[0] >= times.shape[0] - 2 or aif_feats.end_fraction[0] > 0.6:
        flags.append("truncated_aif")
    if noise_sd is not None and aif_feats.peak[0] < 5.0 * noise_sd:
        flags.append("weak_aif")
    return AifResult(
        aif=aif_raw * scale,
        aif_raw=aif_raw,
        aif_voxels=np.column_stack(np.unravel_index(aif_flat, shape)),
        vof=vof,
        vof_voxels=np.column_stack(np.unravel_index(vof_flat, shape))
        if vof_flat.size
        else np.zeros((0, 3), int),
        scale=scale,
        source=source,
        flags=flags,
        details=details,
    )


def _disk_2d() -> np.ndarray:
    """In-plane 3×3 cross (slices are often thick, so the mask grows within slices only)."""
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1, 1, :] = False
    s[:, 1, 1] = s[1, :, 1] = True
    return s
