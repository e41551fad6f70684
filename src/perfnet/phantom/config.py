"""Phantom configuration: every parameter and the range it is drawn from (domain randomisation).

``PhantomConfig.draw(seed, modality, **overrides)`` draws all parameters from one random stream
in a fixed order, then applies the overrides, so overriding one parameter (say ``matrix``) never
changes the others. The ranges below are the documented defaults; a study's drawn values are
written to ``truth/parameters.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perfnet.errors import PerfnetInputError

RESIDUE_FAMILIES = ("exponential", "box", "gamma", "lognormal")  # drawn with equal probability
LESION_KINDS = ("none", "oligaemia", "penumbra", "core")
TERRITORIES = ("MCA", "ACA", "PCA")
TIMINGS = ("uniform", "two-phase", "jittered")
#: ``PhantomConfig.draw(wide_bolus=True)``: the arterial first pass's FWHM (s, uniform) and
#: gamma-variate shape (log-uniform); the plain draw keeps 4–10 s and 2–5
WIDE_BOLUS_FWHM_S = (4.0, 16.0)
WIDE_BOLUS_ALPHA = (2.0, 16.0)
#: ``PhantomConfig.draw(wide_dispersion=True)``: the tissue dispersion kernel's gamma shape
#: (log-uniform; 1 is the plain draw's exponential kernel, larger shapes peak nearer their mean)
WIDE_DISPERSION_SHAPE = (1.0, 6.0)
#: ``PhantomConfig.draw(wide_residue=True)``: the gamma residue's shape (log-uniform; the plain draw
#: keeps 1.5–4) and the log-normal residue's σ (uniform; plain 0.3–0.8): transit-time distributions
#: from broad to narrow (a shape of 16 holds most of the tracer for ~half the MTT, near plug flow)
WIDE_RESIDUE_GAMMA_SHAPE = (1.5, 16.0)
WIDE_RESIDUE_LOGNORMAL_SIGMA = (0.15, 0.8)
LESION_DELAY_RANGES = {"oligaemia": (2.5, 5.5), "penumbra": (7.0, 16.0), "core": (7.0, 16.0)}
LESION_CBF_RANGES = {"oligaemia": (0.7, 0.9), "penumbra": (0.35, 0.7), "core": (0.04, 0.25)}
LESION_MTT_RANGES = {"oligaemia": (1.2, 1.6), "penumbra": (1.4, 3.0), "core": (1.4, 3.0)}


def _option(flag: str, bids: str, style_b: str) -> dict[str, str]:
    """A :class:`DrawOptions` field's documentation: its ``simulate`` flag, its key in a cohort's
    ``dataset_description.json`` and what style B draws in its place."""
    return {"flag": flag, "bids": bids, "style_b": style_b}


@dataclass(frozen=True)
class DrawOptions:
    """How style A draws a study, beside the drawn parameters themselves (``simulate``'s
    ``--delay-power``, ``--delay-mix``, ``--wide-bolus``, ``--wide-dispersion``, ``--wide-residue``;
    :meth:`PhantomConfig.draw` documents each): one value that ``write_cohort`` and ``draw_config``
    pass on whole, so an option is a field here, its use in the draw and its flag. The default
    (nothing set) is the plain draw."""

    delay_power: tuple[float, float] | None = field(
        default=None, metadata=_option("--delay-power", "DelayPowerRange", "its own delay exponent")
    )
    delay_mix: tuple[float, float] | None = field(
        default=None, metadata=_option("--delay-mix", "DelayMixRange", "its own delay exponent")
    )
    wide_bolus: bool = field(
        default=False, metadata=_option("--wide-bolus", "WideBolus", "its own bolus shape")
    )
    wide_dispersion: bool = field(
        default=False, metadata=_option("--wide-dispersion", "WideDispersion", "its own dispersion kernel")
    )
    wide_residue: bool = field(
        default=False, metadata=_option("--wide-residue", "WideResidue", "its own residue families")
    )

    def keywords(self) -> dict[str, Any]:
        """The options as :meth:`PhantomConfig.draw`'s keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def chosen(self) -> list[dataclasses.Field[Any]]:
        """The fields set away from the plain draw."""
        return [f for f in dataclasses.fields(self) if getattr(self, f.name) not in (None, False)]

    def description(self) -> dict[str, Any]:
        """A cohort's ``dataset_description.json`` entries for the options set (ranges as lists)."""
        out: dict[str, Any] = {}
        for f in self.chosen():
            value = getattr(self, f.name)
            out[f.metadata["bids"]] = list(value) if isinstance(value, tuple) else True
        return out


