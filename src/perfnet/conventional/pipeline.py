"""The conventional pipeline: series → preprocessing → AIF/VOF → deconvolution → maps + QC.

Each step is optional where the issue says so and is recorded, with its timing and estimates,
in the provenance returned with the maps (written to provenance.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from perfnet import __version__, qc
from perfnet.constants import HEMATOCRIT_FACTOR, MAP_LIMITS, TISSUE_DENSITY
from perfnet.conventional.aif import AifResult, arterial_input
from perfnet.conventional.maps import (
    bolus_passage_window,
    cbf_from_flow,
    cbv_from_areas,
    mtt_from,
    passage_areas,
    subsample_argmax,
)
from perfnet.errors import PerfnetInputError
from perfnet.io.types import PerfusionMaps, PerfusionSeries
from perfnet.preprocess.shared import Steps, motion_provenance  # noqa: F401 (re-exported)
from perfnet.preprocess.timegrid import resample_curves, uniform_grid

if TYPE_CHECKING:
    from perfnet.preprocess.shared import Preprocessed

METHODS = ("ssvd", "csvd", "osvd", "tikhonov", "boxnlr")
DEFAULT_METHOD = "osvd"

Progress = Callable[[str, float], None]


@dataclass
class AnalysisOptions:
    """Settings of one conventional analysis (all recorded in provenance.json)."""

    method: str = DEFAULT_METHOD
    motion_correction: bool = True
    bilateral_filter: bool = True
    filter_spatial_sigma_mm: float = 3.0  # Gava et al. 2022
    filter_range_sigma: float | None = None  # CT: 20 HU; MR: 5 % of the median brain baseline signal
    temporal_smoothing_s: float = 0.0  # Gaussian σ in s; 0 switches it off
    hematocrit_factor: float = HEMATOCRIT_FACTOR
    tissue_density: float = TISSUE_DENSITY
    aif_voxels: int = 5
    skip_frames: int | None = None  # leading frames to drop; None: detect non-steady-state frames
    method_options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None


@dataclass
class AnalysisResult:
    maps: PerfusionMaps
    aif: AifResult
    times: np.ndarray
    provenance: dict[str, Any]


def analyze(
    series: PerfusionSeries,
    options: AnalysisOptions | None = None,
    brain_mask: np.ndarray | None = None,
    aif_mask: np.ndarray | None = None,
    vof_mask: np.ndarray | None = None,
    progress: Progress | None = None,
    prepared: Preprocessed | None = None,
) -> AnalysisResult:
    """Run the conventional pipeline on one series. Masks are bool arrays on the series' grid.

    ``prepared``: the shared preprocessing of ``series`` (:func:`perfnet.preprocess.shared.preprocess`,
    run by :func:`perfnet.analyze` before the method branch); computed here when None. It is
    consumed: once filtered, its corrected frames are released (:meth:`Preprocessed.release_frames`)."""
    from perfnet.conventional.deconvolution import deconvolve
    from perfnet.preprocess.bolus import detect_bolus
    from perfnet.preprocess.concentration import to_concentration
    from perfnet.preprocess.filters import bilateral_filter, temporal_smooth
    from perfnet.preprocess.shared import preprocess

    options = options or AnalysisOptions()
    if options.method not in METHODS:
        raise PerfnetInputError(
            "--method", f"unknown method {options.method!r} (choose from {', '.join(METHODS)})"
        )
    shape = series.spatial_shape
    for name, mask in (("--brain-mask", brain_mask), ("--aif-mask", aif_mask), ("--vof-mask", vof_mask)):
        if mask is not None and mask.shape != shape:
            raise PerfnetInputError(name, f"mask shape {mask.shape} differs from the series grid {shape}")
    steps = Steps(progress)
    provenance: dict[str, Any] = {"perfnet_version": __version__, "method": options.method}
    if prepared is None:  # called on its own (not through perfnet.analyze): preprocess here
        prepared = preprocess(
            series,
            skip_frames=options.skip_frames,
            motion_correction=options.motion_correction,
            brain_mask=brain_mask,
            steps=steps,
        )
    else:
        steps.seconds.update(prepared.seconds)
    steady = prepared.non_steady_state
    series = prepared.steady
    data, times = prepared.series.data, prepared.series.times
    outside = prepared.outside
    mask = prepared.brain
    guide = data.mean(axis=3)
    if options.bilateral_filter:
        # on the signal, before the baseline is subtracted, so a short baseline is denoised too
        range_sigma = options.filter_range_sigma
        if range_sigma is None:
            range_sigma = 20.0 if series.modality == "CT" else 0.05 * float(np.median(guide[mask]))
        data = steps.run(
            "bilateral filter",
            lambda: bilateral_filter(
                data, guide, series.voxel_size, options.filter_spatial_sigma_mm, range_sigma
            ),
        )
        provenance["bilateral_filter"] = {
            "spatial_sigma_mm": options.filter_spatial_sigma_mm,
            "range_sigma": range_sigma,
            "guide": "temporal mean",
        }
    owned = data is not prepared.series.data  # a copy this function made: it may be overwritten
    if owned:  # the filtered copy replaces the corrected frames: nothing else may keep them alive
        prepared.release_frames()
    # the baseline is timed again on the filtered signal (as before the preprocessing was shared:
    # the maps stay identical); the QC flags use the shared timing
    bolus = steps.run("bolus timing", lambda: detect_bolus(data, times, mask, series.modality))
    valid = None
    if series.modality == "MR":  # saturated arterial voxels (signal at the noise floor) bias the AIF
        s0 = data[..., : bolus.baseline_end].mean(axis=3)
        valid = data.min(axis=3) > 0.15 * s0
        del s0
    conc = steps.run(
        "concentration",
        lambda: to_concentration(data, bolus.baseline_end, series.modality, series.echo_time, in_place=owned),
    )
    data = None  # conc may share its memory; nothing below reads the signal
    if options.temporal_smoothing_s > 0:
        conc = steps.run(
            "temporal smoothing", lambda: temporal_smooth(conc, times, options.temporal_smoothing_s)
        )

    baseline_sd = (
        float(np.median(conc[mask][:, : bolus.baseline_end].std(axis=1))) if bolus.baseline_end > 2 else None
    )
    aif = steps.run(
        "arterial input",
        lambda: arterial_input(
            conc,
            times,
            mask,
            series.voxel_size,
            aif_mask,
            vof_mask,
            options.aif_voxels,
            baseline_sd,
            valid,
            exclude=outside,
        ),
    )

    grid, dt = uniform_grid(times)
    curves = conc[mask]
    curves_u = resample_curves(curves, times, grid)
    aif_u = resample_curves(aif.aif[None, :], times, grid)[0]
    method_options = dict(options.method_options)
    if options.method == "tikhonov":  # the study's noise for a λ chosen by its SNR (not used otherwise)
        method_options.setdefault("noise_sd", baseline_sd)
    result = steps.run(
        f"deconvolution ({options.method})",
        lambda: deconvolve(
            curves_u, aif_u, dt, method=options.method, device=options.device, **method_options
        ),
    )
    kh, rho = options.hematocrit_factor, options.tissue_density
    passage = bolus_passage_window(times, np.median(curves, axis=0), bolus.baseline_end)
    cbf = cbf_from_flow(result.flow, kh, rho)
    if result.mtt is not None:  # box-NLR fits MTT itself: CBV = CBF · MTT / 60
        mtt = np.asarray(result.mtt, dtype=np.float64)
        cbv = cbf * mtt / 60.0
    else:
        # over the bolus passage, not the whole scan: the baseline's error grows with the window
        tissue_area, aif_area = passage_areas(curves, aif.aif, times, passage)
        cbv = cbv_from_areas(tissue_area, aif_area, kh, rho)
        mtt = mtt_from(cbv, cbf)
    smooth_u = (
        temporal_smooth(curves_u[:, None, None, :], grid, 1.0)[:, 0, 0, :] if grid.size > 3 else curves_u
    )
    ttp = subsample_argmax(smooth_u, grid) + steady.offset_s  # from the acquisition's first frame
    flat_maps = {"cbf": cbf, "cbv": cbv, "mtt": mtt, "ttp": ttp, "tmax": result.tmax}
    maps = {}
    for name, values in flat_maps.items():
        volume = np.zeros(shape, dtype=np.float32)
        lo, hi = MAP_LIMITS[name]
        volume[mask] = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), lo, hi)
        maps[name] = volume

    flags = qc.aif_flags(aif, prepared.qc_flags)
    provenance.update(prepared.provenance())
    provenance.update(
        {
            "options": {k: v for k, v in asdict(options).items() if k != "method_options"}
            | {"method_options": options.method_options},
            "bolus": {
                "arrival_s": float(bolus.arrival_s + steady.offset_s),
                "baseline_frames": int(bolus.baseline_end),
                "peak_s": float(bolus.peak_s + steady.offset_s),
                "no_baseline": bool(bolus.no_baseline),
            },
            "cbv_window_s": [
                float(times[passage[0]] + steady.offset_s),
                float(times[passage[1]] + steady.offset_s),
            ],
            "time_grid": {
                "dt_s": float(dt),
                "points": int(grid.size),
                "resampled": bool(grid.size != times.size),
            },
            "aif": {
                k: v for k, v in aif.to_json(times).items() if k not in ("times", "aif", "aif_raw", "vof")
            },
            "deconvolution": _summarise(result.extra),
            "qc_flags": flags,
            "qc": qc.summary(flags, prepared.qc_measures),
            "verdict": qc.verdict(flags),
            "qc_verdict": qc.verdict(flags),
            "reliable": qc.reliable(flags),
            "seconds": steps.seconds,
        }
    )
    perfusion_maps = PerfusionMaps(
        maps=maps, affine=series.affine, brain_mask=mask, method=options.method, provenance=provenance
    )
    return AnalysisResult(maps=perfusion_maps, aif=aif, times=times + steady.offset_s, provenance=provenance)


def _summarise(extra: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly summary of a method's extra outputs (arrays become statistics)."""
    out: dict[str, Any] = {}
    for key, value in (extra or {}).items():
        if isinstance(value, np.ndarray) and value.size > 1:
            v = value.astype(np.float64)
            out[key] = {
                "median": float(np.median(v)),
                "p5": float(np.percentile(v, 5)),
                "p95": float(np.percentile(v, 95)),
            }
        elif isinstance(value, int | float | str | bool) or value is None:
            out[key] = value
        elif isinstance(value, np.generic | np.ndarray):
            out[key] = np.asarray(value).item()
    return out


