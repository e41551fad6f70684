"""The ischaemic core from diffusion: an ADC map (``perfnet analyze --adc FILE``).

In MR stroke imaging the core is read from diffusion, not from perfusion: ADC < 620 × 10⁻⁶ mm²/s
(RAPID's DWI core; Purushotham et al., Stroke 2015; the core of DEFUSE 2 and DEFUSE 3), while
the perfusion series gives the hypoperfused tissue (Tmax > 6 s). DSC-MRI CBF is relative (its
scale rests on the AIF's partial volume), so an "rCBF < 30 %" core from it is a proxy; with an
ADC map perfnet takes the core from diffusion and the mismatch between the two, as stroke teams
read an MR study.

The ADC map is a 3D NIfTI or DICOM series (a folder: the series whose SeriesDescription or
ImageType says ADC, or its only series) of the same session, in the scanner's frame of reference
(its affine), at any resolution: it is resampled onto the perfusion grid by its affine (trilinear; no
registration: DWI and PWI of one session share the frame of reference, and a patient who moved
between them needs the ADC registered first). Units are read from the values, as scanners store
them in 10⁻⁶ mm²/s (e.g. 800 in white matter) and toolkits in 10⁻³ mm²/s (0.8) or mm²/s
(0.0008): the median of the map inside the perfusion brain mask must fall in one of those
ranges, else the file is refused (a FA, b0 or trace image is not an ADC map).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from perfnet.errors import PerfnetInputError

#: ADC threshold of the core (mm²/s): RAPID / DEFUSE 3.
ADC_CORE_MM2_S = 620e-6
#: Plausible brain ADC medians (mm²/s) and the unit factor each storage convention needs.
#: Brain tissue is 0.6–1.0 × 10⁻³ mm²/s, CSF ~3 × 10⁻³; a median over a brain mask with some CSF
#: and a core stays within 0.45–2 × 10⁻³ (an FA map, median ~0.3, does not pass as 10⁻³ mm²/s).
BRAIN_MEDIAN_MM2_S = (0.45e-3, 2.0e-3)
UNITS = {"1e-6 mm2/s": 1e-6, "1e-3 mm2/s": 1e-3, "mm2/s": 1.0}
#: The least fraction of the perfusion brain the ADC map must cover.
MIN_COVERAGE = 0.5


@dataclass
class AdcMap:
    """An ADC map on the perfusion grid (mm²/s; NaN where the file has no data)."""

    values: np.ndarray
    units: str
    source: str
    coverage: float

    def core(self, threshold: float = ADC_CORE_MM2_S) -> np.ndarray:
        return below(self.values, threshold)

    def to_json(self, threshold: float = ADC_CORE_MM2_S) -> dict[str, Any]:
        return {
            "units_in_file": self.units,
            "threshold_mm2_s": threshold,
            "brain_coverage": round(self.coverage, 3),
            "resampled": "trilinear, by the files' affines (no registration)",
        }


def below(adc: np.ndarray, threshold: float = ADC_CORE_MM2_S) -> np.ndarray:
    """Voxels whose ADC (mm²/s) is below ``threshold``; NaN (no data) is never core."""
    return np.nan_to_num(adc, nan=np.inf) < threshold


def resample_to(
    data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...]
) -> np.ndarray:
    """``data`` (its voxel→world ``affine``) sampled at the voxel centres of the target grid
    (trilinear; NaN outside the source's field of view)."""
    to_source = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, np.float64)
    ijk = np.indices(target_shape, dtype=np.float64).reshape(3, -1)
    coords = to_source[:3, :3] @ ijk + to_source[:3, 3:4]
    shape = np.array(data.shape, dtype=np.float64)[:, None]
    inside = np.all((coords >= -0.5) & (coords <= shape - 0.5), axis=0)
    out = np.full(ijk.shape[1], np.nan, dtype=np.float32)
    # edge-clamped within half a voxel of the border, as a voxel's value covers its whole extent
    clamped = np.clip(coords[:, inside], 0.0, shape - 1)
    out[inside] = ndimage.map_coordinates(data.astype(np.float32), clamped, order=1, mode="nearest")
    return out.reshape(target_shape)


def load_adc(
    path: str | Path | np.ndarray,
    target_affine: np.ndarray,
    brain: np.ndarray,
    source_affine: np.ndarray | None = None,
) -> AdcMap:
    """The ADC map of ``path`` (or an array on ``source_affine``, default the target's) on the
    perfusion grid in mm²/s; one-line errors naming the file for a map that is not 3D, holds
    non-finite values, misses most of the perfusion brain or whose values are no ADC."""
    if isinstance(path, np.ndarray):
        data, affine, source = np.asarray(path, dtype=np.float32), source_affine, "--adc"
        if affine is None:
            affine = target_affine
        if data.ndim != 3:
            raise PerfnetInputError(source, f"expected a 3D ADC map, got {data.ndim}D {data.shape}")
    else:
        from perfnet.io import load_map
        from perfnet.io.nifti import is_nifti

        if Path(path).is_file() and is_nifti(path):
            data, affine = load_map(path)
        else:  # a DICOM folder (its ADC series) or file
            from perfnet.io.dicom import load_dicom_volume

            data, affine = load_dicom_volume(path, "ADC")
        source = str(path)
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise PerfnetInputError(source, f"the ADC map holds {bad} non-finite values (NaN/inf)")
    brain = np.asarray(brain, dtype=bool)
    values = resample_to(data, affine, target_affine, brain.shape)
    covered = brain & np.isfinite(values)
    coverage = float(covered.sum() / max(int(brain.sum()), 1))
    if coverage < MIN_COVERAGE:
        raise PerfnetInputError(
            source,
            f"the ADC map covers {100 * coverage:.0f} % of the perfusion brain (at least"
            f" {100 * MIN_COVERAGE:.0f} % needed): another frame of reference or another patient?",
        )
    median = float(np.median(values[covered]))
    for units, factor in UNITS.items():
        lo, hi = BRAIN_MEDIAN_MM2_S
        if lo <= median * factor <= hi:
            return AdcMap(values * np.float32(factor), units, source, coverage)
    raise PerfnetInputError(
        source,
        f"median {median:.4g} in the brain is no ADC in 10⁻⁶ mm²/s, 10⁻³ mm²/s or mm²/s"
        " (brain: 600–1000 × 10⁻⁶ mm²/s); is it an ADC map?",
    )


__all__ = ["ADC_CORE_MM2_S", "AdcMap", "below", "load_adc", "resample_to"]
