"""Automatic arterial input function (AIF) and venous output function (VOF).

AIF (after Mouridsen et al. 2006, MRM 55:524): among brain voxels with a large, smooth,
complete bolus, cluster the area-normalised curves (k-means) and keep the cluster that arrives
first (lowest first moment); repeat once inside it; average the few voxels with the highest peaks.
Shape checks reject truncated, late and ragged curves.

VOF: the superior sagittal sinus: voxels that peak after the AIF with the largest area.
Partial volume of the AIF is corrected by scaling it to the VOF's area (the sinus is large enough
to be free of partial volume; Knutsson 2010): AIF × ∫VOF/∫AIF when that ratio exceeds 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from perfnet.errors import PerfnetInputError

#: Curves per chunk when features are computed over a whole brain.
FEATURE_CHUNK = 1 << 16


@dataclass
class CurveFeatures:
    """Shape descriptors of concentration curves (V, T) on frame times."""

    peak: np.ndarray
    peak_index: np.ndarray
    ttp: np.ndarray
    area: np.ndarray
    first_moment: np.ndarray  # s, of the part above a quarter of the peak
    width: np.ndarray  # s above half maximum
    roughness: np.ndarray  # Σ|second difference| / peak
    end_fraction: np.ndarray  # last frame / peak

    @classmethod
    def of(cls, curves: np.ndarray, times: np.ndarray) -> CurveFeatures:
        curves = np.asarray(curves, dtype=np.float64)
        peak_index = np.argmax(curves, axis=1)
        peak = curves[np.arange(curves.shape[0]), peak_index]
        positive = np.clip(curves, 0.0, None)
        area = np.trapezoid(positive, times, axis=1)
        # first moment of the bolus core (above a quarter of the peak): the noisy baseline and tail
        # would otherwise pull every curve's moment towards the middle of the acquisition
        core = np.clip(curves - 0.25 * peak[:, None], 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            first_moment = np.trapezoid(core * times, times, axis=1) / np.trapezoid(core, times, axis=1)
            safe_peak = np.where(peak > 0, peak, np.inf)
            roughness = np.abs(np.diff(curves, n=2, axis=1)).sum(axis=1) / safe_peak
            end_fraction = curves[:, -1] / safe_peak
        step = np.gradient(times)
        width = ((curves > 0.5 * peak[:, None]) * step).sum(axis=1)
        return cls(
            peak=peak,
            peak_index=peak_index,
            ttp=times[peak_index],
            area=area,
            first_moment=np.nan_to_num(first_moment, nan=np.inf),
            width=width,
            roughness=roughness,
            end_fraction=end_fraction,
        )

    @classmethod
    def of_voxels(
        cls, flat: np.ndarray, indices: np.ndarray, times: np.ndarray, chunk: int = FEATURE_CHUNK
    ) -> CurveFeatures:
        """Features of the curves ``flat[indices]`` (flat: (V, T)), computed in chunks so that a
        whole-brain search never holds a float64 copy of every curve."""
        parts = [cls.of(flat[indices[i : i + chunk]], times) for i in range(0, indices.size, chunk)]
        if not parts:
            return cls.of(np.zeros((0, flat.shape[1])), times)
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in cls.__dataclass_fields__})


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


def select_arterial_voxels(
    conc: np.ndarray, times: np.ndarray, candidates: np.ndarray, n_voxels: int = 5
) -> tuple[np.ndarray, dict[str, Any]]:
    """Flat indices of the arterial voxels among ``candidates`` (flat indices into conc).

    1. complete curves with a high peak (top 2 %, ≥ 40 voxels): vessels (arterial curves are
       sharp, so a curvature-based smoothness test would reject exactly them);
    2. of those, the earliest half by first moment (arteries precede veins and tissue);
    3. k-means on the peak-normalised shapes (twice), keeping the earliest cluster;
    4. the ``n_voxels`` highest peaks of that cluster.
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
    keep = min(pool.size, max(40, int(0.02 * pool.size)))
    pool = pool[np.argsort(feats.peak[pool])[::-1][:keep]]
    pool = pool[feats.first_moment[pool] <= np.quantile(feats.first_moment[pool], 0.5)]
    for _ in range(2):
        if pool.size <= 2 * n_voxels:
            break
        curves = flat[candidates[pool]].astype(np.float64)
        pool = pool[_earliest_cluster(curves, times, _subset(feats, pool), k=4)]
    best = pool[np.argsort(feats.peak[pool])[::-1][:n_voxels]]
    details = {
        "aif_candidates": int(candidates.size),
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


def select_venous_voxels(
    conc: np.ndarray,
    times: np.ndarray,
    candidates: np.ndarray,
    aif_ttp: float,
    n_voxels: int = 5,
    aif: np.ndarray | None = None,
) -> np.ndarray:
    """Flat indices of sinus voxels: bolus-shaped, peak after the AIF, largest area.

    Bolus-shaped: the curve correlates (r ≥ :data:`VOF_MIN_CORRELATION`) with the AIF delayed by
    0–15 s. Residual motion at the skull gives late, large-area curves too, but as steps, not as a
    bolus; without the shape check they would pass for the sinus and scale the AIF far off.
    """
    flat = conc.reshape(-1, conc.shape[-1])
    feats = CurveFeatures.of_voxels(flat, candidates, times)
    late = (feats.ttp > aif_ttp + 1.0) & (feats.peak > 0)
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
) -> AifResult:
    """Choose the AIF and VOF from concentration (X, Y, Z, T) and scale the AIF by the VOF.

    ``valid`` (bool X, Y, Z) restricts the automatic search, e.g. to MR voxels whose signal does
    not reach the noise floor at the bolus peak (saturated voxels underestimate the AIF).
    """
    shape = conc.shape[:3]
    flags: list[str] = []
    search = brain_mask if valid is None else brain_mask & valid
    flat_brain = np.flatnonzero(search)
    if aif_mask is not None:
        region = np.flatnonzero(aif_mask)
        if region.size == 0:
            raise PerfnetInputError("--aif-mask", "the AIF mask is empty")
        if region.size <= 50:
            aif_flat, details = region, {"aif_candidates": int(region.size)}
        else:
            aif_flat, details = select_arterial_voxels(conc, times, region, n_voxels)
        source = "mask"
    else:
        if flat_brain.size < 10:
            raise PerfnetInputError(None, "brain mask too small to search for an arterial input function")
        aif_flat, details = select_arterial_voxels(conc, times, flat_brain, n_voxels)
        source = "automatic"
    flat = conc.reshape(-1, conc.shape[-1])
    aif_raw = flat[aif_flat].astype(np.float64).mean(axis=0)
    aif_feats = CurveFeatures.of(aif_raw[None], times)
    # venous output: search a brain mask grown by ~6 mm (the sinus lies at its edge)
    if vof_mask is not None:
        vof_flat = np.flatnonzero(vof_mask)
        if vof_flat.size == 0:
            raise PerfnetInputError("--vof-mask", "the VOF mask is empty")
    else:
        iterations = max(1, round(6.0 / min(voxel_size[:2])))
        grown = ndimage.binary_dilation(brain_mask, structure=_disk_2d(), iterations=iterations)
        if valid is not None:
            grown &= valid
        vof_flat = select_venous_voxels(
            conc, times, np.flatnonzero(grown), float(aif_feats.ttp[0]), n_voxels, aif=aif_raw
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
