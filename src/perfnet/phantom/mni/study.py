"""One style-B study: template anatomy → perfusion → concentration → signal, with its truth.

The truth has exactly style A's meaning (``perfnet.phantom.study``): maps 0 outside ``brain``
(the parenchyma: voxels at least half grey, white or deep grey matter and less than half blood);
CBV = CBF·MTT/60 with MTT the residue's bin value; Tmax = delay + argmax of the effective residue
D ⊗ R; TTP = time of the noise-free tissue curve's peak; hypoperfused = Tmax > 6 s; core =
hypoperfused with CBF < 30 % of the same voxel's healthy CBF; penumbra = hypoperfused − core.
Here CBF and CBV are voxel averages: a voxel's healthy CBF is the sum of its grey, white and
deep-grey fractions times their flows (partial volume with CSF and vessels included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from perfnet.constants import MAP_NAMES
from perfnet.io.types import PerfusionSeries
from perfnet.phantom.anatomy import (
    AIR,
    ARTERY,
    BONE,
    CSF,
    DEEP_GREY,
    GREY_MATTER,
    LABEL_NAMES,
    SOFT_TISSUE,
    VEIN,
    WHITE_MATTER,
)
from perfnet.phantom.mni.acquisition import (
    add_ct_noise,
    add_rician_noise,
    baseline_values,
    draw_motion,
    steady_state_factors,
)
from perfnet.phantom.mni.anatomy import CLASSES, PARENCHYMA_CLASSES, MniAnatomy, build_mni_anatomy
from perfnet.phantom.mni.config import MniConfig
from perfnet.phantom.mni.fields import FourierField
from perfnet.phantom.mni.lesion import lesion_field, relative_cbf
from perfnet.phantom.mni.physiology import (
    DISPERSION_BIN,
    DT,
    MTT_BIN,
    PopulationAIF,
    fft_convolve,
    fine_grid,
    gamma_kernel,
    lagged_normal_kernel,
    residue_parameters,
    shifted_samples,
    tissue_scale,
    tissue_table,
)
from perfnet.phantom.mni.template import TERRITORY_CODES
from perfnet.phantom.signal import apply_motion
from perfnet.phantom.study import CORE_RELATIVE_CBF, HYPOPERFUSION_TMAX_S, PhantomStudy, PhantomTruth

#: Voxels with at least this tissue fraction carry a tissue curve (truth needs ≥ 0.5).
TISSUE_CURVE_MIN_FRACTION = 0.02
#: Extracranial soft tissue (scalp, muscle): a weakly perfused compartment (mL/100 g/min, s).
SCALP_CBF, SCALP_MTT_S, SCALP_DELAY_S = 6.0, 10.0, 1.0


@dataclass
class MniStudy(PhantomStudy):
    """A style-B study: the shared output type plus what style B knows besides."""

    mni: MniAnatomy | None = None
    leakage_k2: np.ndarray | None = None  # (X, Y, Z) 1/s, MR contrast leakage (0: none)
    severity: np.ndarray | None = None  # (X, Y, Z) lesion severity in [0, 1]
    healthy_cbf: np.ndarray | None = None  # (X, Y, Z) CBF without the lesion (0 outside the brain)


def _later_curve(aif_fine: np.ndarray, times: np.ndarray, kernel: np.ndarray, delay: float) -> np.ndarray:
    """The arterial curve through a unit-area kernel, delayed, read at ``times``."""
    n = aif_fine.shape[0]
    curve = fft_convolve(aif_fine[None, :], kernel[None, :n], n)[0]
    return np.interp(times - delay, np.arange(n) * DT, curve, left=0.0).astype(np.float32)


def simulate_mni_study(cfg: MniConfig, noise: bool | None = None) -> MniStudy:
    """Simulate one style-B study; ``noise`` overrides ``cfg.noise`` (the truth does not depend on it)."""
    started = time.perf_counter()
    if noise is not None:
        cfg = cfg.replace(noise=noise)
    streams = np.random.SeedSequence([cfg.seed, 0x5717]).spawn(4)
    mni = build_mni_anatomy(cfg)
    anatomy = mni.anatomy
    shape = anatomy.labels.shape
    n_vox = int(np.prod(shape))
    times = cfg.frame_times()
    n_t = times.shape[0]
    aif = PopulationAIF.from_config(cfg)
    fine_t = fine_grid(float(times[-1]) + 1.0)
    aif_fine = aif(fine_t)
    n_fine = fine_t.shape[0]

    # --- perfusion of every voxel that holds tissue -----------------------------------------------
    frac = {label: mni.fraction(label).ravel() for label in CLASSES}
    tissue_fraction = frac[GREY_MATTER] + frac[WHITE_MATTER] + frac[DEEP_GREY]
    carriers = np.flatnonzero(tissue_fraction > TISSUE_CURVE_MIN_FRACTION)
    q = mni.template_points[:, carriers]
    field_rng = np.random.default_rng(np.random.SeedSequence([cfg.anatomy_seed, 0xF1E1D]))
    fields = [FourierField(field_rng, cfg.variation_length_mm)(q) for _ in range(4)]
    var = cfg.perfusion_variation
    cbf_healthy = sum(
        frac[c][carriers] * v
        for c, v in zip(PARENCHYMA_CLASSES, (cfg.cbf_gm, cfg.cbf_wm, cfg.cbf_deep), strict=True)
    )
    flows = (cfg.cbf_gm, cfg.cbf_wm, cfg.cbf_deep)
    transits = (cfg.mtt_gm, cfg.mtt_wm, cfg.mtt_deep)
    cbv_healthy = sum(
        frac[c][carriers] * f * m / 60.0 for c, f, m in zip(PARENCHYMA_CLASSES, flows, transits, strict=True)
    )
    cbf_healthy = cbf_healthy * np.exp(var * np.clip(fields[0], -3, 3) - var**2 / 2)
    cbv_healthy = cbv_healthy * np.exp(var * np.clip(fields[1], -3, 3) - var**2 / 2)
    mtt_healthy = 60.0 * cbv_healthy / cbf_healthy
    lesion = lesion_field(cfg, mni, np.random.default_rng(streams[3]))
    severity = lesion.severity.ravel()[carriers].astype(np.float64)
    core_weight = lesion.core_weight.ravel()[carriers].astype(np.float64)
    cbf = cbf_healthy * relative_cbf(cfg, severity, core_weight)
    mtt_factor = 1.0 if cfg.lesion == "none" else cfg.lesion_mtt
    mtt = mtt_healthy * (1.0 + (mtt_factor - 1.0) * severity)
    mtt_bins = np.clip(np.rint(mtt / MTT_BIN), 5, 600) * MTT_BIN
    posterior = mni.territory.ravel()[carriers] == TERRITORY_CODES["PCA"]
    delay = (
        cfg.baseline_delay_s * np.clip(0.75 + 0.25 * fields[2], 0.0, 1.5)
        + cfg.posterior_delay_s * posterior
        + (cfg.lesion_delay if cfg.lesion != "none" else 0.0) * severity**cfg.delay_exponent
    )
    dispersion = cfg.baseline_dispersion_s * np.clip(0.8 + 0.2 * fields[3], 0.4, 1.4)
    dispersion = dispersion + cfg.lesion_dispersion * severity
    dispersion_bins = np.maximum(np.rint(dispersion / DISPERSION_BIN), 1) * DISPERSION_BIN
    family_params = residue_parameters(cfg.residue, cfg.residue_shape)
    mtt_index = np.rint(mtt_bins / MTT_BIN).astype(np.int64)
    dispersion_index = np.rint(dispersion_bins / DISPERSION_BIN).astype(np.int64)
    keys, rows = np.unique(mtt_index * 100_000 + dispersion_index, return_inverse=True)
    table = tissue_table(
        aif_fine,
        cfg.residue,
        family_params,
        cfg.dispersion_shape,
        (keys // 100_000) * MTT_BIN,
        (keys % 100_000) * DISPERSION_BIN,
    )
    scale = tissue_scale(cbf).astype(np.float32)
    tissue = shifted_samples(table.curves, rows, delay, times) * scale[:, None]

    # --- vessels and scalp ----------------------------------------------------------------------------
    open_curve = aif(times).astype(np.float32)
    occluded_kernel = gamma_kernel(np.array([cfg.occlusion_dispersion_s]), 2.0, n_fine)[0]
    occluded_curve = cfg.occlusion_attenuation * _later_curve(
        aif_fine, times, occluded_kernel, cfg.occlusion_delay_s
    )
    venous_kernel = lagged_normal_kernel(cfg.venous_transit_s, cfg.venous_dispersion, 0.4, n_fine)
    vof = _later_curve(aif_fine, times, venous_kernel, 0.0)
    scalp_kernel = np.exp(-np.arange(n_fine) * DT / SCALP_MTT_S)
    scalp_curve = float(tissue_scale(SCALP_CBF)) * _later_curve(
        aif_fine, times, scalp_kernel * DT, SCALP_DELAY_S
    )
    artery_open = np.clip(anatomy.artery_pv.ravel() - mni.occluded_fraction.ravel(), 0.0, None)
    artery_late = np.minimum(mni.occluded_fraction.ravel(), anatomy.artery_pv.ravel())

    # --- signal ------------------------------------------------------------------------------------------
    rng_signal = np.random.default_rng(streams[0])
    base_values = baseline_values(cfg, rng_signal)
    k2 = np.zeros(n_vox, dtype=np.float32)
    if cfg.modality == "MR" and cfg.lesion == "core" and cfg.leakage_k2_per_s != 0:
        k2[carriers] = cfg.leakage_k2_per_s * core_weight
    if cfg.modality == "CT":
        signal, conc = _ct_signal(
            cfg,
            frac,
            base_values,
            carriers,
            tissue,
            (artery_open, artery_late, frac[VEIN], frac[SOFT_TISSUE]),
            (open_curve, occluded_curve, vof, scalp_curve),
            n_t,
        )
        background = -1000.0
    else:  # coil sensitivity: a smooth multiplicative field over the head
        bias = 1.0 + cfg.bias_field * np.tanh(FourierField(field_rng, 120.0, modes=16)(mni.template_points))
        signal, conc = _mr_signal(
            cfg,
            bias,
            frac,
            base_values,
            carriers,
            tissue,
            tissue_fraction,
            k2,
            times,
            (artery_open, artery_late, frac[VEIN], frac[SOFT_TISSUE]),
            (open_curve, occluded_curve, vof, scalp_curve),
        )
        background = 0.0
    signal = signal.reshape(*shape, n_t)
    conc = conc.reshape(*shape, n_t)
    motion = draw_motion(cfg, times, np.random.default_rng(streams[1]))
    if cfg.motion:
        centre = np.array(mni.pose["head_centre_world_mm"])  # rotations about the brain's centre
        signal = apply_motion(signal, motion, anatomy.grid.affine, centre, background)
    if cfg.modality == "CT":
        add_ct_noise(signal, cfg, np.random.default_rng(streams[2]))
    else:
        add_rician_noise(signal, cfg, np.random.default_rng(streams[2]))

    # --- truth ---------------------------------------------------------------------------------------------
    brain_flat = np.isin(anatomy.labels.ravel(), PARENCHYMA_CLASSES)
    in_brain = brain_flat[carriers]
    flat_maps = {
        "cbf": cbf,
        "cbv": cbf * mtt_bins / 60.0,
        "mtt": mtt_bins,
        "tmax": delay + table.tmax[rows],
        "ttp": delay + table.peak[rows],
    }
    truth_maps = {}
    for name in MAP_NAMES:
        volume = np.zeros(n_vox, dtype=np.float32)
        volume[carriers[in_brain]] = flat_maps[name][in_brain]
        truth_maps[name] = volume.reshape(shape)
    relative = np.ones(n_vox)
    relative[carriers] = cbf / cbf_healthy
    healthy = np.zeros(n_vox, dtype=np.float32)
    healthy[carriers[in_brain]] = cbf_healthy[in_brain]
    hypoperfused = brain_flat & (truth_maps["tmax"].ravel() > HYPOPERFUSION_TMAX_S)
    core = hypoperfused & (relative < CORE_RELATIVE_CBF)
    masks = {
        "brain": brain_flat.reshape(shape),
        "core": core.reshape(shape),
        "hypoperfused": hypoperfused.reshape(shape),
        "penumbra": (hypoperfused & ~core).reshape(shape),
    }
    voxel_ml = float(abs(np.linalg.det(anatomy.grid.affine[:3, :3]))) / 1000.0
    volumes = {name: float(mask.sum()) * voxel_ml for name, mask in masks.items()}
    tissue_ml = {
        LABEL_NAMES[label]: round(float(frac[label].sum()) * voxel_ml, 2)
        for label in (GREY_MATTER, WHITE_MATTER, DEEP_GREY, CSF, BONE, ARTERY, VEIN)
    }
    parameters: dict[str, Any] = {
        "style": cfg.style,
        "config": cfg.to_dict(),
        "anatomy": mni.pose | {"tissue_ml": tissue_ml},
        "residue_parameters": family_params,
        "lesion": lesion.record,
        "baseline_values": {str(k): v for k, v in base_values.items()},
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "volumes_ml": volumes,
        "aif": {
            "units": "HU" if cfg.modality == "CT" else "1/s (ΔR2*)",
            "model": "Parker et al. 2006 population AIF, stretched and rescaled"
            + (", its first pass a gamma variate (aif_model gamma)" if aif.first_pass == "gamma" else ""),
            **{k: v if isinstance(v, str) else float(v) for k, v in aif.__dict__.items()},
            "peak": float(cfg.aif_peak),
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
        meta={
            "source": f"phantom (mni) seed {cfg.seed}",
            "format": "phantom",
            "frame_times_source": "phantom",
        },
    )
    return MniStudy(
        series=series,
        truth=truth,
        config=cfg,  # type: ignore[arg-type]  # PhantomConfig-compatible
        anatomy=anatomy,
        mni=mni,
        leakage_k2=k2.reshape(shape),
        severity=lesion.severity,
        healthy_cbf=healthy.reshape(shape),
    )


Curves = tuple[np.ndarray, ...]


def _ct_signal(
    cfg: MniConfig,
    frac: dict[int, np.ndarray],
    values: dict[int, float],
    carriers: np.ndarray,
    tissue: np.ndarray,
    vessel_fractions: Curves,
    vessel_curves: Curves,
    n_t: int,
) -> tuple[np.ndarray, np.ndarray]:
    """HU(t) = Σ_c f_c·HU_c + C(t): enhancement adds linearly (it is proportional to iodine)."""
    base = sum(frac[label] * values[label] for label in CLASSES if label in values)
    conc = np.zeros((base.shape[0], n_t), dtype=np.float32)
    conc[carriers] = tissue
    for fraction, curve in zip(vessel_fractions, vessel_curves, strict=True):
        idx = np.flatnonzero(fraction > 0)
        conc[idx] += fraction[idx, None].astype(np.float32) * curve[None, :]
    signal = base.astype(np.float32)[:, None] + conc
    return signal, conc


def _mr_signal(
    cfg: MniConfig,
    bias: np.ndarray,
    frac: dict[int, np.ndarray],
    values: dict[int, float],
    carriers: np.ndarray,
    tissue: np.ndarray,
    tissue_fraction: np.ndarray,
    k2: np.ndarray,
    times: np.ndarray,
    vessel_fractions: Curves,
    vessel_curves: Curves,
) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude mixing of compartments (module docstring of acquisition); returns the signal and
    the apparent ΔR2* = −ln(S/S_pre)/TE of the noise-free, steady-state signal."""
    te = cfg.echo_time_s
    n_vox, n_t = tissue_fraction.shape[0], times.shape[0]
    relaxing = cfg.non_steady_state

    def t1_factors(labels: tuple[int, ...]) -> np.ndarray:
        return np.stack([steady_state_factors(cfg, label, n_t) for label in labels]).astype(np.float32)

    # static compartments: CSF, bone, air, and the traces of tissue in voxels without a tissue curve
    no_curve = np.ones(n_vox, dtype=bool)
    no_curve[carriers] = False
    static = (CSF, BONE, AIR, *PARENCHYMA_CLASSES)
    weights = np.stack(
        [frac[c] * values[c] * (no_curve if c in PARENCHYMA_CLASSES else 1.0) for c in static], axis=1
    ).astype(np.float32)
    clean = np.repeat(weights.sum(axis=1)[:, None], n_t, axis=1)
    nss = weights @ t1_factors(static) if relaxing else None
    # tissue: ΔR2* per unit tissue, with leakage (Boxerman 2006)
    tissue_weights = np.stack([frac[c][carriers] * values[c] for c in PARENCHYMA_CLASSES], axis=1)
    dr2 = tissue / np.maximum(tissue_fraction[carriers], 1e-6)[:, None].astype(np.float32)
    leaky = np.flatnonzero(k2[carriers] != 0)
    if leaky.size:
        steps = np.diff(times, prepend=times[0])
        running = np.cumsum(
            0.5 * (dr2[leaky] + np.c_[dr2[leaky, :1], dr2[leaky, :-1]]) * steps[None, :], axis=1
        )
        dr2[leaky] -= k2[carriers][leaky, None] * running
    decay = np.exp(np.float32(-te) * dr2)
    clean[carriers] += tissue_weights.sum(axis=1)[:, None].astype(np.float32) * decay
    if nss is not None:
        nss[carriers] += (tissue_weights.astype(np.float32) @ t1_factors(PARENCHYMA_CLASSES)) * decay
    # blood compartments and the scalp
    for (fraction, curve), label in zip(
        zip(vessel_fractions, vessel_curves, strict=True), (ARTERY, ARTERY, VEIN, SOFT_TISSUE), strict=True
    ):
        idx = np.flatnonzero(fraction > 0)
        blood = (fraction[idx] * values[label])[:, None] * np.exp(-te * curve)[None, :]
        signal_c = blood.astype(np.float32)
        clean[idx] += signal_c
        if nss is not None:
            nss[idx] += signal_c * t1_factors((label,))
    pre = sum(frac[c] * values[c] for c in CLASSES if c in values).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        apparent = np.log(np.maximum(pre[:, None], 1e-12) / np.maximum(clean, 1e-12)) / np.float32(te)
    apparent[pre <= 0] = 0.0
    signal = clean if nss is None else nss
    signal *= bias.astype(np.float32)[:, None]
    return signal, apparent.astype(np.float32, copy=False)
