"""A named corpus of nuisance studies: what real acquisitions do to a perfusion analysis.

Each :class:`Nuisance` makes a small phantom study with one thing a real scanner or patient does
(non-steady-state leading frames, continuous head motion, thick-slice motion, arteries that are
missing from the slab so that only veins are left for the AIF search, an acquisition stopped before
the bolus has passed, a very low dose, a late bolus) and says what a trustworthy analysis must do
with it: be **accurate** (hypoperfused Dice ≥ :data:`MIN_DICE` and no core outside the true
hypoperfused tissue larger than :data:`MAX_FALSE_CORE_ML`) or raise one of the nuisance's
**flags** (the reader is told why the maps cannot be trusted). ``must_be_accurate`` nuisances are
ones perfnet claims to correct (a flag alone does not excuse them).

The corpus is used by ``tests/test_nuisance_corpus.py`` (every method on every nuisance) and by
``benchmarks/methods.py`` (its second table). Seeds are fixed per nuisance; the studies are small
(64×64 in-plane) so that the whole corpus runs in the test suite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from perfnet.io.types import PerfusionSeries
from perfnet.phantom.config import PhantomConfig
from perfnet.phantom.study import PhantomStudy, PhantomTruth, simulate_study

#: Accurate means: hypoperfused (Tmax > 6 s) Dice against the truth at least this …
MIN_DICE = 0.8
#: … and no more core than this outside the true hypoperfused tissue (mL).
MAX_FALSE_CORE_ML = 5.0

#: The base study: 64×64×4 slices of 10 mm, 50 frames of 1 s, a large MCA lesion with a core.
BASE: dict[str, Any] = {
    "matrix": 64,
    "slices": 4,
    "coverage_mm": 40.0,
    "frames": 50,
    "frame_interval_s": 1.0,
    "timing": "uniform",
    "arrival_s": 6.0,
    "lesion": "core",
    "territory": "MCA",
    "lesion_radius_mm": 45.0,
    "motion": False,
}
#: normal dose and SNR of the base study (the nuisances change one thing at a time)
NORMAL = {"CT": {"dose_mas": 200.0}, "MR": {"snr": 60.0}}
#: the phantom seed of each modality's base study: one a clean analysis gets right (oSVD
#: hypoperfused Dice 0.89 on both, CT with a 48 mL core), so that what goes wrong is the nuisance's
SEEDS = {"CT": 6, "MR": 1}


@dataclass
class NuisanceStudy:
    """A nuisance study: the series to analyse and the truth on its grid."""

    name: str
    series: PerfusionSeries
    truth: PhantomTruth
    config: PhantomConfig
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Nuisance:
    name: str
    modality: str
    description: str
    build: Callable[[int], NuisanceStudy]
    #: any of these QC flags tells the reader what is wrong (empty: none is expected)
    flags: frozenset[str] = frozenset()
    #: perfnet claims to correct this nuisance: the maps must be accurate, flag or not
    must_be_accurate: bool = False
    seed: int | None = None  # None: the modality's base seed (SEEDS)

    @property
    def base_seed(self) -> int:
        return SEEDS[self.modality] if self.seed is None else self.seed


def _study(seed: int, modality: str, **overrides: Any) -> PhantomStudy:
    return simulate_study(PhantomConfig.draw(seed, modality, **(BASE | NORMAL[modality] | overrides)))


@functools.lru_cache(maxsize=16)
def _cached(seed: int, modality: str, items: tuple[tuple[str, Any], ...]) -> PhantomStudy:
    return _study(seed, modality, **dict(items))


def phantom(seed: int, modality: str, **overrides: Any) -> PhantomStudy:
    """A (cached) base study with ``overrides``."""
    return _cached(seed, modality, tuple(sorted(overrides.items())))


def _as_nuisance(name: str, study: PhantomStudy, series: PerfusionSeries | None = None, **notes: Any):
    return NuisanceStudy(
        name, series if series is not None else study.series, study.truth, study.config, notes
    )


def _frames(series: PerfusionSeries, keep: slice | np.ndarray) -> PerfusionSeries:
    return PerfusionSeries(
        series.data[..., keep],
        series.times[keep],
        series.affine,
        series.modality,
        series.echo_time,
        dict(series.meta),
    )


# --- the nuisances --------------------------------------------------------------------------------


def _clean(modality: str) -> Callable[[int], NuisanceStudy]:
    def build(seed: int) -> NuisanceStudy:
        return _as_nuisance(f"clean_{modality.lower()}", phantom(seed, modality))

    return build


#: MR frames before the steady state: frame i brighter by 30 % · 0.4ⁱ (M_n − M_ss ∝ (cos α ·
#: e^(−TR/T1))ⁿ with cos α · e^(−TR/T1) = 0.4, e.g. α = 60°, TR/T1 = 0.22)
T1_EXCESS, T1_DECAY, T1_FRAMES = 0.3, 0.4, 2


def _non_steady_state(seed: int) -> NuisanceStudy:
    study = phantom(seed, "MR")
    series = study.series
    dt = float(series.times[1] - series.times[0])
    lead = [series.data[..., 0] * (1.0 + T1_EXCESS * T1_DECAY**i) for i in range(T1_FRAMES)]
    data = np.concatenate([np.stack(lead, axis=-1), series.data], axis=-1)
    times = np.r_[np.arange(T1_FRAMES) * dt, series.times + T1_FRAMES * dt]
    moved = PerfusionSeries(data, times, series.affine, "MR", series.echo_time, dict(series.meta))
    return _as_nuisance("non_steady_state_mr", study, moved, leading_frames=T1_FRAMES)


#: continuous head motion: 6 mm slices, up to 3.5 mm and 3° of smooth 6-DOF motion
MOTION = {"matrix": 64, "slices": 6, "coverage_mm": 36.0, "motion": True}
MOTION |= {"motion_translation_mm": 3.5, "motion_rotation_deg": 3.0}


def _mr_motion(seed: int) -> NuisanceStudy:
    return _as_nuisance("motion_mr", phantom(seed, "MR", **MOTION))


def _ct_thick_motion(seed: int) -> NuisanceStudy:
    study = phantom(seed, "CT", **(MOTION | {"slices": 4, "coverage_mm": 40.0}))
    return _as_nuisance("motion_thick_slice_ct", study)


def _venous_only(modality: str) -> Callable[[int], NuisanceStudy]:
    """The slab holds no artery (the arteries' voxels carry the tissue's curve): only the sinus is
    left for the AIF search, arriving and peaking after the tissue."""

    def build(seed: int) -> NuisanceStudy:
        study = phantom(seed, modality)
        series = study.series
        arteries = ndimage.binary_dilation(study.anatomy.artery_pv > 0, iterations=1)
        brain = study.truth.masks["brain"] & ~arteries
        data = series.data.astype(np.float32, copy=True)
        tissue = np.median(data[brain], axis=0)
        base = data[arteries][:, :3].mean(axis=1, keepdims=True)
        reference = tissue[:3].mean()
        if modality == "CT":
            data[arteries] = base + (tissue - reference)[None, :]
        else:
            data[arteries] = base * (tissue / max(float(reference), 1e-6))[None, :]
        moved = PerfusionSeries(
            data, series.times, series.affine, modality, series.echo_time, dict(series.meta)
        )
        return _as_nuisance(
            f"venous_only_{modality.lower()}", study, moved, arteries_removed=int(arteries.sum())
        )

    return build


#: the acquisition stops this long after the bolus reaches the arteries
TRUNCATED_AFTER_S = 12.0


def _truncated(seed: int) -> NuisanceStudy:
    study = phantom(seed, "CT")
    keep = study.series.times <= study.config.arrival_s + TRUNCATED_AFTER_S
    return _as_nuisance("truncated_ct", study, _frames(study.series, keep), frames=int(keep.sum()))


#: about 20 mAs: 15 HU · √(100 / 20) ≈ 34 HU of noise (a normal study 10–15 HU)
LOW_DOSE_MAS = 20.0


def _low_dose(seed: int) -> NuisanceStudy:
    return _as_nuisance("low_dose_ct", phantom(seed, "CT", dose_mas=LOW_DOSE_MAS))


#: a late bolus (poor cardiac output, late injection): arrival at 22 s in a 45-s acquisition
LATE = {"arrival_s": 22.0, "frames": 45}


def _late_bolus(seed: int) -> NuisanceStudy:
    return _as_nuisance("late_bolus_ct", phantom(seed, "CT", **LATE))


#: the lesion's bolus (collaterals filling slowly) comes 25 s after the healthy tissue's, in a 40 s
#: acquisition: still rising at the last frame in 68 mL (truth), while the brain's mean curve is not
#: truncated
LATE_LESION = {"lesion_delay_s": 25.0, "frames": 40}


def _late_lesion(seed: int) -> NuisanceStudy:
    return _as_nuisance("late_lesion_ct", phantom(seed, "CT", **LATE_LESION))


NUISANCES: dict[str, Nuisance] = {
    n.name: n
    for n in (
        Nuisance("clean_ct", "CT", "the base CT study, nothing wrong", _clean("CT"), must_be_accurate=True),
        Nuisance("clean_mr", "MR", "the base DSC study, nothing wrong", _clean("MR"), must_be_accurate=True),
        Nuisance(
            "non_steady_state_mr",
            "MR",
            f"{T1_FRAMES} bright leading frames (T1 not yet at steady state)",
            _non_steady_state,
            frozenset({"non_steady_state_frames_removed"}),
            must_be_accurate=True,
        ),
        Nuisance(
            "motion_mr",
            "MR",
            "continuous head motion up to 3.5 mm / 3° on 6 mm slices",
            _mr_motion,
            frozenset({"large_motion", "motion_unrecoverable"}),
        ),
        Nuisance(
            "motion_thick_slice_ct",
            "CT",
            "head motion up to 3.5 mm / 3° on 10 mm slices (through-plane)",
            _ct_thick_motion,
            frozenset({"large_motion", "motion_unrecoverable"}),
        ),
        Nuisance(
            "venous_only_ct",
            "CT",
            "no artery in the slab: only the sinus for the AIF search",
            _venous_only("CT"),
            frozenset({"aif_implausible"}),
        ),
        Nuisance(
            "venous_only_mr",
            "MR",
            "no artery in the slab: only the sinus for the AIF search",
            _venous_only("MR"),
            frozenset({"aif_implausible"}),
        ),
        Nuisance(
            "truncated_ct",
            "CT",
            f"acquisition stops {TRUNCATED_AFTER_S:.0f} s after the bolus arrives",
            _truncated,
            frozenset({"truncated_bolus", "truncated_aif", "late_bolus"}),
        ),
        Nuisance(
            "low_dose_ct",
            "CT",
            f"very low dose ({LOW_DOSE_MAS:.0f} mAs, ≈34 HU noise)",
            _low_dose,
            frozenset({"low_snr", "noisy_baseline"}),
        ),
        Nuisance(
            "late_bolus_ct",
            "CT",
            "bolus arrives at 22 s of a 45 s acquisition",
            _late_bolus,
            frozenset({"truncated_bolus", "truncated_aif", "late_aif", "late_bolus"}),
        ),
        Nuisance(
            "late_lesion_ct",
            "CT",
            "the lesion's bolus comes 25 s late, in a 40 s acquisition",
            _late_lesion,
            frozenset({"late_bolus", "truncated_bolus", "truncated_aif"}),
        ),
    )
}


def build(name: str, seed: int | None = None) -> NuisanceStudy:
    """The nuisance study ``name`` (its own seed unless one is given)."""
    nuisance = NUISANCES[name]
    return nuisance.build(nuisance.base_seed if seed is None else seed)


@dataclass(frozen=True)
class Judgement:
    """How an analysis of a nuisance study did."""

    dice: float
    tmax_maec: float
    false_core_ml: float
    flags: tuple[str, ...]
    accurate: bool
    flagged: bool  # one of the nuisance's flags was raised
    must_be_accurate: bool = False  # the nuisance's: a flag alone does not excuse it
    core_ml: float = 0.0  # the method's core (mL), reported beside the truth's, not judged: the
    true_core_ml: float = 0.0  # clean CT study's cores already range 27–34 mL against 48 by method

    @property
    def acceptable(self) -> bool:
        return self.accurate or (self.flagged and not self.must_be_accurate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dice": round(self.dice, 3),
            "tmax_maec": round(self.tmax_maec, 2),
            "false_core_ml": round(self.false_core_ml, 1),
            "core_ml": round(self.core_ml, 1),
            "true_core_ml": round(self.true_core_ml, 1),
            "flags": list(self.flags),
            "accurate": self.accurate,
            "flagged": self.flagged,
        }


def judge(nuisance: Nuisance, study: NuisanceStudy, maps: Any, flags: list[dict[str, Any]]) -> Judgement:
    """Score an analysis (its :class:`~perfnet.io.types.PerfusionMaps` with lesion masks, and its
    QC flags) against the nuisance study's truth."""
    truth = study.truth
    brain = truth.masks["brain"]
    tmax = np.asarray(maps.maps["tmax"], dtype=float)
    estimated = (tmax > 6.0) & brain
    true_hypo = truth.masks["hypoperfused"]
    denom = estimated.sum() + true_hypo.sum()
    dice = float(2 * (estimated & true_hypo).sum() / denom) if true_hypo.any() else float(not estimated.any())
    maec = float(np.mean(np.abs(np.clip(tmax[brain], 0, 20) - np.clip(truth.maps["tmax"][brain], 0, 20))))
    voxel_ml = float(abs(np.linalg.det(study.series.affine[:3, :3]))) / 1000.0
    core = maps.masks.get("core")
    false_core = 0.0 if core is None else float((core & ~true_hypo).sum()) * voxel_ml
    codes = tuple(f["code"] for f in flags)
    accurate = dice >= MIN_DICE and false_core <= MAX_FALSE_CORE_ML
    flagged = bool(nuisance.flags & set(codes))
    core_ml = 0.0 if core is None else float(core.sum()) * voxel_ml
    true_core_ml = float(truth.masks["core"].sum()) * voxel_ml
    return Judgement(
        dice, maec, false_core, codes, accurate, flagged, nuisance.must_be_accurate, core_ml, true_core_ml
    )
