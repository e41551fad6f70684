"""Deconvolution of tissue curves by the arterial input function, every voxel at once.

C_t = C_a ⊗ k with the flow-scaled residue k(t) = (ρ/kH)·CBF/6000·R(t) (Østergaard 1996);
:mod:`perfnet.conventional.maps` turns max k into CBF. Methods (``METHODS``):

=========  ======================================================================================
ssvd       truncated SVD of the lower-triangular convolution matrix, P = 0.2 (Østergaard 1996)
csvd       truncated SVD of the block-circulant matrix (L = 2N), P = 0.1 — delay-insensitive
           (Wu 2003)
osvd       block-circulant, per-voxel threshold: the least-regularised of 20 levels
           (P = 0.5 … 0.001) whose oscillation index is below 0.035 (Wu 2003, clinical)
tikhonov   block-circulant with Tikhonov filter factors s²/(s²+λ²) (Calamante 2003), λ = μ·s_max with
           μ from the study's contrast-to-noise ratio: 3/SNR within [0.05, 0.5] (``mu="snr"``, the
           default; a number fixes μ)
boxnlr     box-shaped residue fitted by non-linear least squares (Bennink 2016), see
           :mod:`perfnet.conventional.boxnlr`
=========  ======================================================================================

Discretisation and the Tmax conventions are described in :mod:`perfnet.conventional.svd`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from perfnet.conventional import svd

METHODS = ("ssvd", "csvd", "osvd", "tikhonov", "boxnlr")

#: Truncation thresholds relative to s_max: sSVD 0.2 (Østergaard 1996), cSVD 0.1 (Wu 2003).
DEFAULT_THRESHOLD = {"ssvd": 0.2, "csvd": 0.1}
#: oSVD candidate thresholds, 20 levels log-spaced from 0.5 to 0.001 of s_max.
OSVD_THRESHOLDS = np.geomspace(0.5, 0.001, 20)
#: oSVD oscillation-index target: Wu 2003 used 0.095 in simulations and 0.035 for clinical data;
#: on noisy phantom studies (CT 8–13 HU) 0.095 let noise through (Tmax>6 s Dice 0.29–0.84),
#: 0.035 did not (0.62–0.91).
OSVD_OI_TARGET = 0.035
#: Tikhonov λ = μ·s_max; 0.05 keeps all 14 OSIPI DSC vectors within tolerance (0.1 misses the
#: highest flow) and gives about oSVD's bias and spread on noisy synthetic curves: the smallest μ
#: of the SNR rule below.
TIKHONOV_MU = 0.05
#: Tikhonov's μ unless one is given: "snr" (the study's, TIKHONOV_SNR_GAIN) or a number.
TIKHONOV_DEFAULT: float | str = "snr"
#: ``mu="snr"``: μ = TIKHONOV_SNR_GAIN / SNR within TIKHONOV_MU_RANGE, SNR the study's (see
#: :func:`study_snr`). A fixed μ lets noise lift max k most where the flow is low: on noisy
#: synthetic curves (gamma AIF, exponential residue, 1 s frames) μ 0.05 reads a flow at 30 % of
#: healthy 1.9× too high relative to healthy at SNR 10 and 2.7× at SNR 5 (1.0 at SNR 100), which
#: hides the core; the relative read stays within 1.0–1.15 where μ·SNR ≈ 3 (SNR 5 … 100). Below
#: TIKHONOV_MU the residue's peak is noise on high-SNR MR studies (a 9.5 s lesion read at Tmax 0
#: with μ 0.02 at SNR 96); above 0.5 the nuisance corpus's clean CT core read no longer moves
#: (0.35 of healthy at μ 0.5, 0.79 and 1.0).
TIKHONOV_SNR_GAIN = 3.0
TIKHONOV_MU_RANGE = (TIKHONOV_MU, 0.5)
#: Voxels per chunk: bounds memory; small on the CPU so a chunk's arrays stay in cache.
CHUNK_SIZE = {"cpu": 8192, "cuda": 262144}
#: Method-specific keyword options of :func:`deconvolve` (box-NLR's go to ``boxnlr_fit``).
_OPTIONS = {
    "ssvd": {"threshold"},
    "csvd": {"threshold"},
    "osvd": {"thresholds", "oi_target"},
    "tikhonov": {"mu", "noise_sd"},
    "boxnlr": set(),
}


@dataclass
class DeconvolutionResult:
    """Per-voxel output of :func:`deconvolve` (all (V,) float32).

    ``flow`` max k (1/s; box-NLR: the box height F); ``tmax`` time of that maximum (s,
    sub-frame, ≥ 0; box-NLR: the fitted delay, where the box starts); ``mtt`` and ``delay`` only
    for box-NLR (s); ``extra`` method-specific arrays (oSVD ``threshold``: the chosen P per voxel;
    box-NLR ``residual`` and ``grid_residual``: RMS misfit of the fit and of its grid start,
    ``iterations``: accepted LM steps).
    """

    flow: np.ndarray
    tmax: np.ndarray
    mtt: np.ndarray | None = None
    delay: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _validate(curves: Any, aif: Any, dt: float, method: str) -> tuple[np.ndarray, np.ndarray, float]:
    if method not in METHODS:
        raise ValueError(f"unknown deconvolution method {method!r}; expected one of {METHODS}")
    curves = np.asarray(curves)
    aif = np.asarray(aif, dtype=np.float64)
    if curves.ndim != 2:
        raise ValueError(f"curves must be 2D (voxels, frames), got shape {curves.shape}")
    if aif.ndim != 1 or aif.shape[0] != curves.shape[1]:
        raise ValueError(f"aif must be 1D with {curves.shape[1]} frames like curves, got shape {aif.shape}")
    if curves.shape[1] < 3:
        raise ValueError(f"at least 3 frames are needed, got {curves.shape[1]}")
    if not np.all(np.isfinite(aif)):
        raise ValueError("aif contains non-finite values")
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt}")
    if not curves.dtype == np.float32:
        curves = curves.astype(np.float32)
    return curves, aif, dt


def deconvolve(
    curves: np.ndarray,
    aif: np.ndarray,
    dt: float,
    method: str = "osvd",
    *,
    threshold: float | None = None,
    thresholds: np.ndarray | None = None,
    oi_target: float | None = None,
    mu: float | str | None = None,
    noise_sd: float | None = None,
    quadrature: str = "trapezoid",
    pad_factor: int = 2,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    progress: Callable[[float], None] | None = None,
    **boxnlr_options: Any,
) -> DeconvolutionResult:
    """Deconvolve tissue curves (V, N) by the AIF (N,) on the uniform grid t_k = k·dt.

    Curves and AIF are baseline-subtracted concentrations. ``threshold`` overrides the sSVD/cSVD
    truncation (fraction of s_max), ``thresholds`` and ``oi_target`` the oSVD levels and target,
    ``mu`` Tikhonov's λ/s_max (a number, or ``"snr"``: from the study's contrast-to-noise ratio,
    :func:`study_snr` of these curves with ``noise_sd`` as their noise SD when given),
    ``quadrature`` the discretisation (``"trapezoid"`` or ``"rectangle"``, see
    :mod:`perfnet.conventional.svd`), ``pad_factor`` the circulant length
    L = pad_factor·N (≥ 2). ``device`` is a torch device (default CPU), ``chunk_size`` voxels per
    batch, ``progress`` is called with the fraction done. Other keywords go to
    :func:`perfnet.conventional.boxnlr.boxnlr_fit`. Raises ValueError on bad shapes or options.
    A voxel with a non-finite sample gets NaN outputs (the AIF must be finite).
    """
    curves, aif, dt = _validate(curves, aif, dt, method)
    torch_device = torch.device(device) if device is not None else torch.device("cpu")
    if chunk_size is None:
        chunk_size = CHUNK_SIZE.get(torch_device.type, CHUNK_SIZE["cpu"])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    given = {
        "threshold": threshold,
        "thresholds": thresholds,
        "oi_target": oi_target,
        "mu": mu,
        "noise_sd": noise_sd,
    }
    misplaced = sorted(k for k, v in given.items() if v is not None and k not in _OPTIONS[method])
    if boxnlr_options and method != "boxnlr":
        misplaced += sorted(boxnlr_options)
    if misplaced:
        raise ValueError(f"option(s) {misplaced} do not apply to method {method!r}")
    run = {"device": torch_device, "chunk_size": int(chunk_size), "progress": progress}
    if method == "boxnlr":
        result = _boxnlr(curves, aif, dt, run, boxnlr_options)
    else:
        result = _svd_family(curves, aif, dt, method, given, quadrature, pad_factor, run)
    return _propagate_nan(result)


def _boxnlr(
    curves: np.ndarray, aif: np.ndarray, dt: float, run: dict[str, Any], options: dict[str, Any]
) -> DeconvolutionResult:
    from perfnet.conventional.boxnlr import boxnlr_fit

    fit = boxnlr_fit(curves, aif, dt, **run, **options)
    return DeconvolutionResult(
        flow=fit.flow,
        tmax=fit.delay.copy(),  # the box residue is maximal from its start, the delay (Bennink 2016)
        mtt=fit.mtt,
        delay=fit.delay,
        extra={"residual": fit.residual, "grid_residual": fit.grid_residual, "iterations": fit.iterations},
    )


def _svd_family(
    curves: np.ndarray,
    aif: np.ndarray,
    dt: float,
    method: str,
    options: dict[str, Any],
    quadrature: str,
    pad_factor: int,
    run: dict[str, Any],
) -> DeconvolutionResult:
    if quadrature not in svd.QUADRATURES:
        raise ValueError(f"unknown quadrature {quadrature!r}; expected one of {svd.QUADRATURES}")
    if int(pad_factor) != pad_factor or pad_factor < 2:
        raise ValueError(f"pad_factor must be an integer ≥ 2, got {pad_factor}")
    decomposition = svd.Decomposition.of(
        aif, dt, circulant=method != "ssvd", quadrature=quadrature, pad_factor=int(pad_factor)
    )
    if method == "osvd":
        levels = (
            OSVD_THRESHOLDS if options["thresholds"] is None else np.asarray(options["thresholds"], float)
        )
        if levels.ndim != 1 or levels.size == 0 or np.any(levels <= 0) or np.any(levels > 1):
            raise ValueError("oSVD thresholds must be a non-empty 1D array in (0, 1]")
        target = OSVD_OI_TARGET if options["oi_target"] is None else float(options["oi_target"])
        if not target > 0:
            raise ValueError(f"oi_target must be positive, got {target}")
        flow, tmax, chosen = svd.deconvolve_osvd(curves, decomposition, levels, target, dt, **run)
        return DeconvolutionResult(flow=flow, tmax=tmax, extra={"threshold": chosen})
    if method == "tikhonov":
        mu = TIKHONOV_DEFAULT if options["mu"] is None else options["mu"]
        adaptive = mu == "snr"
        extra: dict[str, Any] = {}
        if adaptive:  # one sample of the curves and its median curve for both study-wide numbers
            sample, median = _sample(curves)
            snr = _snr(sample, median, options["noise_sd"])
            mu = snr_mu(snr)
            extra = {"snr": snr, "mu": mu}
        elif isinstance(mu, str):
            raise ValueError(f"mu must be a positive number or 'snr', got {mu!r}")
        mu = float(mu)
        if not mu > 0:
            raise ValueError(f"mu must be positive, got {mu}")
        factors = svd.tikhonov_factors(decomposition.s, mu)
        flow, tmax = svd.deconvolve_filtered(curves, decomposition, factors, dt, **run)
        if adaptive:
            extra["flow_scale"] = _shrink_of(median, decomposition, mu, dt, run["device"])
            flow = flow * np.float32(extra["flow_scale"])
        return DeconvolutionResult(flow=flow, tmax=tmax, extra=extra)
    else:
        p = DEFAULT_THRESHOLD[method] if options["threshold"] is None else float(options["threshold"])
        if not 0 < p < 1:
            raise ValueError(f"threshold must be in (0, 1), got {p}")
        factors = svd.truncation_factors(decomposition.s, p)
    flow, tmax = svd.deconvolve_filtered(curves, decomposition, factors, dt, **run)
    return DeconvolutionResult(flow=flow, tmax=tmax)


#: Curves the study-wide statistics of ``mu="snr"`` read at most (every k-th voxel): the median of
#: this many curves is as noise-free as that of all of them, at a fraction of the time and memory.
SNR_SAMPLE = 65536


def _sample(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Every k-th curve (at most SNR_SAMPLE of them), those with a non-finite sample left out, and
    their median curve (None when no curve is left)."""
    step = max(1, -(-curves.shape[0] // SNR_SAMPLE))
    sample = np.asarray(curves[::step], dtype=np.float64)
    sample = sample[np.isfinite(sample).all(axis=1)]
    return sample, (np.median(sample, axis=0) if sample.shape[0] else None)


def study_snr(curves: np.ndarray, noise_sd: float | None = None) -> float:
    """The study's contrast-to-noise: the peak of the median curve over the noise SD per sample.

    ``noise_sd`` is the pipeline's (the median SD of the brain's baseline samples); without it the
    SD is read from the curves' second differences (median absolute value over every voxel and
    sample, 0.6745·√6 of the SD for white noise: the bolus's curvature touches few samples).
    At most SNR_SAMPLE curves are read.
    """
    return _snr(*_sample(curves), noise_sd)


def _snr(sample: np.ndarray, median: np.ndarray | None, noise_sd: float | None) -> float:
    """:func:`study_snr` of a sample of curves whose median curve is ``median`` (None: no curve)."""
    if median is None:
        return 0.0
    peak = float(np.max(median))
    if noise_sd is None or not np.isfinite(noise_sd) or noise_sd <= 0:
        second = np.abs(np.diff(sample, n=2, axis=1))
        noise_sd = float(np.median(second)) / (0.6745 * np.sqrt(6.0))
    if not noise_sd > 0:
        return float("inf")
    return float(max(peak, 0.0) / noise_sd)


def _shrink_of(
    median: np.ndarray | None, decomposition: svd.Decomposition, mu: float, dt: float, device: torch.device
) -> float:
    """How much a μ above TIKHONOV_MU lowers the flow of typical tissue, as a factor to undo it:
    the median curve's flow at TIKHONOV_MU over its flow at ``mu`` (the median of the brain's
    curves is nearly noise-free, so TIKHONOV_MU reads it as it reads the OSIPI vectors). One
    factor for the whole study: the relative flow, Tmax and the core are unchanged."""
    if mu <= TIKHONOV_MU or median is None:
        return 1.0
    curve = median[None, :].astype(np.float32)
    flows = [
        svd.deconvolve_filtered(
            curve, decomposition, svd.tikhonov_factors(decomposition.s, m), dt, device=device, chunk_size=1
        )[0]
        for m in (TIKHONOV_MU, mu)
    ]
    if not (flows[0][0] > 0 and flows[1][0] > 0):
        return 1.0
    return float(flows[0][0] / flows[1][0])


def snr_mu(snr: float) -> float:
    """Tikhonov's μ for a study of contrast-to-noise ``snr`` (TIKHONOV_SNR_GAIN / SNR, bounded)."""
    low, high = TIKHONOV_MU_RANGE
    if not snr > 0:
        return high
    return float(np.clip(TIKHONOV_SNR_GAIN / snr, low, high))


def _propagate_nan(result: DeconvolutionResult) -> DeconvolutionResult:
    """NaN in every per-voxel float output where the flow is not finite (non-finite samples)."""
    bad = ~np.isfinite(result.flow)
    if bad.any():
        for values in (result.tmax, result.mtt, result.delay, *result.extra.values()):
            if isinstance(values, np.ndarray) and values.dtype.kind == "f":
                values[bad] = np.nan
    return result
