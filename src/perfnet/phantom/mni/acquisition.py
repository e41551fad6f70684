"""Style-B acquisition: CT and MR signal, CT noise with a filtered-backprojection noise power
spectrum, MR Rician noise, contrast leakage, non-steady-state leading frames and head motion.

CT noise: white Gaussian noise shaped in each slice by √NPS with
    NPS(f) ∝ |f| · W(f)²,   W(f) = ½(1 + cos(π f / f_c)) for f < f_c, 0 beyond
(ramp filter × Hann apodisation: the noise power spectrum of filtered backprojection, Hanson 1979;
Kijewski & Judy 1987), f in cycles/mm on the study's pixel grid, normalised to the dose-derived SD
σ = σ₁₀₀·√(100/mAs)·√(5 mm/thickness). The noise is correlated within slices (its NPS vanishes at
f = 0 and peaks at mid frequencies), independent between slices and frames.

MR: each voxel's signal sums its compartments (magnitude mixing, not concentration mixing):
    S(t) = B · Σ_c f_c · S0_c · m_c(k) · exp(−TE · ΔR2*_c(t)),
B a smooth coil-sensitivity field; tissue's ΔR2* with contrast leakage after Boxerman et al.
(AJNR 2006): ΔR2*_obs(t) = ΔR2*(t) − K₂ ∫₀ᵗ ΔR2*(τ) dτ, K₂ > 0 T1-dominant (the tail dips below
baseline), K₂ < 0 T2*-dominant (it stays raised); m_c(k) the longitudinal magnetisation of frame k
approaching its steady state from full relaxation (spoiled gradient echo, flip α, TR = frame
interval): m(k) = 1 + (r − 1)(cos α · E₁)^k, r = (1 − cos α · E₁)/(1 − E₁), E₁ = exp(−TR/T1);
noise: magnitude of a complex signal with Gaussian noise of SD s0/SNR in both channels (Rician).
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from perfnet.phantom.anatomy import (
    AIR,
    ARTERY,
    BONE,
    CSF,
    DEEP_GREY,
    GREY_MATTER,
    SOFT_TISSUE,
    VEIN,
    WHITE_MATTER,
)
from perfnet.phantom.mni.config import T1_SECONDS, MniConfig

#: CT attenuation (HU): (low, high) of the per-study draw.
CT_HU_RANGES = {
    AIR: (-1000.0, -1000.0),
    SOFT_TISSUE: (20.0, 60.0),
    CSF: (0.0, 12.0),
    GREY_MATTER: (34.0, 42.0),
    WHITE_MATTER: (24.0, 31.0),
    DEEP_GREY: (32.0, 40.0),
    ARTERY: (38.0, 50.0),
}
#: MR (T2*-weighted EPI) baseline relative to grey matter: (low, high) of the draw.
MR_RELATIVE_RANGES = {
    AIR: (0.0, 0.0),
    SOFT_TISSUE: (0.5, 1.0),
    BONE: (0.03, 0.08),
    CSF: (1.6, 2.2),
    GREY_MATTER: (1.0, 1.0),
    WHITE_MATTER: (0.72, 0.88),
    DEEP_GREY: (0.8, 0.95),
    ARTERY: (0.7, 0.9),
}
T1_GROUP = {
    GREY_MATTER: "grey",
    WHITE_MATTER: "white",
    DEEP_GREY: "deep",
    CSF: "csf",
    ARTERY: "blood",
    VEIN: "blood",
}


def baseline_values(cfg: MniConfig, rng: np.random.Generator) -> dict[int, float]:
    """Pre-contrast value of every class: CT HU or MR S0 (signal units); veins share the blood's."""
    ranges = CT_HU_RANGES if cfg.modality == "CT" else MR_RELATIVE_RANGES
    values = {label: float(rng.uniform(lo, hi)) for label, (lo, hi) in ranges.items()}
    if cfg.modality == "CT":
        values[BONE] = cfg.skull_hu
    else:
        values = {label: cfg.s0 * v for label, v in values.items()}
    values[VEIN] = values[ARTERY]
    return values


def steady_state_factors(cfg: MniConfig, label: int, n_frames: int) -> np.ndarray:
    """m(k), k = 0 … n−1: signal of frame k relative to the steady state (1 without the effect)."""
    if cfg.modality != "MR" or not cfg.non_steady_state:
        return np.ones(n_frames)
    t1 = T1_SECONDS[cfg.field_strength_t][T1_GROUP.get(label, "other")]
    e1 = np.exp(-cfg.frame_interval_s / t1)
    c = np.cos(np.radians(cfg.flip_angle_deg)) * e1
    ratio = (1.0 - c) / (1.0 - e1)
    return 1.0 + (ratio - 1.0) * c ** np.arange(n_frames)


