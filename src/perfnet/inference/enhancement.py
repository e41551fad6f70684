"""The CNN's missed-core check: tissue that barely enhances, read by the network as normal.

A network regresses each voxel's maps from its curve and its neighbours'. In an ischaemic core the
blood volume is a fraction of healthy tissue's and the curve's peak sinks towards the noise; the
bundled MR network reads such curves as healthy tissue where it has seen few like them (style-B
study 71106 of ``benchmarks/generalisation.py``: a 118 mL core with its peak at 17 % of the
brain's median, read as Tmax ≈ 1 s and a CBF above its penumbra's; oSVD calls it). The
deconvolution methods do not need this check: a flat curve gives them a flat residue, and so a low
CBF. The check is model-free: the peak enhancement of every brain voxel outside the CSF
(concentration over the bolus timing's baseline, a 3-frame running mean so that one noisy frame
cannot lift it) relative to the median of that tissue; a region below :data:`LOW_PEAK` of it that
the network calls Tmax < 6 s, larger than :data:`MIN_ML` after an in-plane opening (single noisy
voxels are not a region), raises ``cnn_unenhanced_normal`` (verdict review): look at a
deconvolution method's maps or the diffusion core before trusting the CNN's there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from perfnet.io.types import PerfusionSeries
from perfnet.preprocess.concentration import to_concentration

#: Peak enhancement, relative to the median of the brain tissue's, below which a voxel barely
#: enhances: well below healthy white matter's (its blood volume about half of grey matter's).
LOW_PEAK = 0.2
#: The smallest region worth the flag (mL): the core size issue 12 asks the CNN to find. Measured
#: at stop 28 (the 24 MR studies of benchmarks/generalisation.py and the 7 of the bundled-MR test,
#: docs/analyze.md "Missed-core check"): 71106 14.3 mL (its 118 mL core missed), every other study < 7 mL.
MIN_ML = 10.0
#: The modalities checked: MR, where it was measured (the CT network's core under-call is its CBF
#: read too high in enhancing tissue, docs/cnn.md "The CNN's core"; not measured for this check).
MODALITIES = ("MR",)
#: The network's Tmax below which it calls the tissue normal (s; the hypoperfusion threshold).
NORMAL_TMAX_S = 6.0


def peak_enhancement(series: PerfusionSeries, baseline_end: int, tissue: np.ndarray) -> np.ndarray:
    """Each voxel's peak concentration (3-frame running mean) over the median peak of ``tissue``;
    (X, Y, Z) float32, 0 outside ``tissue``. Computed a slice at a time (bounded memory)."""
    nz = series.spatial_shape[2]
    peak = np.zeros(series.spatial_shape, dtype=np.float32)
    for z in range(nz):
        if not tissue[..., z].any():
            continue
        conc = to_concentration(series.data[:, :, z : z + 1], baseline_end, series.modality)
        smooth = ndimage.uniform_filter1d(conc, 3, axis=-1, mode="nearest")
        peak[..., z] = smooth.max(axis=-1)[..., 0]
    inside = peak[tissue]
    reference = float(np.median(inside)) if inside.size else 0.0
    if not reference > 0:
        return np.zeros(series.spatial_shape, dtype=np.float32)
    return np.where(tissue, peak / reference, 0.0).astype(np.float32)


def unenhanced_normal(
    relative_peak: np.ndarray, tmax: np.ndarray, tissue: np.ndarray, voxel_ml: float
) -> dict[str, Any]:
    """The tissue below :data:`LOW_PEAK` that the network reads as Tmax < 6 s, opened in-plane
    (3 × 3): its volume (mL, ``region_ml``) beside that of all the tissue below :data:`LOW_PEAK`
    (``low_enhancing_ml``)."""
    low = tissue & (relative_peak < LOW_PEAK)
    called = ndimage.binary_opening(low & (tmax < NORMAL_TMAX_S), structure=np.ones((3, 3, 1), bool))
    low_ml = float(low.sum() * voxel_ml)
    return {
        "low_peak": LOW_PEAK,
        "region_ml": round(float(called.sum() * voxel_ml), 2),
        "low_enhancing_ml": round(low_ml, 2),
    }


def unenhanced_flags(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``cnn_unenhanced_normal`` when the region of :func:`unenhanced_normal` reaches :data:`MIN_ML`."""
    from perfnet import qc

    if not result or result["region_ml"] < MIN_ML:
        return []
    return [qc.flag("cnn_unenhanced_normal", result["region_ml"], low=result["low_peak"])]