#: CT image noise at the reference tube current-time product; σ ∝ 1/√mAs.
CT_NOISE_SD_AT_REFERENCE = 15.0  # HU
CT_REFERENCE_MAS = 100.0


def ct_noise_sd(dose_mas: float) -> float:
    """CT image noise SD in HU for a tube current-time product (quantum noise: σ ∝ 1/√mAs)."""
    return CT_NOISE_SD_AT_REFERENCE * math.sqrt(CT_REFERENCE_MAS / dose_mas)


@dataclass
class PhantomConfig:
    """All parameters of one phantom study. Ranges are those :meth:`draw` samples from."""

    seed: int
    modality: str  # "CT" | "MR"

    # --- grid -----------------------------------------------------------------------------
    matrix: int = 256  # in-plane pixels, 64–512
    slices: int = 16  # 4–32
    fov_mm: float = 230.0  # 200–260 mm in-plane field of view
    coverage_mm: float = 80.0  # 20–160 mm slab; slice thickness = coverage / slices in [0.5, 10]
    slab_center_mm: float = 5.0  # −20…+35 mm above the basal-ganglia level

    # --- anatomy (mm) ---------------------------------------------------------------------
    brain_semi_axes_mm: tuple[float, float, float, float] = (66.0, 88.0, 72.0, 55.0)  # LR, AP, sup, inf
    head_yaw_deg: float = 0.0  # −10…+10
    head_offset_mm: tuple[float, float] = (0.0, 0.0)  # ±10 mm in-plane
    csf_gap_mm: float = 2.0  # 1–4 subarachnoid space (atrophy widens it)
    skull_thickness_mm: float = 6.0  # 4–9
    scalp_thickness_mm: float = 5.0  # 3–7
    cortex_thickness_mm: float = 3.0  # 2.2–4
    gyral_amplitude_mm: float = 1.0  # 0.5–1.8, variation of the grey/white boundary
    sulcal_wavelength_mm: float = 16.0  # 12–20, spacing of the sulci
    sulcal_depth_mm: float = 14.0  # 9–20
    ventricle_scale: float = 1.0  # 0.7–1.7
    skull_hu: float = 1200.0  # 800–1600
    anatomy_seed: int = 0  # seed of the smooth random fields (drawn)

    # --- perfusion of healthy tissue ------------------------------------------------------
    cbf_gm: float = 60.0  # 45–75 mL/100 g/min
    cbf_wm: float = 24.0  # 18–30
    cbf_deep: float = 52.0  # 40–65
    cbv_gm: float = 4.5  # 3.5–5.5 mL/100 g
    cbv_wm: float = 2.2  # 1.6–2.8
    cbv_deep: float = 3.8  # 3.0–4.6
    perfusion_variation: float = 0.1  # 0.04–0.15 relative SD of a smooth multiplicative field
    baseline_delay_s: float = 0.7  # 0–1.5 s, normal tissue delay after the AIF
    baseline_dispersion_s: float = 0.3  # 0–0.6 s mean of the tissue dispersion kernel
    dispersion_shape: float = 1.0  # 1: exponential kernel; draw(wide_dispersion=True): gamma shape 1–6
    residue: str = "exponential"  # exponential | box | gamma | lognormal
    gamma_shape: float = 2.5  # 1.5–4 (draw(wide_residue=True): 1.5–16) shape of the gamma transit times
    lognormal_sigma: float = 0.5  # 0.3–0.8 (wide_residue: 0.15–0.8) σ of the log-normal transit times

    # --- arterial input and venous output --------------------------------------------------
    arrival_s: float = 6.0  # 2–15 s bolus arrival in the arteries
    aif_peak: float = 400.0  # CT 200–600 HU; MR ΔR2* 150–500 1/s
    aif_alpha: float = 3.0  # 2–5 gamma-variate shape (draw(wide_bolus=True): 2–16)
    aif_fwhm_s: float = 6.0  # 4–10 s (draw(wide_bolus=True): 4–16 s)
    recirculation_fraction: float = 0.15  # 0.05–0.3 of the first-pass peak
    recirculation_delay_s: float = 11.0  # 8–16 s after the first peak
    recirculation_width_factor: float = 1.8  # 1.4–2.6
    steady_state_fraction: float = 0.06  # 0–0.12 of the peak (contrast left in the blood pool)
    venous_transit_s: float = 6.0  # 4–8 s mean brain transit AIF → sinus
    venous_shape: float = 5.0  # 3–8 gamma shape of that transit

    # --- lesion ---------------------------------------------------------------------------
    lesion: str = "core"  # none | oligaemia | penumbra | core (core implies a penumbra around it)
    hemisphere: str = "left"  # left | right
    territory: str = "MCA"  # MCA | ACA | PCA
    lesion_radius_mm: float = 35.0  # 10–60
    lesion_delay_s: float | None = None  # delay at the centre; None: from the kind's range (below)
    lesion_cbf_factor: float | None = None  # CBF at the centre / normal; None: from the kind's range
    lesion_mtt_factor: float | None = None  # MTT at the centre / normal; None: from the kind's range
    lesion_quantiles: tuple[float, float, float] = (0.5, 0.5, 0.5)  # where in those ranges (drawn)
    lesion_dispersion_s: float = 1.0  # 0–2.5 s added dispersion at the centre
    lesion_core_power: float = 3.0  # 1–6: larger → core smaller relative to the hypoperfused area
    # delay = δ₀ + lesion_delay · ((1 − m)·w^γ + m·w₂) (perfnet.phantom.perfusion): γ = 1, m = 0
    # (the defaults, what `draw` keeps) tie the delay to the CBF drop, so the lowest flow always has
    # the longest delay; γ < 1 spreads the full delay over the lesion, γ > 1 keeps it to the
    # centre, m > 0 moves part of it to a second smooth weight w₂ of its own centre (`draw`'s
    # ``delay_power`` / ``delay_mix`` ranges; `perfnet simulate --delay-power/--delay-mix`)
    lesion_delay_power: float = 1.0  # γ
    lesion_delay_mix: float = 0.0  # m, 0–1
    occlusion_attenuation: float = 0.5  # 0.2–0.8 of the arterial signal distal to the occlusion
    occlusion_delay_s: float = 5.0  # 2–8 s delay of the collateral filling

    # --- acquisition ----------------------------------------------------------------------
    frames: int = 60  # 30–90
    frame_interval_s: float = 1.0  # 0.5–2 s
    timing: str = "uniform"  # uniform | two-phase | jittered
    second_interval_s: float = 2.0  # two-phase: interval after the first phase (≤ 2 s)
    first_phase_fraction: float = 0.6  # two-phase: fraction of frames at the fast interval
    noise: bool = True
    dose_mas: float = 150.0  # CT: 50–400 mAs; noise SD = 15 HU · √(100 / mAs)
    noise_sd: float | None = None  # CT: overrides the dose-derived SD (HU)
    snr: float = 60.0  # MR: baseline grey-matter signal / noise SD, 15–150
    echo_time_s: float = 0.03  # MR: 0.02–0.05 s
    s0: float = 1000.0  # MR: grey-matter baseline signal, 300–3000
    motion: bool = False  # rigid head motion (drawn with p = 0.3)
    motion_translation_mm: float = 1.5  # 0.5–4 mm peak
    motion_rotation_deg: float = 1.5  # 0.5–4 deg peak

    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------
    @property
    def slice_thickness_mm(self) -> float:
        return float(np.clip(self.coverage_mm / self.slices, 0.5, 10.0))

    def _lesion_value(
        self, explicit: float | None, ranges: dict[str, tuple[float, float]], q: float
    ) -> float:
        if explicit is not None:
            return float(explicit)
        lo, hi = ranges.get(self.lesion, ranges["core"])
        return lo + q * (hi - lo)

    @property
    def lesion_delay(self) -> float:
        """Delay (s) at the lesion centre: oligaemia 2.5–5.5, penumbra and core 7–16."""
        return self._lesion_value(self.lesion_delay_s, LESION_DELAY_RANGES, self.lesion_quantiles[0])

    @property
    def lesion_cbf(self) -> float:
        """CBF at the centre / normal: oligaemia 0.7–0.9, penumbra 0.35–0.7, core 0.04–0.25."""
        return self._lesion_value(self.lesion_cbf_factor, LESION_CBF_RANGES, self.lesion_quantiles[1])

    @property
    def lesion_mtt(self) -> float:
        """MTT at the centre / normal: oligaemia 1.2–1.6, penumbra and core 1.4–3."""
        return self._lesion_value(self.lesion_mtt_factor, LESION_MTT_RANGES, self.lesion_quantiles[2])

    @property
    def residue_shape(self) -> float:
        """Shape parameter of the residue family (gamma shape or log-normal σ)."""
        return self.lognormal_sigma if self.residue == "lognormal" else self.gamma_shape

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.matrix

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return (self.pixel_mm, self.pixel_mm, self.slice_thickness_mm)

    @property
    def effective_noise_sd(self) -> float:
        """CT: HU; MR: signal units (s0 / snr)."""
        if not self.noise:
            return 0.0
        if self.modality == "CT":
            return float(self.noise_sd) if self.noise_sd is not None else ct_noise_sd(self.dose_mas)
        return self.s0 / self.snr

    def frame_times(self) -> np.ndarray:
        """Frame times (s) from 0, uniform, two-phase (fast then slower) or jittered."""
        n, dt = self.frames, self.frame_interval_s
        if self.timing == "uniform":
            return np.arange(n) * dt
        if self.timing == "two-phase":
            n_fast = round(n * self.first_phase_fraction)
            steps = np.r_[np.full(n_fast, dt), np.full(n - 1 - n_fast, self.second_interval_s)][: n - 1]
            return np.r_[0.0, np.cumsum(steps)]
        jitter = np.random.default_rng(self.seed + 7919).uniform(-0.15, 0.15, n - 1)
        return np.r_[0.0, np.cumsum(dt * (1.0 + jitter))]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["slice_thickness_mm"] = self.slice_thickness_mm
        out["voxel_size_mm"] = list(self.voxel_size)
        out["effective_noise_sd"] = self.effective_noise_sd
        out["lesion_centre"] = {
            "delay_s": self.lesion_delay,
            "cbf_factor": self.lesion_cbf,
            "mtt_factor": self.lesion_mtt,
        }
        return out

    def replace(self, **changes: Any) -> PhantomConfig:
        return validated(dataclasses.replace(self, **changes))

    @classmethod
    def draw(
        cls,
        seed: int,
        modality: str = "CT",
        *,
        delay_power: tuple[float, float] | None = None,
        delay_mix: tuple[float, float] | None = None,
        wide_bolus: bool = False,
        wide_dispersion: bool = False,
        wide_residue: bool = False,
        **overrides: Any,
    ) -> PhantomConfig:
        """Draw every parameter from its documented range with ``seed``, then apply ``overrides``.

        ``delay_power`` (lo, hi): the lesion's delay exponent γ drawn log-uniformly in that range;
        ``delay_mix`` (lo, hi): the delay's share m of a second lesion weight, uniformly. Both from
        a stream of their own (every other parameter is the draw without them); None keeps γ = 1,
        m = 0. ``wide_bolus``: the arterial first pass drawn from that stream too, in a wider family
        than the default 4–10 s FWHM at gamma-variate shape 2–5: FWHM 4–16 s and shape 2–16
        (log-uniform), so slow, near-symmetric boluses (slow injections, low cardiac output; the
        first pass of a population AIF is a Gaussian) are drawn beside the sharp ones.
        ``wide_dispersion``: the tissue dispersion kernel drawn from that stream too, a gamma density
        of shape 1–6 (log-uniform) at the drawn mean instead of the exponential (shape 1): a kernel
        that peaks after its start, which moves the true Tmax (the effective residue's argmax) by a
        few tenths of a second where the tissue curve barely changes. ``wide_residue``: the gamma
        residue's shape (1.5–16, log-uniform) and the log-normal residue's σ (0.15–0.8) drawn from
        that stream too, wider than the plain 1.5–4 and 0.3–0.8: narrow transit-time distributions,
        whose residue stays near 1 for a good part of the MTT, beside the broad ones; where the
        effective residue peaks, which is the true Tmax, moves later for them.
        """
        modality = modality.upper()
        if modality not in ("CT", "MR"):
            raise PerfnetInputError("--modality", f"must be ct or mr, got {modality!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
        u = rng.uniform
        d: dict[str, Any] = {"seed": int(seed), "modality": modality}
        # grid (MR: coarser matrices, thicker slices)
        d["matrix"] = int(
            rng.choice([128, 192, 256, 320, 384, 512] if modality == "CT" else [64, 96, 128, 160, 192])
        )
        d["slices"] = int(rng.integers(4, 33))
        d["fov_mm"] = u(200, 260)
        d["coverage_mm"] = u(20, 160)
        d["slab_center_mm"] = u(-20, 35)
        # anatomy
        d["brain_semi_axes_mm"] = (u(60, 72), u(80, 95), u(62, 80), u(45, 60))
        d["head_yaw_deg"] = u(-10, 10)
        d["head_offset_mm"] = (u(-10, 10), u(-10, 10))
        d["csf_gap_mm"] = u(1, 4)
        d["skull_thickness_mm"] = u(4, 9)
        d["scalp_thickness_mm"] = u(3, 7)
        d["cortex_thickness_mm"] = u(2.2, 4)
        d["gyral_amplitude_mm"] = u(0.5, 1.8)
        d["sulcal_wavelength_mm"] = u(12, 20)
        d["sulcal_depth_mm"] = u(9, 20)
        d["ventricle_scale"] = u(0.7, 1.7)
        d["skull_hu"] = u(800, 1600)
        d["anatomy_seed"] = int(rng.integers(0, 2**31 - 1))
        # perfusion
        d["cbf_gm"], d["cbf_wm"], d["cbf_deep"] = u(45, 75), u(18, 30), u(40, 65)
        d["cbv_gm"], d["cbv_wm"], d["cbv_deep"] = u(3.5, 5.5), u(1.6, 2.8), u(3.0, 4.6)
        d["perfusion_variation"] = u(0.04, 0.15)
        d["baseline_delay_s"] = u(0, 1.5)
        d["baseline_dispersion_s"] = u(0, 0.6)
        d["residue"] = str(rng.choice(RESIDUE_FAMILIES))
        d["gamma_shape"] = u(1.5, 4)
        d["lognormal_sigma"] = u(0.3, 0.8)
        # AIF / VOF
        d["arrival_s"] = u(2, 15)
        d["aif_peak"] = u(200, 600) if modality == "CT" else u(150, 500)
        d["aif_alpha"] = u(2, 5)
        d["aif_fwhm_s"] = u(4, 10)
        d["recirculation_fraction"] = u(0.05, 0.3)
        d["recirculation_delay_s"] = u(8, 16)
        d["recirculation_width_factor"] = u(1.4, 2.6)
        d["steady_state_fraction"] = u(0, 0.12)
        d["venous_transit_s"] = u(4, 8)
        d["venous_shape"] = u(3, 8)
        # lesion
        d["lesion"] = str(rng.choice(LESION_KINDS, p=[0.15, 0.1, 0.2, 0.55]))
        d["hemisphere"] = str(rng.choice(["left", "right"]))
        d["territory"] = str(rng.choice(TERRITORIES, p=[0.7, 0.15, 0.15]))
        d["lesion_radius_mm"] = u(10, 60)
        d["lesion_quantiles"] = (u(), u(), u())
        d["lesion_dispersion_s"] = u(0, 2.5)
        d["lesion_core_power"] = u(1, 6)
        d["occlusion_attenuation"] = u(0.2, 0.8)
        d["occlusion_delay_s"] = u(2, 8)
        # acquisition: the frame count follows a drawn duration so the bolus is usually covered
        d["frame_interval_s"] = u(0.5, 2)
        d["timing"] = str(rng.choice(TIMINGS, p=[0.6, 0.3, 0.1]))
        d["second_interval_s"] = u(d["frame_interval_s"], 2.0)
        d["first_phase_fraction"] = u(0.4, 0.7)
        duration = u(45, 120)
        mean_interval = d["frame_interval_s"]
        if d["timing"] == "two-phase":
            f = d["first_phase_fraction"]
            mean_interval = f * d["frame_interval_s"] + (1 - f) * d["second_interval_s"]
        d["frames"] = int(np.clip(round(duration / mean_interval), 30, 90))
        d["dose_mas"] = u(50, 400)
        d["snr"] = u(15, 150)
        d["echo_time_s"] = u(0.02, 0.05)
        d["s0"] = u(300, 3000)
        d["motion"] = bool(rng.uniform() < 0.3)
        d["motion_translation_mm"] = u(0.5, 4)
        d["motion_rotation_deg"] = u(0.5, 4)
        own = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE1A]))
        # drawn always, used only when asked (a longer draw keeps the earlier values)
        gamma, mix, width, shape, kernel, transit_shape, transit_sigma = own.uniform(size=7)
        if delay_power is not None:
            lo, hi = (float(v) for v in delay_power)
            if not 0 < lo <= hi <= 10:
                raise PerfnetInputError("--delay-power", f"must be 0 < LO <= HI <= 10, got {lo:g},{hi:g}")
            d["lesion_delay_power"] = float(np.exp(np.log(lo) + gamma * (np.log(hi) - np.log(lo))))
        if delay_mix is not None:
            lo, hi = (float(v) for v in delay_mix)
            if not 0 <= lo <= hi <= 1:
                raise PerfnetInputError("--delay-mix", f"must be 0 <= LO <= HI <= 1, got {lo:g},{hi:g}")
            d["lesion_delay_mix"] = float(lo + mix * (hi - lo))
        if wide_bolus:
            lo, hi = WIDE_BOLUS_FWHM_S
            d["aif_fwhm_s"] = float(lo + width * (hi - lo))
            lo, hi = WIDE_BOLUS_ALPHA
            d["aif_alpha"] = float(np.exp(np.log(lo) + shape * (np.log(hi) - np.log(lo))))
        if wide_dispersion:
            lo, hi = WIDE_DISPERSION_SHAPE
            d["dispersion_shape"] = float(np.exp(np.log(lo) + kernel * (np.log(hi) - np.log(lo))))
        if wide_residue:
            lo, hi = WIDE_RESIDUE_GAMMA_SHAPE
            d["gamma_shape"] = float(np.exp(np.log(lo) + transit_shape * (np.log(hi) - np.log(lo))))
            lo, hi = WIDE_RESIDUE_LOGNORMAL_SIGMA
            d["lognormal_sigma"] = float(lo + transit_sigma * (hi - lo))
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise PerfnetInputError("phantom", f"unknown parameter(s): {', '.join(sorted(unknown))}")
        d.update({k: v for k, v in overrides.items() if v is not None})
        return validated(cls(**d))


