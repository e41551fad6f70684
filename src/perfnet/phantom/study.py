"""One phantom study: anatomy → perfusion parameters → concentration → signal, with its truth."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perfnet.constants import MAP_NAMES
from perfnet.io.types import PerfusionSeries
from perfnet.phantom.anatomy import ARTERY, BONE, LABEL_NAMES, VEIN, Anatomy, build_anatomy
from perfnet.phantom.config import PhantomConfig
from perfnet.phantom.perfusion import PerfusionParameters, perfusion_parameters
from perfnet.phantom.physiology import (
    BETA_STEP,
    FINE_DT,
    MTT_STEP,
    ArterialInput,
    build_curve_table,
    dispersion_weights,
    fine_time_grid,
    sample_shifted,
    tissue_scale,
    venous_output,
)
from perfnet.phantom.signal import add_noise, apply_motion, baseline_image, draw_motion

#: Thresholds of the truth masks (same definitions the lesion module applies to estimated maps).
HYPOPERFUSION_TMAX_S = 6.0
CORE_RELATIVE_CBF = 0.3


@dataclass
class PhantomTruth:
    """Known truth of a phantom study, on the series' grid and time axis."""

    maps: dict[str, np.ndarray]  # cbf cbv mtt tmax ttp (0 outside the brain)
    masks: dict[str, np.ndarray]  # brain core hypoperfused penumbra
    labels: np.ndarray  # uint8 (anatomy.LABEL_NAMES)
    times: np.ndarray
    aif: np.ndarray  # arterial blood concentration at the frame times (HU or ΔR2* 1/s)
    vof: np.ndarray  # venous output at the frame times
    motion: np.ndarray  # (T, 6) translations mm, rotations deg
    concentration: np.ndarray  # noise-free concentration (X, Y, Z, T) in HU or ΔR2*, before motion
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def lesion_volumes_ml(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.parameters.get("volumes_ml", {}).items()}


@dataclass
class PhantomStudy:
    series: PerfusionSeries
    truth: PhantomTruth
    config: PhantomConfig
    anatomy: Anatomy


