"""Signal models, rigid head motion and noise.

CT: HU(t) = HU₀ + C(t), C the enhancement in HU; Gaussian noise, SD ∝ 1/√mAs.
MR: S(t) = S₀ · exp(−TE · ΔR2*(t)), the concentration expressed as ΔR2* (1/s); Rician noise
(magnitude of a complex signal with Gaussian noise of SD σ in both channels).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

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
    Anatomy,
)
from perfnet.phantom.config import PhantomConfig
from perfnet.spatial import resample_frames, rigid_matrix, voxel_map

#: CT baseline attenuation (HU): (mean, SD of the per-study draw).
CT_BASELINE_HU = {
    AIR: (-1000.0, 0.0),
    SOFT_TISSUE: (35.0, 5.0),
    CSF: (6.0, 2.0),
    GREY_MATTER: (38.0, 2.0),
    WHITE_MATTER: (28.0, 2.0),
    DEEP_GREY: (36.0, 2.0),
    ARTERY: (45.0, 3.0),
    VEIN: (45.0, 3.0),
}
#: MR baseline (T2*-weighted) signal relative to grey matter.
MR_BASELINE = {
    AIR: 0.0,
    SOFT_TISSUE: 0.9,
    BONE: 0.05,
    CSF: 1.8,
    GREY_MATTER: 1.0,
    WHITE_MATTER: 0.8,
    DEEP_GREY: 0.9,
    ARTERY: 0.9,
    VEIN: 0.7,
}


def baseline_image(cfg: PhantomConfig, anatomy: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Pre-contrast image (CT HU or MR S₀) and the per-tissue values drawn for it."""
    labels = anatomy.background_labels
    values: dict[int, float] = {}
    if cfg.modality == "CT":
        for label, (mean, sd) in CT_BASELINE_HU.items():
            values[label] = float(mean + sd * rng.standard_normal())
        values[BONE] = cfg.skull_hu
    else:
        for label, rel in MR_BASELINE.items():
            values[label] = cfg.s0 * rel * float(np.exp(0.05 * rng.standard_normal()))
    lut = np.zeros(256, dtype=np.float32)
    for label, value in values.items():
        lut[label] = value
    image = lut[labels]
    blood = values[ARTERY]
    vessel = np.maximum(anatomy.artery_pv, anatomy.vein_pv)
    image = (1.0 - vessel) * image + vessel * blood
    if cfg.modality == "MR":  # coil sensitivity: a smooth multiplicative bias field of a few %
        x, y, z = anatomy.grid.points.reshape(3, *labels.shape)
        image = image * (1.0 + 0.08 * np.tanh((0.6 * x + 0.3 * y + 0.1 * z) / 120.0))
    return image.astype(np.float32), {str(k): v for k, v in values.items()}


def draw_motion(cfg: PhantomConfig, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Rigid motion per frame (n_frames, 6): translations (mm) and rotations (deg) about x, y, z.

    A smooth random walk scaled to the configured peak, plus with probability ½ a sudden jerk that
    persists; frame 0 is the reference (zero).
    """
    if not cfg.motion:
        return np.zeros((n_frames, 6))
    walk = np.cumsum(rng.standard_normal((n_frames, 6)), axis=0)
    walk = ndimage.gaussian_filter1d(walk, sigma=2.0, axis=0)
    walk -= walk[0]
    if rng.uniform() < 0.5:
        start = int(rng.integers(n_frames // 4, max(n_frames // 4 + 1, 3 * n_frames // 4)))
        walk[start:] += rng.standard_normal(6) * np.abs(walk).max(axis=0).clip(1.0)
    peak = np.abs(walk).max(axis=0).clip(1e-9)
    scale = np.r_[np.full(3, cfg.motion_translation_mm), np.full(3, cfg.motion_rotation_deg)]
    return walk / peak * scale * rng.uniform(0.5, 1.0, 6)


def apply_motion(
    frames: np.ndarray, params: np.ndarray, affine: np.ndarray, centre: np.ndarray, background: float
) -> np.ndarray:
    """Each frame (X, Y, Z, T) as seen after the head moved to that frame's pose (trilinear).

    What moves into the slab through its first or last slice is the head beyond it, continued as
    that edge slice (``border`` padding), not ``background``: the slab is a section of a head.
    Padding with air put −1000 HU × (shift / slice thickness) into the edge slices (−40 HU for a
    0.4 mm shift on 10 mm slices), an artefact real data do not have. In-plane the field of view's
    edge is ``background`` (air) already."""
    maps = np.stack([voxel_map(rigid_matrix(p, centre), affine) for p in params])
    return resample_frames(frames, maps, cval=background, padding="border")


def add_noise(signal: np.ndarray, cfg: PhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """Add CT Gaussian or MR Rician noise in place (chunked over frames to bound memory)."""
    sd = cfg.effective_noise_sd
    if sd <= 0:
        return signal
    for t in range(signal.shape[3]):
        frame = signal[..., t]
        real = rng.standard_normal(frame.shape, dtype=np.float32)
        if cfg.modality == "CT":
            frame += sd * real
        else:
            imag = rng.standard_normal(frame.shape, dtype=np.float32)
            signal[..., t] = np.sqrt((frame + sd * real) ** 2 + (sd * imag) ** 2)
    return signal