def validated(cfg: PhantomConfig) -> PhantomConfig:
    """Check ranges that would break the simulation; one-line errors name the parameter."""
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
        ("residue", cfg.residue in RESIDUE_FAMILIES, f"must be one of {', '.join(RESIDUE_FAMILIES)}"),
        ("lesion", cfg.lesion in LESION_KINDS, f"must be one of {', '.join(LESION_KINDS)}"),
        ("territory", cfg.territory in TERRITORIES, f"must be one of {', '.join(TERRITORIES)}"),
        ("hemisphere", cfg.hemisphere in ("left", "right"), "must be left or right"),
        ("timing", cfg.timing in TIMINGS, f"must be one of {', '.join(TIMINGS)}"),
        ("arrival_s", 0 <= cfg.arrival_s <= 60, "must be 0–60 s"),
        ("aif_peak", cfg.aif_peak > 0, "must be positive"),
        ("fov_mm", 50 <= cfg.fov_mm <= 500, "must be 50–500 mm"),
        ("lesion_delay_power", 0 < cfg.lesion_delay_power <= 10, "must be in (0, 10]"),
        ("lesion_delay_mix", 0 <= cfg.lesion_delay_mix <= 1, "must be in [0, 1]"),
        ("dispersion_shape", 1 <= cfg.dispersion_shape <= 100, "must be 1–100"),
    ]
    for name, ok, problem in checks:
        if not ok:
            raise PerfnetInputError(f"phantom parameter {name}", f"{problem}, got {getattr(cfg, name)!r}")
    return cfg
