"""Signal → contrast-agent concentration.

CT: the enhancement in HU, C(t) = HU(t) − HU₀, with HU₀ the mean of the baseline frames
(attenuation is linear in the iodine concentration; Miles 1991).
DSC-MRI: ΔR2*(t) = −ln(S(t)/S₀)/TE (1/s), with S₀ the mean of the baseline frames (gradient-echo
signal S = S₀·e^{−TE·ΔR2*}; Rosen et al. 1990). ΔR2* is proportional to the concentration with a
tissue-dependent constant that perfusion analysis treats as equal in artery and tissue, so when
the echo time is unknown TE = 1 s is used: the scale cancels in CBF and CBV (both are ratios of
tissue to arterial curves) and MTT, Tmax and TTP are times.
"""

from __future__ import annotations

import numpy as np

#: MR: the signal is clipped at this fraction of the voxel's S₀ (caps ΔR2* at ln(1000)/TE).
SIGNAL_FLOOR_FRACTION = 1e-3
#: Voxels per chunk (bounds the temporaries on 512² × 16 × 89 series).
CHUNK_VOXELS = 1 << 20


def to_concentration(
    data4d: np.ndarray,
    baseline_end: int,
    modality: str,
    echo_time: float | None = None,
    in_place: bool = False,
) -> np.ndarray:
    """Concentration (X, Y, Z, T) float32 from the signal, baseline = frames ``0 … baseline_end − 1``.

    CT: HU − mean(baseline) (HU). MR: −ln(max(S, 10⁻³·S₀)/S₀)/TE (1/s) with S₀ = mean(baseline);
    voxels with S₀ ≤ 0 (outside the head) are 0. ``echo_time`` (s) is ignored for CT; for MR
    None means TE = 1 (see the module docstring). ``in_place`` overwrites a float32, C-contiguous
    ``data4d`` instead of allocating a second series (the pipeline owns its filtered copy).
    """
    data4d = np.asarray(data4d)
    if data4d.ndim != 4:
        raise ValueError(f"expected a 4D array (X, Y, Z, T), got shape {data4d.shape}")
    n_frames = data4d.shape[3]
    baseline_end = int(baseline_end)
    if not 1 <= baseline_end <= n_frames:
        raise ValueError(f"baseline_end must be in 1…{n_frames}, got {baseline_end}")
    modality = str(modality).upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    te = 1.0 if echo_time is None else float(echo_time)
    if modality == "MR" and not te > 0:
        raise ValueError(f"echo time must be positive, got {echo_time}")

    flat = data4d.reshape(-1, n_frames)
    can_reuse = data4d.dtype == np.float32 and data4d.flags.c_contiguous and data4d.flags.writeable
    out = flat if in_place and can_reuse else np.empty(flat.shape, dtype=np.float32)
    for start in range(0, flat.shape[0], CHUNK_VOXELS):
        signal = np.asarray(flat[start : start + CHUNK_VOXELS], dtype=np.float32)
        baseline = signal[:, :baseline_end].mean(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)
        chunk = out[start : start + CHUNK_VOXELS]
        if modality == "CT":
            np.subtract(signal, baseline, out=chunk)
            continue
        valid = baseline[:, 0] > 0
        s0 = np.where(valid[:, None], baseline, np.float32(1.0))
        np.maximum(signal, np.float32(SIGNAL_FLOOR_FRACTION) * s0, out=chunk)
        chunk /= s0
        np.log(chunk, out=chunk)
        chunk *= np.float32(-1.0 / te)
        chunk[~valid] = 0.0
    return out.reshape(data4d.shape)
