"""Core, hypoperfused tissue and penumbra from perfusion maps; volumes, mismatch, DEFUSE-3 profile.

Definitions (the RAPID convention, as in DEFUSE-3 and the phantom's truth masks):

- hypoperfused = Tmax > 6 s (preset ``severe``: > 10 s) within the brain;
- core = hypoperfused voxels whose CBF is < 30 % of the healthy reference CBF: by default the
  median CBF of the contralateral hemisphere's non-hypoperfused brain (the midline found from the
  brain mask: the in-plane principal axis through its centroid); ``brain``: the median over all
  non-hypoperfused brain; ``tmax4``: the median over brain tissue with Tmax < 4 s;
- penumbra = hypoperfused − core;
- with an ADC map (``perfnet analyze --adc FILE``, :mod:`perfnet.lesions.adc`) the core is the
  diffusion core instead, ADC < 620 × 10⁻⁶ mm²/s (RAPID / DEFUSE 3; not limited to the
  hypoperfused tissue), as stroke teams read an MR study; penumbra = hypoperfused − core, and the
  mismatch volume = hypoperfused − core volumes;
- a method whose CBF reads low-flow tissue too high carries a calibration factor
  (``LesionSettings.cbf_calibration``, recorded in lesions.json): every core threshold is multiplied
  by it, so "rCBF < 30 %" means "< 30 % of the reference as this method measures a true 30 %". The
  conventional methods use 1; a CNN whose regression pulls the core's CBF towards the population
  mean carries the factor fitted with its weights on held-out phantom studies
  (``tools/calibrate_core.py``, the weights' ``core_calibration`` record, applied by
  :func:`segment_map_set` from the maps' provenance); a calibration may also carry an offset
  (``LesionSettings.cbf_offset``, in the method's CBF units: the flow its regression reads where
  the true flow is near zero), and then the rule is read on the flow above it: core where
  CBF − offset < fraction × (reference − offset) (:meth:`LesionSettings.core_threshold`), the
  offset's share held to the references its calibration studies had;
- a calibration may instead weigh in the relative CBV (``LesionSettings.core_cbv_weight`` w, CBV
  read against the same reference region): core where the weighted geometric mean
  (rCBF · rCBV^w)^(1/(1+w)) < the fraction (:meth:`LesionSettings.core_mask`). Blood volume is the
  area under the tissue curve over the arterial one, so it does not depend on when the bolus
  arrives, and it falls in the core while the penumbra keeps it; a network that reads a core's
  flow partly by its delay reads its CBV without that bias (docs/cnn.md "A CBV-weighted core rule").
  w = 0 is the rCBF rule; an offset and a CBV weight are not combined;
- a CNN whose weights carry a core head (``core_probability`` among its maps;
  ``tools/fit_core_head.py``): core = hypoperfused voxels with a probability ≥ the head's threshold
  instead of the rCBF rule (lesions.json ``core_source`` ``cnn core head``; the bundled weights
  carry none: docs/cnn.md "The core head");
- clean-up per slice (slices are often thick): closing, opening (radii in mm), then islands under
  ``min_island_ml`` are removed (3D connectivity).

DEFUSE-3 target mismatch (Albers et al., NEJM 2018): core < 70 mL, mismatch ratio
(hypoperfused / core) ≥ 1.8 and mismatch volume ≥ 15 mL.

The profile stroke teams read beside it (:data:`PROFILE_DEFINITIONS`, all with the same clean-up):
hypoperfused volumes at Tmax > 4, 6, 8, 10 s; the hypoperfusion intensity ratio HIR = V(Tmax > 10 s)
/ V(Tmax > 6 s) (Olivot et al., Stroke 2014: HIR ≥ 0.4 marks poor collaterals); the relative CBV
of the hypoperfused region (its mean CBV over the reference region's median; Arenillas et al.,
Stroke 2018, rCBV index); core volumes at rCBF < 20, 30, 34, 38 % (30 %: RAPID/DEFUSE-3; 20 %
and 34–38 %: the range of CTP core thresholds compared against DWI, Bivard et al., Stroke 2011;
Cereda et al., JCBFM 2016).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from perfnet.constants import CORE_PROBABILITY
from perfnet.errors import PerfnetInputError
from perfnet.io.types import PerfusionMaps, PerfusionSeries
from perfnet.lesions.adc import ADC_CORE_MM2_S, AdcMap, below, load_adc

REFERENCES = ("contralateral", "brain", "tmax4")
DEFUSE3 = {"core_max_ml": 70.0, "ratio_min": 1.8, "mismatch_min_ml": 15.0}
TMAX_PROFILE_S = (4.0, 6.0, 8.0, 10.0)
CORE_PROFILE = (0.20, 0.30, 0.34, 0.38)
PROFILE_DEFINITIONS = {
    "tmax_volumes_ml": "volume with Tmax above each threshold (s), after clean-up",
    "hypoperfusion_intensity_ratio": "V(Tmax > 10 s) / V(Tmax > 6 s) "
    "(Olivot et al., Stroke 2014; ≥ 0.4: poor collaterals)",
    "rcbv_hypoperfused": "mean CBV of the hypoperfused region / median CBV of the reference region "
    "(Arenillas et al., Stroke 2018)",
    "core_volumes_ml": "hypoperfused volume with CBF below each fraction of the reference CBF (30 %: RAPID;"
    " from perfusion also when the core is taken from an ADC map)",
}


@dataclass(frozen=True)
class LesionSettings:
    """Thresholds and clean-up of the lesion segmentation (all recorded in lesions.json)."""

    tmax_threshold_s: float = 6.0
    core_relative_cbf: float = 0.30
    reference: str = "contralateral"
    closing_mm: float = 2.0
    opening_mm: float = 2.0
    min_island_ml: float = 0.2
    #: core thresholds × this factor (module docstring); 1: the rule as written
    cbf_calibration: float = 1.0
    #: the CBF (the method's units) its regression reads for no flow: the rule is read on the flow
    #: above it (:meth:`core_threshold`); 0: none
    cbf_offset: float = 0.0
    #: the reference CBFs of the offset's calibration studies (lowest, highest): the offset's share
    #: of the threshold is taken at the study's reference held inside them; None: not held
    cbf_offset_references: tuple[float, float] | None = None
    #: the weight w of relative CBV in the core index (module docstring): core where
    #: (rCBF · rCBV^w)^(1/(1+w)) < the fraction; 0: rCBF alone
    core_cbv_weight: float = 0.0
    #: the core from diffusion, ADC below this (mm²/s), instead of rCBF; None: no ADC map given
    adc_core_mm2_s: float | None = None

    @property
    def core_fraction(self) -> float:
        """The relative-CBF threshold of the core as applied (the rule × the calibration)."""
        return self.core_relative_cbf * self.cbf_calibration

    def core_threshold(self, reference: float, fraction: float | None = None) -> float:
        """The CBF below which hypoperfused tissue is core, for a study whose healthy reference is
        ``reference``: ``fraction`` (default :attr:`core_fraction`) of the reference, and with an
        offset a, a + fraction × (reference − a), i.e. the rule on the flow above a. The offset's
        share a·(1 − fraction) is scaled as reference / r, r the reference held inside
        :attr:`cbf_offset_references`, so that a study whose reference lies beyond those of the
        calibration studies gets the relative threshold its nearest calibrated reference had."""
        fraction = self.core_fraction if fraction is None else fraction
        if not self.cbf_offset or reference <= 0:
            return fraction * reference
        held = reference
        if self.cbf_offset_references is not None:
            low, high = self.cbf_offset_references
            held = min(max(reference, low), high)
        return fraction * reference + self.cbf_offset * (1.0 - fraction) * reference / held

    def core_mask(
        self,
        cbf: np.ndarray,
        relative_cbv: np.ndarray | None,
        reference: float,
        fraction: float | None = None,
    ) -> np.ndarray:
        """Where the core rule holds (before the hypoperfused and clean-up steps): CBF below
        :meth:`core_threshold`, or with a CBV weight w, rCBF · rCBV^w < fraction^(1+w) (rCBV
        clipped at 0; ``relative_cbv`` the CBV over its reference, needed then)."""
        fraction = self.core_fraction if fraction is None else fraction
        threshold = self.core_threshold(reference, fraction)
        w = self.core_cbv_weight
        if not w:
            return cbf < threshold
        if relative_cbv is None:
            raise PerfnetInputError(None, "the core rule weighs in rCBV: a CBV map is needed")
        return cbf * np.clip(relative_cbv, 0.0, None) ** w < threshold * fraction**w

    def check(self) -> LesionSettings:
        if self.reference not in REFERENCES:
            raise PerfnetInputError(
                "--reference", f"must be one of {', '.join(REFERENCES)}, got {self.reference!r}"
            )
        if not self.tmax_threshold_s > 0:
            raise PerfnetInputError("--tmax-threshold", "must be positive")
        if not 0 < self.core_relative_cbf < 1:
            raise PerfnetInputError("--core-threshold", "relative CBF must be in (0, 1)")
        if not 0.5 <= self.cbf_calibration <= 3.0:
            raise PerfnetInputError(None, f"core CBF calibration {self.cbf_calibration} outside [0.5, 3]")
        if not 0.0 <= self.cbf_offset < 100.0:
            raise PerfnetInputError(None, f"core CBF offset {self.cbf_offset} outside [0, 100)")
        if not 0.0 <= self.core_cbv_weight <= 8.0:
            raise PerfnetInputError(None, f"core CBV weight {self.core_cbv_weight} outside [0, 8]")
        if self.core_cbv_weight and self.cbf_offset:
            raise PerfnetInputError(None, "a core rule with a CBF offset and a CBV weight: one or the other")
        held = self.cbf_offset_references
        if held is not None and not 0 < held[0] <= held[1]:
            raise PerfnetInputError(None, f"core CBF offset references {held} not a range")
        if self.adc_core_mm2_s is not None and not 200e-6 <= self.adc_core_mm2_s <= 1000e-6:
            raise PerfnetInputError(None, f"ADC core threshold {self.adc_core_mm2_s} mm²/s outside 2–10e-4")
        return self


PRESETS = {
    "rapid": LesionSettings(),
    "severe": LesionSettings(tmax_threshold_s=10.0),
}


@dataclass
class LesionResult:
    core: np.ndarray
    hypoperfused: np.ndarray
    penumbra: np.ndarray
    volumes_ml: dict[str, float]
    mismatch_ratio: float | None  # None when there is no core (infinite ratio)
    defuse3: dict[str, bool]
    reference_cbf: float
    affected_side: str | None
    settings: LesionSettings
    profile: dict[str, Any] | None = None
    #: the cleaned hypoperfused volume on the affected side and on the other (None: none found);
    #: a stroke is one-sided, so much on both sides is a QC flag (:func:`perfnet.qc.lesion_flags`)
    hypoperfused_by_side_ml: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        profile = {} if self.profile is None else self.profile | {"definitions": PROFILE_DEFINITIONS}
        return profile | {
            "volumes_ml": {k: round(v, 2) for k, v in self.volumes_ml.items()},
            "mismatch_ratio": None if self.mismatch_ratio is None else round(self.mismatch_ratio, 3),
            "defuse3": self.defuse3,
            "defuse3_criteria": DEFUSE3,
            "reference_cbf": round(self.reference_cbf, 3),
            # the rCBF core threshold as applied (the rule × any calibration, its offset included)
            "core_threshold_percent": round(
                100 * self.settings.core_threshold(self.reference_cbf) / self.reference_cbf, 2
            )
            if self.reference_cbf > 0
            else round(100 * self.settings.core_fraction, 2),
            "affected_side": self.affected_side,
            "hypoperfused_by_side_ml": self.hypoperfused_by_side_ml,
            "settings": asdict(self.settings),
        }


def voxel_volume_ml(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def hemisphere_sides(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """+1 / −1 for the two sides of the mid-sagittal plane, 0 outside the brain.

    The plane contains the slice normal and the brain's in-plane principal (anterior–posterior)
    axis through its centroid, so a yawed head is split correctly. +1 is the side towards +x (RAS:
    the patient's right; see :func:`side_name`)."""
    idx = np.argwhere(brain)
    if idx.shape[0] < 10:
        return np.zeros(brain.shape, dtype=np.int8)
    world = idx @ np.asarray(affine, dtype=np.float64)[:3, :3].T
    xy = world[:, :2] - world[:, :2].mean(axis=0)
    _, vectors = np.linalg.eigh(xy.T @ xy)
    long_axis = vectors[:, -1]  # the largest spread: anterior–posterior
    normal = np.array([long_axis[1], -long_axis[0]])
    if normal[0] < 0:
        normal = -normal
    side = np.where(xy @ normal >= 0, 1, -1).astype(np.int8)
    out = np.zeros(brain.shape, dtype=np.int8)
    out[tuple(idx.T)] = side
    return out


def side_name(side: int) -> str:
    return "right" if side > 0 else "left"  # RAS: +x points to the patient's right


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    disk2 = (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2
    return disk2[:, :, None]  # in-plane only


def clean_mask(mask: np.ndarray, voxel_size: tuple[float, ...], settings: LesionSettings) -> np.ndarray:
    """Closing, opening (in-plane disks of the settings' radii) and removal of small islands."""
    pixel = float(min(voxel_size[:2]))
    out = mask.astype(bool)
    r_close = round(settings.closing_mm / pixel)
    if r_close >= 1:
        out = ndimage.binary_closing(out, structure=_disk(r_close), border_value=0) | out
    r_open = round(settings.opening_mm / pixel)
    if r_open >= 1:
        out = ndimage.binary_opening(out, structure=_disk(r_open))
    voxel_ml = float(np.prod(voxel_size[:3])) / 1000.0
    min_voxels = int(np.ceil(settings.min_island_ml / voxel_ml)) if settings.min_island_ml > 0 else 0
    if min_voxels > 1 and out.any():
        labels, n = ndimage.label(out, structure=ndimage.generate_binary_structure(3, 1))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_voxels
        keep[0] = False
        out = keep[labels]
    return out


def segment_lesions(
    cbf: np.ndarray,
    tmax: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    settings: LesionSettings | None = None,
    exclude: np.ndarray | None = None,
    cbv: np.ndarray | None = None,
    adc: np.ndarray | None = None,
    core_probability: np.ndarray | None = None,
    core_threshold: float = 0.5,
    profile: bool = True,
) -> LesionResult:
    """Core / hypoperfused / penumbra masks and their volumes from CBF and Tmax maps, and the
    profile of the module docstring (rCBV only with ``cbv``).

    ``exclude`` (e.g. CSF) is left out of the lesions and of the reference; the midline is still
    taken from the whole brain mask. ``adc`` (mm²/s on the maps' grid, NaN where unknown; needs
    ``settings.adc_core_mm2_s``): the core is the diffusion core (module docstring).
    ``core_probability`` (a CNN's core head, 0–1 on the maps' grid; without an ADC map): the core
    is the hypoperfused tissue with a probability ≥ ``core_threshold`` instead of the rCBF rule
    (same clean-up; the profile's rCBF core volumes stay the rule's). ``profile`` False: the masks
    and volumes only (the result's ``profile`` None; a threshold search scores many rules)."""
    settings = (settings or PRESETS["rapid"]).check()
    brain = np.asarray(brain, dtype=bool)
    whole_brain = brain
    if exclude is not None:
        brain = brain & ~np.asarray(exclude, dtype=bool)
    if cbf.shape != brain.shape or tmax.shape != brain.shape:
        raise PerfnetInputError(None, f"maps {cbf.shape}/{tmax.shape} and brain mask {brain.shape} differ")
    affine = np.asarray(affine, dtype=np.float64)
    voxel_size = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    cbf = np.nan_to_num(np.asarray(cbf, dtype=np.float64), nan=0.0)
    tmax = np.nan_to_num(np.asarray(tmax, dtype=np.float64), nan=0.0)

    raw_hypo = brain & (tmax > settings.tmax_threshold_s)
    hypo = clean_mask(raw_hypo, voxel_size, settings) & brain
    sides = hemisphere_sides(whole_brain, affine)
    affected = None
    if hypo.any():
        counts = {s: int((hypo & (sides == s)).sum()) for s in (1, -1)}
        affected = max(counts, key=counts.get)
    healthy = brain & ~raw_hypo
    if settings.reference == "contralateral" and affected is not None:
        pool = healthy & (sides == -affected)
    elif settings.reference == "tmax4":
        pool = brain & (tmax < 4.0)
    else:
        pool = healthy
    if pool.sum() < 10:
        pool = healthy if healthy.sum() >= 10 else brain
    reference = float(np.median(cbf[pool])) if pool.any() else 0.0
    relative_cbv = None
    if cbv is not None:
        cbv = np.nan_to_num(np.asarray(cbv, dtype=np.float64), nan=0.0)
        if cbv.shape != brain.shape:
            raise PerfnetInputError(None, f"CBV map {cbv.shape} and brain mask {brain.shape} differ")
        cbv_reference = float(np.median(cbv[pool])) if pool.any() else 0.0
        if cbv_reference > 0:
            relative_cbv = cbv / cbv_reference
    if settings.core_cbv_weight and relative_cbv is None:  # (the profile's core volumes read it too)
        raise PerfnetInputError(None, "the core rule weighs in rCBV: no CBV map with a positive reference")
    if settings.adc_core_mm2_s is not None:
        if adc is None or adc.shape != brain.shape:
            raise PerfnetInputError("--adc", "an ADC map on the maps' grid is needed for an ADC core")
        raw_core = brain & below(adc, settings.adc_core_mm2_s)
        core = clean_mask(raw_core, voxel_size, settings) & brain
    else:
        if core_probability is not None:
            if core_probability.shape != brain.shape:
                raise PerfnetInputError(
                    None, f"core probability {core_probability.shape} and brain mask {brain.shape} differ"
                )
            raw_core = raw_hypo & (np.nan_to_num(core_probability, nan=0.0) >= core_threshold)
        else:
            raw_core = raw_hypo & settings.core_mask(cbf, relative_cbv, reference)
        core = clean_mask(raw_core, voxel_size, settings) & hypo
    penumbra = hypo & ~core

    voxel_ml = voxel_volume_ml(affine)
    by_side = None
    if affected is not None:
        by_side = {
            "affected": round(float((hypo & (sides == affected)).sum() * voxel_ml), 2),
            "contralateral": round(float((hypo & (sides == -affected)).sum() * voxel_ml), 2),
        }
    core_ml = float(core.sum() * voxel_ml)
    hypo_ml = float(hypo.sum() * voxel_ml)
    mismatch_ml = hypo_ml - core_ml
    ratio = hypo_ml / core_ml if core_ml > 0 else None
    ratio_ok = (ratio is None and hypo_ml > 0) or (ratio is not None and ratio >= DEFUSE3["ratio_min"])
    flags = {
        "core_below_70ml": core_ml < DEFUSE3["core_max_ml"],
        "mismatch_ratio_at_least_1_8": bool(ratio_ok),
        "mismatch_at_least_15ml": mismatch_ml >= DEFUSE3["mismatch_min_ml"],
    }
    flags["target_mismatch"] = all(flags.values())

    def volume(mask: np.ndarray) -> float:
        return round(float((clean_mask(mask, voxel_size, settings) & brain).sum() * voxel_ml), 2)

    result = LesionResult(
        core=core,
        hypoperfused=hypo,
        penumbra=penumbra,
        volumes_ml={
            "core": core_ml,
            "hypoperfused": hypo_ml,
            # the mismatch volume while the core lies within the hypoperfused tissue (the rCBF core)
            "penumbra": mismatch_ml if settings.adc_core_mm2_s is None else float(penumbra.sum() * voxel_ml),
            "mismatch": mismatch_ml,
        },
        mismatch_ratio=ratio,
        defuse3=flags,
        reference_cbf=reference,
        affected_side=side_name(affected) if affected is not None else None,
        settings=settings,
        hypoperfused_by_side_ml=by_side,
    )
    if not profile:
        return result
    tmax_volumes = {f"{t:g}": volume(brain & (tmax > t)) for t in TMAX_PROFILE_S}
    k = settings.cbf_calibration
    core_volumes = {
        f"{100 * f:g}": volume(raw_hypo & settings.core_mask(cbf, relative_cbv, reference, k * f))
        for f in CORE_PROFILE
    }
    result.profile = {
        "tmax_volumes_ml": tmax_volumes,
        "hypoperfusion_intensity_ratio": round(tmax_volumes["10"] / tmax_volumes["6"], 3)
        if tmax_volumes["6"] > 0
        else None,
        "core_volumes_ml": core_volumes,
        "rcbv_hypoperfused": None,
    }
    if relative_cbv is not None and hypo.any():
        result.profile["rcbv_hypoperfused"] = round(float(relative_cbv[hypo].mean()), 3)
    return result


def calibrated(settings: LesionSettings, calibration: dict[str, Any] | None) -> LesionSettings:
    """``settings`` with a weights' ``core_calibration`` record applied: its factor, and its offset
    held to its references where it has one (module docstring)."""
    calibration = calibration or {}
    if calibration.get("factor"):
        settings = replace(settings, cbf_calibration=float(calibration["factor"]))
    if calibration.get("cbv_weight"):
        settings = replace(settings, core_cbv_weight=float(calibration["cbv_weight"]))
    if calibration.get("offset"):
        held = calibration.get("references")
        settings = replace(
            settings,
            cbf_offset=float(calibration["offset"]),
            cbf_offset_references=None if held is None else (float(held[0]), float(held[1])),
        )
    return settings.check()


#: lesions.json's note on a DSC study analysed without an ADC map (the report shows it).
MR_PERFUSION_CORE_NOTE = (
    "DSC-MRI core from rCBF < 30 % is a perfusion proxy (DSC CBF is relative); the clinical MR core"
    " is the diffusion core: give the study's ADC map (--adc)"
)


def segment_map_set(
    maps: PerfusionMaps, series: PerfusionSeries, settings: LesionSettings, adc: AdcMap | None = None
) -> dict[str, Any]:
    """Lesions of an analysis: CSF of ``series`` (the maps' source) left out, the three masks added
    to ``maps.masks``; returns the content of lesions.json. Maps whose provenance carries a
    ``core_calibration`` (a CNN's, from its weights) have its factor applied to the core thresholds,
    and lesions.json says so (``core_rule``). ``adc`` (:func:`perfnet.lesions.adc.load_adc`): the
    core from diffusion (lesions.json ``core_source``, ``adc``)."""
    from perfnet.preprocess.mask import csf_mask
    from perfnet.qc import lesion_flags

    calibration = maps.provenance.get("core_calibration") or {}
    head = maps.provenance.get("core_head") or {}
    probability = maps.maps.get(CORE_PROBABILITY) if adc is None else None
    source = "adc" if adc is not None else "cnn core head" if probability is not None else "perfusion"
    settings = calibrated(settings, calibration)
    if adc is not None and settings.adc_core_mm2_s is None:
        settings = replace(settings, adc_core_mm2_s=ADC_CORE_MM2_S).check()

    csf = csf_mask(series, maps.brain_mask)
    result = segment_lesions(
        maps["cbf"],
        maps["tmax"],
        maps.brain_mask,
        maps.affine,
        settings,
        exclude=csf,
        cbv=maps.maps.get("cbv"),
        adc=None if adc is None else adc.values,
        core_probability=probability,
        core_threshold=float(head.get("threshold", 0.5)),
    )
    maps.masks.update({"core": result.core, "hypoperfused": result.hypoperfused, "penumbra": result.penumbra})
    csf_ml = round(float(csf.sum() * voxel_volume_ml(maps.affine)), 2)
    content = result.to_json()
    return content | {
        # the lesion checks (perfnet.qc.lesion_flags); the study merges them into its QC flags
        "qc_flags": lesion_flags(content),
        "method": maps.method,
        "excluded_csf_ml": csf_ml,
        "core_rule": core_rule(
            settings, calibration, head if probability is not None else None, result.reference_cbf
        ),
        "core_source": source,
        **(
            {"core_note": MR_PERFUSION_CORE_NOTE}
            if adc is None and getattr(series, "modality", None) == "MR"
            else {}
        ),
        **({"adc": adc.to_json(settings.adc_core_mm2_s)} if adc is not None else {}),
    }


def core_rule(
    settings: LesionSettings,
    calibration: dict[str, Any] | None = None,
    head: dict[str, Any] | None = None,
    reference: float | None = None,
) -> str:
    """The core rule as applied, in words (lesions.json ``core_rule``, the report); with an offset
    the threshold it came to at the study's ``reference`` too."""
    if settings.adc_core_mm2_s is not None:
        return f"ADC < {1e6 * settings.adc_core_mm2_s:g} × 10⁻⁶ mm²/s (diffusion core, from the ADC map)"
    if head is not None:
        source = head.get("source", "the weights' core head")
        return (
            f"hypoperfused and the CNN core head's probability ≥ {float(head.get('threshold', 0.5)):g}"
            f" ({source}; not the rCBF rule)"
        )
    rule = f"hypoperfused and CBF < {100 * settings.core_relative_cbf:g} % of the reference"
    source = (calibration or {}).get("source", "the method's calibration")
    if settings.cbf_offset:
        a, fraction = settings.cbf_offset, settings.core_fraction
        here = ""
        if reference:
            here = f": here {100 * settings.core_threshold(reference) / reference:.1f} % of {reference:.3g}"
        return (
            f"{rule}, read on the flow above this method's {a:g} (its reading of no flow): CBF − {a:g}"
            f" < {100 * fraction:.1f} % of (reference − {a:g}){here} ({source})"
        )
    if settings.core_cbv_weight:
        w, rule_pct = settings.core_cbv_weight, 100 * settings.core_relative_cbf
        return (
            f"hypoperfused and (rCBF · rCBV^{w:g})^(1/{1 + w:g}) < {100 * settings.core_fraction:.1f} %,"
            f" CBF and CBV each relative to the reference: the rCBF rule ({rule_pct:g} %)"
            f" × {settings.cbf_calibration:.3g} with blood volume weighed in for this method ({source})"
        )
    if settings.cbf_calibration == 1.0:
        return rule
    return (
        f"{rule}, the threshold × {settings.cbf_calibration:.3g} = {100 * settings.core_fraction:.1f} %"
        f" for this method's CBF ({source})"
    )


__all__ = [
    "ADC_CORE_MM2_S",
    "CORE_PROFILE",
    "DEFUSE3",
    "PRESETS",
    "PROFILE_DEFINITIONS",
    "REFERENCES",
    "TMAX_PROFILE_S",
    "AdcMap",
    "LesionResult",
    "LesionSettings",
    "calibrated",
    "clean_mask",
    "core_rule",
    "hemisphere_sides",
    "load_adc",
    "segment_lesions",
    "segment_map_set",
    "voxel_volume_ml",
]
