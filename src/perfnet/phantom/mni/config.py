"""Parameters of a style-B ("mni") phantom study and the ranges they are drawn from.

``MniConfig.draw(seed, modality, **overrides)`` draws every parameter from one random stream in a
fixed order and then applies the overrides, so overriding one (say ``matrix``) never changes the
others. The overrides accepted are the style-A names that mean the same thing here (``matrix``,
``slices``, ``frames``, ``frame_interval_s``, ``timing``, ``dose_mas``, ``noise_sd``, ``snr``,
``noise``, ``motion``, ``lesion``, ``territory``, ``hemisphere``, ``residue``, ``arrival_s``)
plus any field below. A study's drawn values are written to ``truth/parameters.json``.

The ranges are deliberately not style A's (``perfnet.phantom.config``): different residue
families, dispersion kernel, arterial input shape, frame-count rule, dose range and noise model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from perfnet.errors import PerfnetInputError

RESIDUE_FAMILIES = ("exponential", "gamma", "lagged-normal", "two-compartment")
#: how often :meth:`MniConfig.draw` draws each of them
RESIDUE_WEIGHTS = (0.2, 0.3, 0.25, 0.25)
LESION_KINDS = ("none", "oligaemia", "penumbra", "core")
TERRITORIES = ("MCA", "ACA", "PCA")
OCCLUSION_LEVELS = ("proximal", "distal")
TIMINGS = ("uniform", "two-phase", "jittered")
#: CT noise textures: ``fbp`` (drawn: the filtered back-projection noise power spectrum) and
#: ``white`` (never drawn; an override that takes the texture out, e.g. for a factor ablation)
NOISE_TEXTURES = ("fbp", "white")
#: Arterial first-pass shapes: ``population`` (drawn: Parker's Gaussian) and ``gamma`` (never
#: drawn; an override: a gamma variate of shape :data:`AIF_GAMMA_SHAPE` with the Gaussian's peak
#: time, width and area, the recirculation and washout kept: style A's kind of first pass, for a
#: factor ablation of the arterial shape)
AIF_MODELS = ("population", "gamma")
AIF_GAMMA_SHAPE = 3.0
#: Time from the bolus arrival to the first-pass peak of the unstretched population AIF (3.5 σ₁).
AIF_PEAK_AFTER_ARRIVAL_S = 3.5 * 0.0563 * 60.0
LESION_DELAY_RANGES = {"oligaemia": (1.5, 3.5), "severe": (6.0, 14.0)}
LESION_CBF_RANGES = {"oligaemia": (0.75, 0.95), "severe": (0.35, 0.75)}
LESION_MTT_RANGES = {"oligaemia": (1.1, 1.4), "severe": (1.2, 2.5)}

#: CT noise SD at 100 mAs and 5 mm slices (HU) is drawn per study (the reconstruction kernel and
#: the scanner set it); σ = σ₁₀₀ · √(100 / mAs) · √(5 mm / thickness) (quantum noise).
CT_REFERENCE_MAS = 100.0
CT_REFERENCE_THICKNESS_MM = 5.0
#: Longitudinal relaxation times (s) at 1.5 T and 3 T, for the non-steady-state leading frames.
T1_SECONDS = {
    1.5: {"grey": 1.1, "white": 0.7, "deep": 1.0, "csf": 4.0, "blood": 1.45, "other": 0.9},
    3.0: {"grey": 1.45, "white": 0.85, "deep": 1.3, "csf": 4.2, "blood": 1.65, "other": 1.1},
}


@dataclass
class MniConfig:
    """All parameters of one style-B study (template anatomy, its physiology and acquisition)."""

    style: ClassVar[str] = "mni"

    seed: int
    modality: str  # "CT" | "MR"

    # --- grid and slab ----------------------------------------------------------------------
    matrix: int = 128  # in-plane pixels: CT 128–512, MR 64–256
    slices: int = 8  # 4–32
    fov_mm: float = 240.0  # CT 210–260, MR 210–240
    coverage_mm: float = 64.0  # 20–160 mm from the first to the last slice's edge
    slice_gap_fraction: float = 0.0  # gap / thickness: CT 0 (p 0.7) or 0–0.3, MR 0–0.3
    slab_center_mm: float = 10.0  # −25…+30 mm: slab centre above the template brain centre

    # --- head pose and template deformation ----------------------------------------------------
    head_scale: tuple[float, float, float] = (0.92, 0.92, 0.92)  # overall 0.84–1.0 × axis 0.95–1.05
    head_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # pitch ±18 (tilt), roll ±6, yaw ±12
    head_offset_mm: tuple[float, float] = (0.0, 0.0)  # in-plane ±12 mm
    warp_amplitude_mm: float = 3.0  # 1–5 mm RMS of the smooth random displacement field
    warp_length_mm: float = 30.0  # 20–45 mm correlation length of that field
    csf_gap_mm: float = 1.5  # 0.5–3.5 mm extra-axial CSF (atrophy widens it)
    skull_thickness_mm: float = 6.0  # 4–8 (± 20 % smooth variation)
    scalp_thickness_mm: float = 5.0  # 3–7
    skull_hu: float = 1200.0  # 700–1800
    anatomy_seed: int = 0  # seed of every random field and of the lesion's branch centre

    # --- healthy perfusion -----------------------------------------------------------------------
    cbf_gm: float = 58.0  # 40–80 mL/100 g/min
    cbf_wm: float = 22.0  # 15–30
    cbf_deep: float = 50.0  # 35–65
    mtt_gm: float = 4.5  # 3.5–5.5 s (CBV = CBF·MTT/60: style B draws transit times, not volumes)
    mtt_wm: float = 5.5  # 4.5–7.0
    mtt_deep: float = 4.5  # 3.5–5.5
    perfusion_variation: float = 0.08  # 0.03–0.15 SD of a log-normal smooth field
    variation_length_mm: float = 25.0  # 15–40
    baseline_delay_s: float = 0.5  # 0–1.0 s arrival after the AIF in anterior-circulation tissue
    posterior_delay_s: float = 0.4  # 0–0.8 s extra in the posterior circulation
    baseline_dispersion_s: float = 0.5  # 0.2–0.8 s mean of the gamma dispersion kernel
    dispersion_shape: float = 2.5  # 1.5–5 shape of that kernel (1 would be exponential)
    residue: str = "gamma"  # exponential | gamma | lagged-normal | two-compartment
    residue_shape: tuple[float, float] = (6.0, 0.25)  # family parameters (see physiology)

    # --- arterial input (Parker et al. 2006 population curve, stretched) and venous output ---------
    arrival_s: float = 6.0  # 2–16 s
    aif_peak: float = 400.0  # CT 180–650 HU; MR ΔR2* 100–450 1/s
    aif_stretch: float = 1.0  # 0.7–1.7 time stretch of the population curve
    aif_model: str = "population"  # first pass: population (Gaussian); gamma: an override, not drawn
    recirculation_factor: float = 1.0  # 0.4–1.6 × the population recirculation
    washout_factor: float = 1.0  # 0–1.6 × the population plateau
    venous_transit_s: float = 6.5  # 5–9 s mean transit of the lagged-normal venous kernel
    venous_dispersion: float = 0.25  # 0.15–0.35 relative width of its normal part
    occlusion_attenuation: float = 0.5  # 0.2–0.8 of the arterial signal distal to the occlusion
    occlusion_delay_s: float = 4.0  # 2–8 s
    occlusion_dispersion_s: float = 2.5  # 1–4 s gamma kernel mean

    # --- lesion --------------------------------------------------------------------------------------
    lesion: str = "core"  # none | oligaemia | penumbra | core
    territory: str = "MCA"  # MCA | ACA | PCA
    hemisphere: str = "left"  # left | right
    occlusion: str = "proximal"  # proximal (whole territory) | distal (a branch: a ball in it)
    branch_radius_mm: float = 35.0  # 20–45 mm, distal occlusions
    collateral_fraction: float = 0.4  # 0.2–0.8: collateral reach / territory depth (larger: better)
    lesion_quantiles: tuple[float, float, float] = (0.5, 0.5, 0.5)  # delay, CBF, MTT in the kind's range
    lesion_delay_s: float | None = None  # oligaemia 1.5–3.5 s, penumbra/core 6–14 s at the deepest point
    delay_exponent: float = 0.6  # 0.3–1.0: delay = lesion_delay · severity^exponent
    penumbra_cbf: float | None = None  # relative CBF of severe penumbra 0.35–0.75 (oligaemia 0.75–0.95)
    core_cbf: float = 0.1  # 0.03–0.2 relative CBF in the core
    core_onset: float = 0.85  # 0.7–0.97 severity where the core begins
    lesion_mtt_factor: float | None = None  # 1.2–2.5 (oligaemia 1.1–1.4) at the deepest point
    lesion_dispersion_s: float = 1.5  # 0.5–3 s added to the dispersion kernel's mean (oligaemia: × 0.3)
    leakage_k2_per_s: float = 0.0  # MR: 0 (p 0.5) or ±0.002–0.02 1/s in the core (Boxerman 2006)

    # --- acquisition --------------------------------------------------------------------------------
    frames: int = 60  # 20–100, from the drawn duration unless given
    duration_s: float = 80.0  # 40–110 s; truncated: 12–25 s after the AIF's first peak
    frame_interval_s: float = 1.0  # CT 0.6–2.0, MR 1.0–2.0 (the repetition time)
    timing: str = "uniform"  # uniform | two-phase | jittered
    second_interval_s: float = 3.0  # two-phase: CT 2–4 s after the first phase
    first_phase_s: float = 35.0  # two-phase: duration of the fast phase, 25–45 s
    jitter_fraction: float = 0.06  # jittered: SD of the interval, 0.03–0.1 of it
    truncated: bool = False  # p 0.12: the acquisition stops early
    noise: bool = True
    dose_mas: float = 120.0  # CT 30–300 mAs
    noise_sd: float | None = None  # CT: overrides the dose-derived SD (HU)
    noise_sd_100mas: float = 14.0  # CT 10–20 HU at 100 mAs and 5 mm slices
    nps_cutoff_lp_mm: float = 0.6  # CT 0.35–0.9 cycles/mm: cut-off of the Hann apodisation window
    noise_texture: str = "fbp"  # CT: fbp (the FBP noise power spectrum); white: an override, not drawn
    snr: float = 50.0  # MR: grey-matter baseline / noise SD, 12–120
    echo_time_s: float = 0.035  # MR 0.025–0.045
    s0: float = 1000.0  # MR grey-matter baseline, 200–4000
    field_strength_t: float = 3.0  # MR 1.5 | 3
    flip_angle_deg: float = 75.0  # MR 50–90
    non_steady_state: bool = False  # MR (p 0.35): leading frames before T1 steady state
    bias_field: float = 0.08  # MR 0.03–0.15 amplitude of a smooth coil-sensitivity field
    motion: bool = False  # p 0.3: rigid head motion
    motion_events: int = 1  # 1–3 sudden moves, plus a slow drift
    motion_translation_mm: float = 1.5  # 0.5–4 mm
    motion_rotation_deg: float = 1.5  # 0.5–4 degrees

    extra: dict[str, Any] = field(default_factory=dict)

    # --- derived ---------------------------------------------------------------------------------
    @property
    def slice_thickness_mm(self) -> float:
        """coverage / slices / (1 + gap fraction), kept in 0.5–10 mm."""
        return float(np.clip(self.coverage_mm / self.slices / (1.0 + self.slice_gap_fraction), 0.5, 10.0))

    @property
    def slice_spacing_mm(self) -> float:
        """Thickness plus the gap (the slab covers slices × spacing, ≈ coverage_mm unless clipped)."""
        return self.slice_thickness_mm * (1.0 + self.slice_gap_fraction)

    def _by_kind(self, explicit: float | None, ranges: dict[str, tuple[float, float]], q: float) -> float:
        if explicit is not None:
            return float(explicit)
        lo, hi = ranges["oligaemia" if self.lesion == "oligaemia" else "severe"]
        return lo + q * (hi - lo)

    @property
    def lesion_delay(self) -> float:
        """Delay (s) at the deepest point of the lesion: oligaemia 1.5–3.5, penumbra/core 6–14."""
        return self._by_kind(self.lesion_delay_s, LESION_DELAY_RANGES, self.lesion_quantiles[0])

    @property
    def lesion_penumbra_cbf(self) -> float:
        """Relative CBF of the most severe non-core tissue: oligaemia 0.75–0.95, else 0.35–0.75."""
        return self._by_kind(self.penumbra_cbf, LESION_CBF_RANGES, self.lesion_quantiles[1])

    @property
    def lesion_mtt(self) -> float:
        """MTT factor at the deepest point: oligaemia 1.1–1.4, else 1.2–2.5."""
        return self._by_kind(self.lesion_mtt_factor, LESION_MTT_RANGES, self.lesion_quantiles[2])

    @property
    def lesion_dispersion(self) -> float:
        """Dispersion (s) added at the deepest point: ``lesion_dispersion_s``, × 0.3 in oligaemia
        (benign: collateral flow arrives late but little dispersed)."""
        return self.lesion_dispersion_s * (0.3 if self.lesion == "oligaemia" else 1.0)

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.matrix

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel spacing (mm): pixel, pixel, slice spacing (the thickness may be less: gaps)."""
        return (self.pixel_mm, self.pixel_mm, self.slice_spacing_mm)

    @property
    def ct_noise_sd(self) -> float:
        """CT image noise SD (HU): σ₁₀₀ · √(100/mAs) · √(5 mm / thickness), or ``noise_sd``."""
        if self.noise_sd is not None:
            return float(self.noise_sd)
        return (
            self.noise_sd_100mas
            * math.sqrt(CT_REFERENCE_MAS / self.dose_mas)
            * math.sqrt(CT_REFERENCE_THICKNESS_MM / self.slice_thickness_mm)
        )

    @property
    def effective_noise_sd(self) -> float:
        """CT: HU; MR: signal units (s0 / snr)."""
        if not self.noise:
            return 0.0
        return self.ct_noise_sd if self.modality == "CT" else self.s0 / self.snr

    def frame_times(self) -> np.ndarray:
        """Frame times (s) from 0: uniform, two-phase (fast phase then slower) or jittered."""
        n, dt = self.frames, self.frame_interval_s
        if self.timing == "uniform":
            return np.arange(n) * dt
        if self.timing == "two-phase":
            fast = max(2, min(n - 1, int(self.first_phase_s / dt) + 1))
            steps = np.r_[np.full(fast - 1, dt), np.full(n - fast, self.second_interval_s)]
            return np.r_[0.0, np.cumsum(steps)]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x71AE]))
        steps = dt * np.clip(1.0 + self.jitter_fraction * rng.standard_normal(n - 1), 0.7, 1.3)
        return np.r_[0.0, np.cumsum(steps)]

    def to_dict(self) -> dict[str, Any]:
        out = {"style": self.style, **dataclasses.asdict(self)}
        out["slice_thickness_mm"] = self.slice_thickness_mm
        out["slice_spacing_mm"] = self.slice_spacing_mm
        out["voxel_size_mm"] = list(self.voxel_size)
        out["effective_noise_sd"] = self.effective_noise_sd
        out["lesion_deepest"] = {
            "delay_s": self.lesion_delay,
            "penumbra_cbf_factor": self.lesion_penumbra_cbf,
            "core_cbf_factor": self.core_cbf,
            "mtt_factor": self.lesion_mtt,
            "added_dispersion_s": self.lesion_dispersion,
        }
        return out

    def replace(self, **changes: Any) -> MniConfig:
        return validated(dataclasses.replace(self, **changes))

    @classmethod
    def draw(cls, seed: int, modality: str = "CT", **overrides: Any) -> MniConfig:
        """Draw every parameter with ``seed`` from its documented range, then apply ``overrides``."""
        modality = modality.upper()
        if modality not in ("CT", "MR"):
            raise PerfnetInputError("--modality", f"must be ct or mr, got {modality!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4D4E49]))
        u = rng.uniform
        ct = modality == "CT"
        d: dict[str, Any] = {"seed": int(seed), "modality": modality}
        d["matrix"] = int(rng.choice([128, 256, 384, 512] if ct else [64, 96, 128, 192, 256]))
        d["slices"] = int(rng.integers(4, 33))
        d["fov_mm"] = u(210, 260) if ct else u(210, 240)
        d["coverage_mm"] = u(20, 160)
        d["slice_gap_fraction"] = 0.0 if ct and u() < 0.7 else u(0, 0.3)
        d["slab_center_mm"] = u(-25, 30)
        overall = u(0.84, 1.0)
        d["head_scale"] = tuple(overall * u(0.95, 1.05) for _ in range(3))
        d["head_rotation_deg"] = (u(-18, 18), u(-6, 6), u(-12, 12))
        d["head_offset_mm"] = (u(-12, 12), u(-12, 12))
        d["warp_amplitude_mm"] = u(1, 5)
        d["warp_length_mm"] = u(20, 45)
        d["csf_gap_mm"] = u(0.5, 3.5)
        d["skull_thickness_mm"] = u(4, 8)
        d["scalp_thickness_mm"] = u(3, 7)
        d["skull_hu"] = u(700, 1800)
        d["anatomy_seed"] = int(rng.integers(0, 2**31 - 1))
        d["cbf_gm"], d["cbf_wm"], d["cbf_deep"] = u(40, 80), u(15, 30), u(35, 65)
        d["mtt_gm"], d["mtt_wm"], d["mtt_deep"] = u(3.5, 5.5), u(4.5, 7.0), u(3.5, 5.5)
        d["perfusion_variation"] = u(0.03, 0.15)
        d["variation_length_mm"] = u(15, 40)
        d["baseline_delay_s"] = u(0, 1.0)
        d["posterior_delay_s"] = u(0, 0.8)
        d["baseline_dispersion_s"] = u(0.2, 0.8)
        d["dispersion_shape"] = u(1.5, 5)
        d["residue"] = str(rng.choice(RESIDUE_FAMILIES, p=list(RESIDUE_WEIGHTS)))
        d["residue_shape"] = (u(), u())  # quantiles, mapped to each family's range in physiology
        d["arrival_s"] = u(2, 16)
        d["aif_peak"] = u(180, 650) if ct else u(100, 450)
        d["aif_stretch"] = u(0.7, 1.7)
        d["recirculation_factor"] = u(0.4, 1.6)
        d["washout_factor"] = u(0, 1.6)
        d["venous_transit_s"] = u(5, 9)
        d["venous_dispersion"] = u(0.15, 0.35)
        d["occlusion_attenuation"] = u(0.2, 0.8)
        d["occlusion_delay_s"] = u(2, 8)
        d["occlusion_dispersion_s"] = u(1, 4)
        d["lesion"] = str(rng.choice(LESION_KINDS, p=[0.15, 0.1, 0.25, 0.5]))
        d["territory"] = str(rng.choice(TERRITORIES, p=[0.65, 0.15, 0.2]))
        d["hemisphere"] = str(rng.choice(["left", "right"]))
        d["occlusion"] = str(rng.choice(OCCLUSION_LEVELS))
        d["branch_radius_mm"] = u(20, 45)
        d["collateral_fraction"] = u(0.2, 0.8)
        d["lesion_quantiles"] = (u(), u(), u())
        d["delay_exponent"] = u(0.3, 1.0)
        d["core_cbf"] = u(0.03, 0.2)
        d["core_onset"] = u(0.7, 0.97)
        d["lesion_dispersion_s"] = u(0.5, 3.0)
        k2 = u(0.002, 0.02) * (1.0 if u() < 0.7 else -1.0)
        d["leakage_k2_per_s"] = 0.0 if (ct or u() < 0.5) else k2
        d["frame_interval_s"] = u(0.6, 2.0) if ct else u(1.0, 2.0)
        d["timing"] = str(rng.choice(TIMINGS, p=[0.5, 0.3, 0.2] if ct else [0.75, 0.0, 0.25]))
        d["second_interval_s"] = u(2, 4)
        d["first_phase_s"] = u(25, 45)
        d["jitter_fraction"] = u(0.03, 0.1)
        d["truncated"] = bool(u() < 0.12)
        after_peak, full = u(12, 25), u(40, 110)
        d["noise_sd_100mas"] = u(10, 20)
        d["dose_mas"] = float(np.exp(u(np.log(30), np.log(300))))
        d["nps_cutoff_lp_mm"] = u(0.35, 0.9)
        d["snr"] = float(np.exp(u(np.log(12), np.log(120))))
        d["echo_time_s"] = u(0.025, 0.045)
        d["s0"] = u(200, 4000)
        d["field_strength_t"] = float(rng.choice([1.5, 3.0]))
        d["flip_angle_deg"] = u(50, 90)
        d["non_steady_state"] = bool(not ct and u() < 0.35)
        d["bias_field"] = u(0.03, 0.15)
        d["motion"] = bool(u() < 0.3)
        d["motion_events"] = int(rng.integers(1, 4))
        d["motion_translation_mm"] = u(0.5, 4)
        d["motion_rotation_deg"] = u(0.5, 4)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise PerfnetInputError("phantom", f"unknown parameter(s): {', '.join(sorted(unknown))}")
        d.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("duration_s") is None:  # truncated: 12–25 s after the AIF's first peak
            first_peak = d["arrival_s"] + AIF_PEAK_AFTER_ARRIVAL_S * d["aif_stretch"]
            d["duration_s"] = first_peak + after_peak if d["truncated"] else full
        if overrides.get("frames") is None:
            d["frames"] = _frames_for(d, d["duration_s"])
        return validated(cls(**d))


def _frames_for(d: dict[str, Any], duration: float) -> int:
    """Frame count covering ``duration`` s with the drawn timing (20–100 frames)."""
    dt = d["frame_interval_s"]
    if d.get("timing") == "two-phase":
        fast = d["first_phase_s"] / dt
        n = fast + max(duration - d["first_phase_s"], 0.0) / d["second_interval_s"]
    else:
        n = duration / dt
    return int(np.clip(round(n) + 1, 20, 100))


def validated(cfg: MniConfig) -> MniConfig:
    """Check the values that would break the simulation; one-line errors name the parameter."""
    checks = [
        ("matrix", 16 <= cfg.matrix <= 1024, "must be 16–1024 pixels"),
        ("slices", 1 <= cfg.slices <= 256, "must be 1–256"),
        ("frames", 2 <= cfg.frames <= 1000, "must be 2–1000"),
        ("frame_interval_s", 0.05 <= cfg.frame_interval_s <= 10, "must be 0.05–10 s"),
        ("second_interval_s", 0.05 <= cfg.second_interval_s <= 10, "must be 0.05–10 s"),
        ("dose_mas", cfg.dose_mas > 0, "must be positive"),
        ("snr", cfg.snr > 0, "must be positive"),
        ("noise_sd", cfg.noise_sd is None or cfg.noise_sd >= 0, "must be ≥ 0"),
        ("echo_time_s", 0 < cfg.echo_time_s < 1, "must be in (0, 1) s"),
        ("residue", cfg.residue in RESIDUE_FAMILIES, f"style mni: one of {', '.join(RESIDUE_FAMILIES)}"),
        ("lesion", cfg.lesion in LESION_KINDS, f"must be one of {', '.join(LESION_KINDS)}"),
        ("territory", cfg.territory in TERRITORIES, f"must be one of {', '.join(TERRITORIES)}"),
        ("hemisphere", cfg.hemisphere in ("left", "right"), "must be left or right"),
        ("occlusion", cfg.occlusion in OCCLUSION_LEVELS, "must be proximal or distal"),
        ("timing", cfg.timing in TIMINGS, f"must be one of {', '.join(TIMINGS)}"),
        ("arrival_s", 0 <= cfg.arrival_s <= 60, "must be 0–60 s"),
        ("aif_peak", cfg.aif_peak > 0, "must be positive"),
        ("fov_mm", 50 <= cfg.fov_mm <= 500, "must be 50–500 mm"),
        ("field_strength_t", cfg.field_strength_t in T1_SECONDS, "must be 1.5 or 3"),
        ("dispersion_shape", cfg.dispersion_shape >= 1.0, "must be ≥ 1"),
        ("aif_model", cfg.aif_model in AIF_MODELS, f"must be one of {', '.join(AIF_MODELS)}"),
        ("noise_texture", cfg.noise_texture in NOISE_TEXTURES, f"must be one of {', '.join(NOISE_TEXTURES)}"),
    ]
    for name, ok, problem in checks:
        if not ok:
            raise PerfnetInputError(f"phantom parameter {name}", f"{problem}, got {getattr(cfg, name)!r}")
    return cfg
