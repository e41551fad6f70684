"""The networks' input: a series → concentration on the model's fixed time grid, brain mask, and
the arterial bolus patch (Hess et al.'s bolus-characterisation input). Shared by training and
inference so that both see exactly the same preparation.

CT: HU − baseline; MR: ΔR2* = −ln(S/S₀)/TE (:mod:`perfnet.preprocess.concentration`), baseline from
the detected bolus arrival. The curves are resampled linearly onto ``t_k = k·Δ`` (k = 0 … frames−1,
from the first frame, or, with ``align_lead_s``, from ``align_lead_s`` before the detected bolus
arrival, so that every study's bolus enters at about the same input channel); a grid longer than
the acquisition is reflect-padded (time mirrored at the last frame), as Hess et al. padded shifted
series. No AIF and no deconvolution: the networks are model-free (bolus arrival is read from the
whole-brain curve, as for the baseline). TTP targets and outputs are relative to the grid start
``offset_s``; Tmax (relative to the arterial arrival) is unaffected.

``pixel_mm`` resamples slices in-plane to the model's pixel size (area averaging when shrinking,
bilinear when enlarging) so that one network serves 64² … 512² matrices; maps come back to the
series' grid bilinearly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from perfnet.io.types import PerfusionSeries
from perfnet.preprocess.bolus import BolusTiming
from perfnet.preprocess.timegrid import resample_curves

#: Default time grid of the networks: 1 s frames, 80 frames (TTP/Tmax up to ~60 s are seen whole).
FRAME_INTERVAL_S = 1.0
FRAMES = 80
#: Bolus patch: slices × pixels × pixels around the strongest early-enhancing voxel.
PATCH = (3, 9, 9)


@dataclass
class ModelInput:
    """Concentration on the model grid and what comes with it.

    Attributes:
        curves: (X', Y', Z, T) float32 concentration on the grid ``grid`` (X', Y': model pixels).
        grid: (T,) s from the first frame.
        brain: (X, Y, Z) bool brain mask on the series' grid.
        bolus: (T, D, P, P) float32 concentration patch at the large arteries.
        bolus_centre: (3,) voxel index of the patch centre.
        offset_s: start of the grid after the first frame (s); 0 without alignment.
    """

    curves: np.ndarray
    grid: np.ndarray
    brain: np.ndarray
    bolus: np.ndarray
    bolus_centre: tuple[int, int, int]
    offset_s: float = 0.0


def model_size(shape_xy: tuple[int, int], voxel_xy: tuple[float, float], pixel_mm: float | None) -> tuple:
    """In-plane size of a slice at the model's pixel size (unchanged when ``pixel_mm`` is None)."""
    if not pixel_mm:
        return tuple(int(n) for n in shape_xy)
    return tuple(
        max(8, round(n * float(v) / float(pixel_mm))) for n, v in zip(shape_xy, voxel_xy, strict=True)
    )


def resize_slices(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, X, Y) → (N, C, *size): area averaging when shrinking, bilinear otherwise."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] <= x.shape[-2] and size[1] <= x.shape[-1]
    if shrink:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def model_grid(frame_interval: float = FRAME_INTERVAL_S, frames: int = FRAMES) -> np.ndarray:
    return np.arange(int(frames)) * float(frame_interval)


def reflect_times(grid: np.ndarray, duration: float) -> np.ndarray:
    """Grid times past ``duration`` mirrored back into [0, duration] (reflect padding)."""
    if duration <= 0:
        return np.zeros_like(grid)
    period = 2.0 * duration
    folded = np.mod(grid, period)
    return np.where(folded > duration, period - folded, folded)


#: How the bolus patch's centre is chosen (weights record theirs as ``bolus_rule``; weights without
#: one were trained with ``early-peak``): ``early-peak``, the brain voxel whose curve peaks highest
#: in the first half of the grid -- on DSC phantoms of both styles that is mostly the venous sinus
#: (a vessel full of blood, where an artery is a partially filled voxel), so the reference the
#: network times the tissue against is the venous outflow in some studies and an artery in others;
#: ``arterial``, the highest peak among the strongly enhancing brain voxels that arrive first (see
#: :func:`_arterial_centre`; a slab without an imaged artery gets the earliest strongly enhancing
#: tissue).
BOLUS_RULES = ("early-peak", "arterial")
#: The rule of weights that record none (every network trained before the rules existed).
LEGACY_BOLUS_RULE = "early-peak"
#: Voxels per chunk when the arterial rule scans the brain (bounded memory on 512² × 32 studies).
_CHUNK = 262_144
#: The arterial rule: candidates are the brain voxels whose peak is in the top ``STRONG`` fraction
#: and that reach half their peak at least ``LEAD_S`` before the median candidate (the tissue; in
#: the phantoms of both styles arteries lead it by 3-9 s, the sinus by at most ~1.6 s, most often
#: it trails), but no earlier than ``ONSET_MARGIN_S`` before the brain's bolus onset (a curve rising
#: before the bolus reaches the brain is an artefact: a moving edge, a spike); of those the highest
#: peak. Without such a voxel (no artery imaged): the earliest ``EARLIEST`` fraction instead.
STRONG, LEAD_S, EARLIEST, ONSET_MARGIN_S = 0.10, 2.5, 0.01, 2.0