def _tissue_curves(
    cfg: PhantomConfig, params: PerfusionParameters, aif_fine: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Tissue concentration (V, T) of the parenchyma voxels and their truth maps (flat)."""
    mtt_bin = np.clip(np.rint(params.mtt / MTT_STEP), 5, 600).astype(np.int64)  # 0.5–60 s
    beta_bin = np.clip(np.rint(params.dispersion / BETA_STEP), 0, 100).astype(np.int64)
    keys, rows = np.unique(mtt_bin * 1000 + beta_bin, return_inverse=True)
    table = build_curve_table(
        aif_fine,
        cfg.residue,
        cfg.residue_shape,
        (keys // 1000) * MTT_STEP,
        (keys % 1000) * BETA_STEP,
        dispersion_shape=cfg.dispersion_shape,
    )
    scale = tissue_scale(params.cbf).astype(np.float32)
    curves = sample_shifted(table.curves, rows, params.delay, times) * scale[:, None]
    mtt = table.mtt[rows]
    maps = {
        "cbf": params.cbf,
        "cbv": params.cbf * mtt / 60.0,
        "mtt": mtt,
        "tmax": params.delay + table.tmax[rows],
        "ttp": params.delay + table.peak_time[rows],
    }
    return curves, maps


def _arterial_curve(
    aif_fine: np.ndarray, times: np.ndarray, delay: float, dispersion: float, gain: float
) -> np.ndarray:
    n = aif_fine.shape[0]
    kernel = dispersion_weights(np.array([dispersion]), n)[0]
    dispersed = np.convolve(aif_fine, kernel)[:n]
    return gain * np.interp(times - delay, np.arange(n) * FINE_DT, dispersed, left=0.0)


def simulate_study(cfg: PhantomConfig, noise: bool | None = None) -> PhantomStudy:
    """Simulate one study. ``noise`` overrides ``cfg.noise`` (the truth does not depend on it)."""
    started = time.perf_counter()
    if noise is not None:
        cfg = cfg.replace(noise=noise)
    streams = np.random.SeedSequence([cfg.seed, 0xB0105]).spawn(3)
    anatomy = build_anatomy(cfg)
    shape = anatomy.labels.shape
    times = cfg.frame_times()
    aif = ArterialInput.from_config(cfg)
    fine_t = fine_time_grid(float(times[-1]) + 1.0)
    aif_fine = aif(fine_t)
    params = perfusion_parameters(cfg, anatomy)
    tissue, flat_maps = _tissue_curves(cfg, params, aif_fine, times)

    n_vox, n_t = int(np.prod(shape)), times.shape[0]
    conc = np.zeros((n_vox, n_t), dtype=np.float32)
    conc[params.index] = tissue
    # vessels: blood curve weighted by the blood fraction; the rest is the tissue around them
    artery_pv, vein_pv = anatomy.artery_pv.ravel(), anatomy.vein_pv.ravel()
    occluded = anatomy.artery_occluded.ravel()
    open_curve = aif(times).astype(np.float32)
    late_curve = _arterial_curve(aif_fine, times, cfg.occlusion_delay_s, 2.0, cfg.occlusion_attenuation)
    vof_fine = venous_output(aif_fine, cfg.venous_transit_s, cfg.venous_shape)
    vof = np.interp(times, fine_t, vof_fine).astype(np.float32)
    for pv, mask, curve in (
        (artery_pv, (artery_pv > 0) & ~occluded, open_curve),
        (artery_pv, occluded, late_curve.astype(np.float32)),
        (vein_pv, vein_pv > 0, vof),
    ):
        idx = np.flatnonzero(mask)
        w = pv[idx, None]
        conc[idx] = (1.0 - w) * conc[idx] + w * curve[None, :]
    conc = conc.reshape(*shape, n_t)

    rng_signal = np.random.default_rng(streams[0])
    base, base_values = baseline_image(cfg, anatomy, rng_signal)
    if cfg.modality == "CT":
        signal = base[..., None] + conc
        background = -1000.0
    else:
        signal = base[..., None] * np.exp(-cfg.echo_time_s * conc)
        background = 0.0
    signal = signal.astype(np.float32)
    motion = draw_motion(cfg, n_t, np.random.default_rng(streams[1]))
    centre = np.array([cfg.head_offset_mm[0], cfg.head_offset_mm[1], 0.0])
    if cfg.motion:
        signal = apply_motion(signal, motion, anatomy.grid.affine, centre, background)
    add_noise(signal, cfg, np.random.default_rng(streams[2]))

    truth_maps = {}
    for name in MAP_NAMES:
        volume = np.zeros(n_vox, dtype=np.float32)
        volume[params.index] = flat_maps[name]
        truth_maps[name] = volume.reshape(shape)
    masks = _truth_masks(params, truth_maps, shape)
    voxel_ml = float(np.prod(anatomy.grid.voxel_size)) / 1000.0
    volumes = {name: float(mask.sum()) * voxel_ml for name, mask in masks.items()}
    parameters = {
        "config": cfg.to_dict(),
        "baseline_values": base_values,
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "volumes_ml": volumes,
        "aif": {
            "units": "HU" if cfg.modality == "CT" else "1/s (ΔR2*)",
            **{k: float(v) for k, v in aif.__dict__.items()},
        },
        "seconds": round(time.perf_counter() - started, 3),
    }
    truth = PhantomTruth(
        maps=truth_maps,
        masks=masks,
        labels=anatomy.labels,
        times=times,
        aif=open_curve,
        vof=vof,
        motion=motion,
        concentration=conc,
        parameters=parameters,
    )
    series = PerfusionSeries(
        data=signal,
        times=times,
        affine=anatomy.grid.affine,
        modality=cfg.modality,
        echo_time=cfg.echo_time_s if cfg.modality == "MR" else None,
        meta={"source": f"phantom seed {cfg.seed}", "format": "phantom", "frame_times_source": "phantom"},
    )
    return PhantomStudy(series=series, truth=truth, config=cfg, anatomy=anatomy)


def _truth_masks(
    params: PerfusionParameters, maps: dict[str, np.ndarray], shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    n_vox = int(np.prod(shape))
    brain = np.zeros(n_vox, dtype=bool)
    brain[params.index] = True
    relative_cbf = np.ones(n_vox)
    relative_cbf[params.index] = params.cbf / params.cbf_healthy
    hypoperfused = brain & (maps["tmax"].ravel() > HYPOPERFUSION_TMAX_S)
    core = hypoperfused & (relative_cbf < CORE_RELATIVE_CBF)
    return {
        "brain": brain.reshape(shape),
        "core": core.reshape(shape),
        "hypoperfused": hypoperfused.reshape(shape),
        "penumbra": (hypoperfused & ~core).reshape(shape),
    }


__all__ = ["ARTERY", "BONE", "VEIN", "PhantomStudy", "PhantomTruth", "simulate_study"]