def nps_filter(n: int, pixel_mm: float, cutoff_lp_mm: float) -> np.ndarray:
    """√NPS on the rfft2 grid of an n × n slice, scaled so that filtered unit white noise has unit SD."""
    fx = np.fft.fftfreq(n, d=pixel_mm)
    fy = np.fft.rfftfreq(n, d=pixel_mm)
    f = np.sqrt(fx[:, None] ** 2 + fy[None, :] ** 2)
    window = np.where(f < cutoff_lp_mm, 0.5 * (1.0 + np.cos(np.pi * f / cutoff_lp_mm)), 0.0)
    amplitude = np.sqrt(f) * window
    # Parseval over the full (two-sided) spectrum: the rfft half counts twice except its edges
    weights = np.full(amplitude.shape, 2.0)
    weights[:, 0] = 1.0
    if n % 2 == 0:
        weights[:, -1] = 1.0
    power = float((weights * amplitude**2).sum()) / (n * n)
    return (amplitude / np.sqrt(max(power, 1e-20))).astype(np.float32)


def add_ct_noise(signal: np.ndarray, cfg: MniConfig, rng: np.random.Generator) -> None:
    """Correlated CT noise (FBP noise power spectrum) added in place, a few frames at a time;
    ``noise_texture="white"``: uncorrelated noise of the same SD."""
    sd = cfg.effective_noise_sd
    if sd <= 0:
        return
    if cfg.noise_texture == "white":
        for t in range(signal.shape[3]):
            signal[..., t] += np.float32(sd) * rng.standard_normal(signal.shape[:3], dtype=np.float32)
        return
    nx, ny = signal.shape[:2]
    if nx != ny:
        raise ValueError("CT noise needs square slices")
    shaping = (nps_filter(nx, cfg.pixel_mm, cfg.nps_cutoff_lp_mm) * np.float32(sd))[:, :, None, None]
    block = 8  # frames at a time: bounded memory, contiguous enough writes
    for start in range(0, signal.shape[3], block):
        stop = min(start + block, signal.shape[3])
        white = rng.standard_normal((nx, ny, signal.shape[2], stop - start), dtype=np.float32)
        spectrum = fft.rfft2(white, axes=(0, 1), workers=-1)
        spectrum *= shaping
        signal[..., start:stop] += fft.irfft2(spectrum, s=(nx, ny), axes=(0, 1), workers=-1)


def add_rician_noise(signal: np.ndarray, cfg: MniConfig, rng: np.random.Generator) -> None:
    """|S + σ(n₁ + i n₂)| in place, a few frames at a time (σ = s0 / SNR)."""
    sd = cfg.effective_noise_sd
    if sd <= 0:
        return
    block = 8
    for start in range(0, signal.shape[3], block):
        frames = signal[..., start : start + block]
        real = frames + np.float32(sd) * rng.standard_normal(frames.shape, dtype=np.float32)
        imag = np.float32(sd) * rng.standard_normal(frames.shape, dtype=np.float32)
        signal[..., start : start + block] = np.hypot(real, imag)


def draw_motion(cfg: MniConfig, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rigid head motion per frame (T, 6): tx, ty, tz (mm), rx, ry, rz (deg); frame 0 is the
    reference. A slow linear drift (up to a third of the peak) plus ``motion_events`` sudden moves
    at random frames, each held (a patient shifting and settling); scaled to the drawn peaks."""
    n = times.shape[0]
    out = np.zeros((n, 6))
    if not cfg.motion or n < 3:
        return out
    peak = np.r_[np.full(3, cfg.motion_translation_mm), np.full(3, cfg.motion_rotation_deg)]
    drift = rng.uniform(-1.0, 1.0, 6) * peak / 3.0
    out += (times / max(float(times[-1]), 1e-6))[:, None] * drift[None, :]
    for _ in range(cfg.motion_events):
        start = int(rng.integers(1, n))
        out[start:] += rng.uniform(-1.0, 1.0, 6) * peak
    largest = np.abs(out).max(axis=0)
    over = np.maximum(largest / peak, 1.0)
    return out / over