def run_method(
    series: PerfusionSeries,
    *,
    method: str = DEFAULT_METHOD,
    motion_correction: bool = True,
    bilateral_filter: bool = True,
    temporal_smoothing_s: float = 0.0,
    hematocrit_factor: float = HEMATOCRIT_FACTOR,
    tissue_density: float = TISSUE_DENSITY,
    device: str | None = None,
    skip_frames: int | None = None,
    brain_mask: np.ndarray | None = None,
    aif_mask: np.ndarray | None = None,
    vof_mask: np.ndarray | None = None,
    progress: Progress | None = None,
    prepared: Preprocessed | None = None,
    **_: Any,
) -> tuple[PerfusionMaps, PerfusionSeries, dict[str, Any]]:
    """A conventional method of :mod:`perfnet.registry`: maps, the series (as given) and aif.json.
    ``prepared``: the shared preprocessing :func:`perfnet.analyze` ran (else run here)."""
    options = AnalysisOptions(
        method=method,
        motion_correction=motion_correction,
        bilateral_filter=bilateral_filter,
        temporal_smoothing_s=temporal_smoothing_s,
        hematocrit_factor=hematocrit_factor,
        tissue_density=tissue_density,
        device=device,
        skip_frames=skip_frames,
    )
    result = analyze(series, options, brain_mask, aif_mask, vof_mask, progress, prepared)
    return result.maps, series, result.aif.to_json(result.times)