def bolus_rule_of(config: dict) -> str:
    """The bolus rule of weights with ``config`` (:data:`LEGACY_BOLUS_RULE` when they record none)."""
    return str(config.get("bolus_rule", LEGACY_BOLUS_RULE))


def half_peak_arrival(smooth: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(N, T) curves → (N,) time at which each first reaches half its peak before the peak
    (linear between frames)."""
    peak_index = np.argmax(smooth, axis=1)
    level = 0.5 * smooth[np.arange(smooth.shape[0]), peak_index]
    above = (smooth >= level[:, None]) & (np.arange(smooth.shape[1])[None, :] <= peak_index[:, None])
    j = np.argmax(above, axis=1)
    prev = np.maximum(j - 1, 0)
    rows = np.arange(smooth.shape[0])
    a, b = smooth[rows, prev], smooth[rows, j]
    w = np.clip(np.where(b > a, (level - a) / np.where(b > a, b - a, 1.0), 0.0), 0.0, 1.0)
    return np.where(j > 0, times[prev] + w * (times[j] - times[prev]), times[j])


def _arterial_centre(
    conc: np.ndarray, times: np.ndarray, sel: np.ndarray, brain: np.ndarray, onset_s: float
) -> int:
    """Flat index of the ``arterial`` rule's centre (:data:`BOLUS_RULES`, :data:`STRONG`): peaks and
    half-peak arrivals of the 3-frame running mean (a single-frame spike cannot win) over the
    frames ``sel``. Arteries arrive seconds before the tissue and the sinus; the sinus peaks
    higher, which is why the earliest arrivals are taken first and the highest peak among them."""
    flat = conc.reshape(-1, conc.shape[3])
    voxels = np.flatnonzero(brain.ravel())
    frames = np.flatnonzero(sel)
    if voxels.size == 0 or frames.size < 3:
        return int(voxels[0]) if voxels.size else 0
    mid = times[frames][1:-1]  # the time of each 3-frame mean: its middle frame's
    peak = np.empty(voxels.size, dtype=np.float32)
    arrival = np.empty(voxels.size, dtype=np.float64)
    for start in range(0, voxels.size, _CHUNK):
        c = np.nan_to_num(
            flat[np.ix_(voxels[start : start + _CHUNK], frames)], nan=0.0, posinf=0.0, neginf=0.0
        )
        smooth = (c[:, :-2] + c[:, 1:-1] + c[:, 2:]) / 3.0
        peak[start : start + _CHUNK] = smooth.max(axis=1)
        arrival[start : start + _CHUNK] = half_peak_arrival(smooth, mid)
    strong = (peak >= np.quantile(peak, 1.0 - STRONG)) & (arrival >= onset_s - ONSET_MARGIN_S)
    if not strong.any():
        return int(voxels[int(np.argmax(peak))])
    first = strong & (arrival <= np.median(arrival[strong]) - LEAD_S)
    if not first.any():
        first = strong & (arrival <= np.quantile(arrival[strong], EARLIEST))
    return int(voxels[int(np.argmax(np.where(first, peak, -np.inf)))])


def bolus_patch(
    conc: np.ndarray,
    times: np.ndarray,
    sample_at: np.ndarray,
    brain: np.ndarray,
    size: tuple[int, int, int] = PATCH,
    rule: str = LEGACY_BOLUS_RULE,
    onset_s: float = 0.0,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The (T, D, P, P) patch of the native concentration (X, Y, Z, T_native) at ``times``, centred
    on the brain voxel that ``rule`` picks (:data:`BOLUS_RULES`; ``onset_s``: the brain's bolus
    onset on the clock of ``times``, for ``arterial``), resampled onto ``sample_at`` and
    edge-padded at the volume's borders. ``exclude`` (bool X, Y, Z): voxels that may not be the
    centre, as the AIF search excludes them (:func:`perfnet.conventional.aif.arterial_input`):
    those motion correction filled from outside the slab in some frame, whose curve is the edge of
    the moving head and rises and falls like no vessel (the MR motion nuisance, 6 mm slices: the
    centre on such a voxel of the first slice, the temporal network's Tmax ≈ 0.6 s in a lesion of
    8.5 s; docs/cnn.md "The bolus patch under motion"). Where every brain voxel is excluded, none is."""
    if rule not in BOLUS_RULES:
        raise ValueError(f"unknown bolus rule {rule!r} (one of {', '.join(BOLUS_RULES)})")
    if exclude is not None and (brain & ~exclude).any():
        brain = brain & ~exclude
    first = sample_at[: max(2, sample_at.size // 2)] if rule == "early-peak" else sample_at
    sel = (times >= first.min() - 1e-6) & (times <= first.max() + 1e-6)
    if not sel.any():
        sel[int(np.argmin(np.abs(times - first.min())))] = True
    if rule == "early-peak":
        early = np.where(brain, conc[..., sel].max(axis=3), -np.inf)
        centre = tuple(int(c) for c in np.unravel_index(int(np.argmax(early)), early.shape))
    else:
        flat_centre = _arterial_centre(conc, times, sel, brain, onset_s)
        centre = tuple(int(c) for c in np.unravel_index(flat_centre, brain.shape))
    d, p, _ = size
    index = [
        np.clip(np.arange(c - n // 2, c - n // 2 + n), 0, dim - 1)
        for c, n, dim in zip(centre, (p, p, d), conc.shape[:3], strict=True)
    ]
    window = conc[np.ix_(*index)]  # (P, P, D, T_native)
    on_grid = resample_curves(window.reshape(-1, window.shape[3]), times, sample_at)
    patch = np.nan_to_num(on_grid.reshape(p, p, d, -1), nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(np.transpose(patch, (3, 2, 0, 1)), dtype=np.float32), centre


def _to_model_pixels(conc: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(X, Y, Z, T) → (X', Y', Z, T) in-plane resampling, a few slices at a time (bounded memory).
    Area averaging and linear time interpolation commute, so resampling in space before time gives
    the same curves as after, at a fraction of the cost on fine matrices."""
    if tuple(conc.shape[:2]) == tuple(size):
        return conc
    out = np.empty((*size, conc.shape[2], conc.shape[3]), dtype=np.float32)
    for z in range(conc.shape[2]):
        x = torch.from_numpy(np.ascontiguousarray(conc[:, :, z].transpose(2, 0, 1)))[None]  # (1, T, X, Y)
        out[:, :, z] = resize_slices(x, size)[0].numpy().transpose(1, 2, 0)
    return out


def prepare_input(
    series: PerfusionSeries,
    frame_interval: float = FRAME_INTERVAL_S,
    frames: int = FRAMES,
    brain: np.ndarray | None = None,
    align_lead_s: float | None = None,
    pixel_mm: float | None = None,
    bolus: BolusTiming | None = None,
    bolus_rule: str = LEGACY_BOLUS_RULE,
    exclude: np.ndarray | None = None,
) -> ModelInput:
    """Concentration on the model's time grid and, with ``pixel_mm``, its pixel size (see the module
    docstring). ``brain`` and the bolus patch stay on the series' own grid. ``bolus``: the bolus
    timing of the shared preprocessing (detected here on ``brain`` when None); ``bolus_rule``: how
    the bolus patch is placed (:data:`BOLUS_RULES`); ``exclude``: voxels its centre may not be on
    (:func:`bolus_patch`; the shared preprocessing's ``outside``)."""
    from perfnet.preprocess import brain_mask, detect_bolus, to_concentration

    mask = brain_mask(series) if brain is None else np.asarray(brain, dtype=bool)
    if mask.shape != series.spatial_shape:
        raise ValueError(f"brain mask {mask.shape} does not match the series grid {series.spatial_shape}")
    if bolus is None:
        bolus = detect_bolus(series.data, series.times, mask, series.modality, series.voxel_size)
    conc = to_concentration(series.data, bolus.baseline_end, series.modality, series.echo_time)
    times = series.times - series.times[0]
    grid = model_grid(frame_interval, frames)
    offset = 0.0
    if align_lead_s is not None:
        offset = float(np.clip(bolus.arrival_s - series.times[0] - align_lead_s, 0.0, times[-1]))
    sample_at = reflect_times(grid + offset, float(times[-1]))
    onset = bolus.arrival_s - float(series.times[0])
    patch, centre = bolus_patch(conc, times, sample_at, mask, rule=bolus_rule, onset_s=onset, exclude=exclude)
    conc = _to_model_pixels(conc, model_size(series.spatial_shape[:2], series.voxel_size[:2], pixel_mm))
    shape = conc.shape[:3]
    flat = conc.reshape(-1, conc.shape[3])
    on_grid = np.empty((flat.shape[0], grid.size), dtype=np.float32)
    for start in range(0, flat.shape[0], 262_144):  # bounded memory on 512² × 32 studies
        on_grid[start : start + 262_144] = resample_curves(flat[start : start + 262_144], times, sample_at)
    del conc, flat
    curves = np.nan_to_num(on_grid, copy=False, nan=0.0, posinf=0.0, neginf=0.0).reshape(*shape, grid.size)
    return ModelInput(curves=curves, grid=grid, brain=mask, bolus=patch, bolus_centre=centre, offset_s=offset)


def reflect_index(n: int, shift: int) -> np.ndarray:
    """Source frame of each output frame when a series of ``n`` frames is delayed by ``shift``
    frames (advanced when negative), reflect-padding at both ends."""
    idx = np.arange(n) - shift
    period = 2 * (n - 1) if n > 1 else 1
    idx = np.mod(idx, period)
    return np.where(idx > n - 1, period - idx, idx)
