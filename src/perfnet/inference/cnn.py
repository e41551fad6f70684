"""CNN inference: a series → perfusion maps (+ per-voxel uncertainty where the model gives one).

Slice-batched, any number of slices, any in-plane size (the U-Net pads to its stride), any frame
count and frame timing (the series is resampled to the model's time grid, see
:mod:`perfnet.inference.inputs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from perfnet import __version__
from perfnet.constants import CORE_PROBABILITY, MAP_LIMITS
from perfnet.errors import PerfnetInputError
from perfnet.inference import domain, enhancement, timescale
from perfnet.inference.consistency import SHIFT_S, consistency_flags, shift_consistency
from perfnet.inference.inputs import (
    ModelInput,
    bolus_rule_of,
    model_size,
    prepare_input,
    reflect_index,
    resize_slices,
)
from perfnet.inference.series import input_of
from perfnet.inference.targets import from_model
from perfnet.inference.weights import (
    bundled_networks,
    bundled_weights,
    load_weights,
    save_weights,
    weights_config,
)
from perfnet.io.types import PerfusionMaps, PerfusionSeries
from perfnet.models import network_spec

if TYPE_CHECKING:
    from perfnet.preprocess.shared import Preprocessed

Progress = Callable[[str, float], None]


def time_channel(grid: np.ndarray) -> torch.Tensor:
    """The frame-time input of the temporal network, scaled to about [0, 1]."""
    return torch.as_tensor(np.asarray(grid, dtype=np.float32) / 100.0)


def run_model(
    model: torch.nn.Module,
    config: dict[str, Any],
    x: torch.Tensor,
    grid: np.ndarray,
    bolus: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Standardised outputs (value, scale or None) for inputs x (B, T, H, W) already scaled."""
    return network_spec(config["model"]).forward(model, x, time_channel(grid).to(x.device), bolus)


def _has_core_head(model: Any) -> bool:
    """Whether a built network carries a core head (what inference runs, not its config record)."""
    return getattr(model, "core_head", None) is not None


def _network(
    model: torch.nn.Module,
    config: dict[str, Any],
    inp: ModelInput,
    shape: tuple[int, int, int],
    size: tuple[int, int],
    dev: torch.device,
    flips: bool,
    batch_slices: int,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The network's standardised outputs (maps, X, Y, Z) at the series' ``shape`` for a model input
    at the model's in-plane ``size``, the Laplace scales when the model gives them, and the core
    probability (X, Y, Z) when it has a core head (:class:`perfnet.models.unet.UNet`: read from the
    flip-averaged features and maps); slice-batched, averaged over the four in-plane flips if
    ``flips``."""
    scale_in = float(config["input_scale"])
    nx, ny, nz = shape
    values = np.zeros((len(config["maps"]), nx, ny, nz), dtype=np.float32)
    uncert: np.ndarray | None = None  # allocated when the model returns a scale (weights with one)
    core_head = _has_core_head(model)
    core = np.zeros((nx, ny, nz), dtype=np.float32) if core_head else None
    bolus = torch.from_numpy(inp.bolus / scale_in)[None].to(dev)
    if progress:
        progress("network", 0.0)
    with torch.inference_mode():
        for z0 in range(0, nz, batch_slices):
            z1 = min(nz, z0 + batch_slices)
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(inp.curves[:, :, z0:z1], (2, 3), (0, 1))))
            x = resize_slices((x / scale_in).to(dev), size)  # (B, T, X', Y') at the model's pixels
            patches = bolus.expand(z1 - z0, *bolus.shape[1:])
            views = [(), (-1,), (-2,), (-2, -1)] if flips else [()]
            value = scale = features = None
            for dims in views:
                xv = x.flip(dims) if dims else x
                if core_head:  # the U-Net's own pass, keeping its features for the core head
                    v, sc, f = model.predict_with_features(xv)
                    f = f.flip(dims) if dims else f
                    features = f if features is None else features + f
                else:
                    v, sc = run_model(model, config, xv, inp.grid, patches)
                v = v.flip(dims) if dims else v
                value = v if value is None else value + v
                if sc is not None:
                    sc = sc.flip(dims) if dims else sc
                    scale = sc if scale is None else scale + sc
            value = value / len(views)
            scale = None if scale is None else scale / len(views)
            if core is not None and features is not None:
                brain = torch.from_numpy(np.moveaxis(inp.brain[:, :, z0:z1], 2, 0).astype(np.float32))
                brain = resize_slices(brain[:, None].to(dev), size)[:, 0] > 0.5
                prob = model.core_probability(model.core_inputs(features / len(views), value, brain))
                prob = resize_slices(prob[:, None].float(), (nx, ny))[:, 0]
                core[:, :, z0:z1] = np.moveaxis(prob.cpu().numpy(), 0, -1)
            value = resize_slices(value.float(), (nx, ny))
            values[:, :, :, z0:z1] = np.moveaxis(value.cpu().numpy(), 0, -1)
            if scale is not None:
                if uncert is None:
                    uncert = np.zeros_like(values)
                scale = resize_slices(scale.float(), (nx, ny))
                uncert[:, :, :, z0:z1] = np.moveaxis(scale.cpu().numpy(), 0, -1)
            if progress:
                progress("network", z1 / nz)
    return values, uncert, core


def _physical(values: np.ndarray, name: str, config: dict[str, Any]) -> np.ndarray:
    """One map's standardised network output back in map units (before clipping)."""
    mean, sd = np.float32(config["target_mean"][name]), np.float32(config["target_sd"][name])
    return from_model(values * sd + mean, name, config.get("log_offsets", {}))


def _shifted_tmax(
    model: torch.nn.Module,
    config: dict[str, Any],
    inp: ModelInput,
    shape: tuple[int, int, int],
    size: tuple[int, int],
    dev: torch.device,
    batch_slices: int,
) -> dict[float, np.ndarray]:
    """Tmax predicted again from the model input delayed and advanced by
    :data:`~perfnet.inference.consistency.SHIFT_S` (the grid started that much earlier / later;
    reflect-padded at the ends, as the networks' shift augmentation pads; one view each), keyed by
    how many seconds later the grid starts."""
    i = config["maps"].index("tmax")
    lo, hi = MAP_LIMITS.get("tmax", (-np.inf, np.inf))
    frames = round(SHIFT_S / float(config["frame_interval"]))
    shifted: dict[float, np.ndarray] = {}
    for later in (-SHIFT_S, SHIFT_S):
        idx = reflect_index(inp.curves.shape[-1], -frames if later > 0 else frames)
        other = replace(inp, curves=inp.curves[..., idx], bolus=inp.bolus[idx])
        values, _, _ = _network(model, config, other, shape, size, dev, False, batch_slices)
        shifted[later] = np.clip(_physical(values[i], "tmax", config), lo, hi)
    return shifted


def _member_maps(
    model: torch.nn.Module,
    config: dict[str, Any],
    prepared: Preprocessed,
    flips: bool,
    batch_slices: int,
    dev: torch.device,
    progress: Progress | None,
    factor: float = 1.0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], ModelInput, tuple[int, int]]:
    """One network's maps and Laplace scales (map units; before masking) and its model input;
    ``factor`` > 1: read on the time axis compressed by it and mapped back
    (:mod:`perfnet.inference.timescale`; the model input is the compressed one's)."""
    series = prepared.series
    if progress:
        progress("model input", 0.0)
    read = timescale.compressed(prepared, factor) if factor != 1.0 else prepared
    inp: ModelInput = input_of(read, config)
    if progress:
        progress("model input", 1.0)
    nx, ny, nz = series.spatial_shape
    size = model_size((nx, ny), series.voxel_size[:2], config.get("pixel_mm"))  # = inp.curves' in-plane
    values, uncert, core = _network(
        model, config, inp, (nx, ny, nz), size, dev, flips, batch_slices, progress
    )
    maps: dict[str, np.ndarray] = {} if core is None else {CORE_PROBABILITY: np.clip(core, 0.0, 1.0)}
    scales: dict[str, np.ndarray] = {}
    log_offsets = config.get("log_offsets", {})
    for i, name in enumerate(config["maps"]):
        v = _physical(values[i], name, config)
        if uncert is not None:
            b = uncert[i] * np.float32(config["target_sd"][name])
            if name in log_offsets:  # a Laplace scale in log units → map units (delta method)
                b = b * (v + float(log_offsets[name]))
            scales[name] = timescale.restored(b, name, factor)
        if name == "ttp":  # the network's TTP is relative to the grid start
            v = v + inp.offset_s
        v = timescale.restored(v, name, factor)
        if name == "ttp":
            v = v + prepared.offset_s
        lo, hi = MAP_LIMITS.get(name, (-np.inf, np.inf))
        maps[name] = np.clip(v, lo, hi)
    return maps, scales, inp, size


class _Mixture:
    """Running sums of the members' maps and Laplace scales (float64), so that an ensemble holds
    three accumulators per map instead of every member's maps: the maps' mean, and the Laplace
    scale of the mixture, variance 2b² = the members' mean 2b_i² plus the spread of their means.
    One member: its own maps and scales, untouched."""

    def __init__(self) -> None:
        self.n = 0
        self.first: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        self.total: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}
        self.b2: dict[str, np.ndarray] | None = {}

    def add(self, maps: dict[str, np.ndarray], scales: dict[str, np.ndarray]) -> None:
        self.n += 1
        if self.n == 1:
            self.first = (maps, scales)
            return
        if self.n == 2:  # from now on, sums (the first member's maps folded in)
            assert self.first is not None
            first_maps, first_scales = self.first
            self.first = None
            self._fold(first_maps, first_scales)
        self._fold(maps, scales)

    def _fold(self, maps: dict[str, np.ndarray], scales: dict[str, np.ndarray]) -> None:
        for k, v in maps.items():
            x = v.astype(np.float64)
            self.total[k] = self.total[k] + x if k in self.total else x
            self.squares[k] = self.squares[k] + x * x if k in self.squares else x * x
        if self.b2 is not None and scales:
            for k, b in scales.items():
                x = b.astype(np.float64) ** 2
                self.b2[k] = self.b2[k] + x if k in self.b2 else x
        else:  # a member without scales: the mixture has none
            self.b2 = None

    def maps(self) -> dict[str, np.ndarray]:
        if self.first is not None:
            return self.first[0]
        return {k: (t / self.n).astype(np.float32) for k, t in self.total.items()}

    def scales(self) -> dict[str, np.ndarray]:
        if self.first is not None:
            return self.first[1]
        if not self.b2:
            return {}
        out = {}
        for k, b2 in self.b2.items():
            mean = self.total[k] / self.n
            spread = np.maximum(self.squares[k] / self.n - mean * mean, 0.0)
            out[k] = np.sqrt(b2 / self.n + spread / 2.0).astype(np.float32)
        return out


def _core_rule_of(config: dict[str, Any]) -> tuple[Any, ...]:
    """What of a weights' core calibration the core rule reads (members of an ensemble share it)."""
    calibration = config.get("core_calibration") or {}
    return tuple(calibration.get(k) for k in ("factor", "offset", "references", "cbv_weight"))


def _members(
    weights: str | Path | Sequence[str | Path] | None, modality: str, dev: torch.device
) -> list[tuple[Path, torch.nn.Module, dict[str, Any]]]:
    """The weights of a prediction: one file or an ensemble (every file of the same modality and
    maps, and the same core calibration: their maps are averaged and read with one rule)."""
    if weights is None:
        paths = [bundled_weights(modality)]
    elif isinstance(weights, str | Path):
        paths = [Path(weights)]
    else:
        paths = [Path(w) for w in weights]
        if not paths:
            raise PerfnetInputError("--weights", "no weights files given")
    members = []
    for path in paths:
        model, config = load_weights(path, dev)
        if config.get("modality") and config["modality"] != modality:
            raise PerfnetInputError(
                path, f"weights were trained on {config['modality']}, the series is {modality}"
            )
        members.append((path, model, config))
    first = members[0][2]
    headed = _has_core_head(members[0][1])
    for path, model, config in members[1:]:
        if config["maps"] != first["maps"]:
            raise PerfnetInputError(
                path, f"maps {config['maps']} differ from {members[0][0].name}'s {first['maps']}"
            )
        if _core_rule_of(config) != _core_rule_of(first):
            raise PerfnetInputError(
                path, f"core calibration differs from {members[0][0].name}'s: one rule reads the mean"
            )
        if _has_core_head(model) != headed:  # one core probability or none
            raise PerfnetInputError(path, f"a core head in {members[0][0].name} or this file, not both")
    return members


def route(prepared: Preprocessed, modality: str) -> tuple[Path, dict[str, Any] | None]:
    """The bundled network for a study: the primary one unless the study lies outside its training
    domain (its :data:`~perfnet.inference.domain.ROUTING` descriptors: a flag-only one, such as a
    bolus slower than any network trained on, is flagged, not routed); then the first specialist
    (:data:`perfnet.inference.weights.SPECIALISTS`, in order)
    whose domain holds it, else, where none does, the network whose domain it leaves on the fewest
    descriptors (ties to the earlier: the primary first), still flagged ``outside_training_domain``
    for what it leaves; with the reason when it is a specialist. A study inside the primary's
    domain only by its margin on a descriptor of its modality's
    :data:`~perfnet.inference.domain.ROUTED_WITHIN_MARGIN` (beyond what it trained on, not yet
    flagged) goes to the first specialist that trained on it
    (inside its envelope, no margin): a network that has seen such studies before one that has not
    (``benchmarks/truncation.py``: ``ct.pt`` on acquisitions ending 20–30 s after the arrival,
    docs/cnn.md "Routing by training domain")."""
    paths = bundled_networks(modality)
    if len(paths) == 1:
        return paths[0], None
    # what routes: a flag-only descriptor is judged where the chosen network's maps are flagged
    described = {k: v for k, v in domain.describe(prepared).items() if k in domain.ROUTING}
    primary = weights_config(paths[0]).get("domain")
    outside = domain.outside(described, primary)
    if not outside:
        within = domain.ROUTED_WITHIN_MARGIN.get(modality.upper(), frozenset())
        beyond = domain.outside(described, primary, margin=False, only=within)
        for path in paths[1:] if beyond else []:
            if not domain.outside(described, weights_config(path).get("domain"), margin=False):
                because = f"inside {paths[0].name}'s margin only: " + "; ".join(beyond)
                return path, {"weights": path.name, "instead_of": paths[0].name, "because": because}
        return paths[0], None
    fewest, chosen = len(outside), paths[0]
    for path in paths[1:]:
        left = len(domain.outside(described, weights_config(path).get("domain")))
        if left < fewest:
            fewest, chosen = left, path
        if not left:
            break
    if chosen == paths[0]:
        return paths[0], None
    because = "; ".join(outside)
    return chosen, {"weights": chosen.name, "instead_of": paths[0].name, "because": because}


def _read(
    members: list[tuple[Path, torch.nn.Module, dict[str, Any]]],
    prepared: Preprocessed,
    flips: bool,
    batch_slices: int,
    dev: torch.device,
    progress: Progress | None,
    factor: float,
    check: bool,
) -> tuple[_Mixture, dict[float, np.ndarray], ModelInput]:
    """The members' maps of ``prepared`` read on its time axis compressed by ``factor`` (1: as
    acquired): their mixture, the shift check's shifted Tmax summed over the members (``check``)
    and the first member's model input (brain mask and grid)."""
    shape = prepared.series.spatial_shape
    mixture = _Mixture()
    shifted: dict[float, np.ndarray] = {}
    inp: ModelInput | None = None
    for i, (_, model, cfg) in enumerate(members):  # one member's model input alive at a time
        member_maps, member_scales, member_inp, size = _member_maps(
            model, cfg, prepared, flips, batch_slices, dev, progress if i == 0 else None, factor
        )  # progress of the first member (the others take as long)
        mixture.add(member_maps, member_scales)
        if check:  # the shift check runs on the members' mean shifted Tmax
            _add_shifted(
                shifted, _shifted_tmax(model, cfg, member_inp, shape, size, dev, batch_slices), factor
            )
        if inp is None:
            inp = member_inp  # the first member's input: brain mask and grid
        del member_inp, member_maps, member_scales
    assert inp is not None
    return mixture, shifted, inp


def _add_shifted(shifted: dict[float, np.ndarray], member: dict[float, np.ndarray], factor: float) -> None:
    """One member's shifted Tmax (:func:`_shifted_tmax`), mapped back from a time axis compressed
    by ``factor``, added to the members' sums in ``shifted``."""
    for k, v in member.items():
        v = timescale.restored(v, "tmax", factor).astype(np.float64)
        shifted[k] = shifted[k] + v if k in shifted else v


def _shift_read(
    members: list[tuple[Path, torch.nn.Module, dict[str, Any]]],
    prepared: Preprocessed,
    first: ModelInput,
    batch_slices: int,
    dev: torch.device,
) -> dict[float, np.ndarray]:
    """The shift check's shifted Tmax of a reading as acquired that :func:`_read` made without it,
    summed over the members: the first member's model input ``first`` reused, the others' built
    again (:func:`_read` keeps one member's input alive at a time)."""
    series = prepared.series
    shifted: dict[float, np.ndarray] = {}
    for i, (_, model, cfg) in enumerate(members):
        inp = first if i == 0 else input_of(prepared, cfg)
        size = model_size(series.spatial_shape[:2], series.voxel_size[:2], cfg.get("pixel_mm"))
        _add_shifted(
            shifted, _shifted_tmax(model, cfg, inp, series.spatial_shape, size, dev, batch_slices), 1.0
        )
    return shifted


#: suffix of the progress steps of a gated study's second reading, so that a progress display
#: shows a second pass instead of the first one starting over
COMPRESSED_STEP = " (again, compressed time axis)"


def _relabelled(progress: Progress, suffix: str) -> Progress:
    """``progress`` with ``suffix`` appended to every step's name."""

    def report(step: str, fraction: float) -> None:
        progress(step + suffix, fraction)

    return report


def predict(
    series: PerfusionSeries,
    weights: str | Path | Sequence[str | Path] | None = None,
    *,
    device: str | None = None,
    brain: np.ndarray | None = None,
    batch_slices: int = 4,
    progress: Progress | None = None,
    flips: bool = True,
    skip_frames: int | None = None,
    prepared: Preprocessed | None = None,
    consistency: bool = True,
    time_scaling: bool | str | None = None,
) -> PerfusionMaps:
    """Perfusion maps of a series from a CNN (the bundled weights of its modality by default).

    ``flips``: average the outputs over the four in-plane flips (test-time augmentation; the
    networks were trained with flips, so each flip is an equally valid view of the slice).
    ``skip_frames``: non-steady-state leading frames, as in the conventional pipeline (None:
    detected and dropped; N: drop N; 0: keep all); TTP stays timed from the first acquired frame.
    ``prepared``: the shared preprocessing of ``series`` (:func:`perfnet.preprocess.shared.preprocess`);
    without it the series is preprocessed here without motion correction (non-steady-state frames,
    brain mask, bolus timing and the input QC of every method).
    ``consistency``: the shift-consistency self-check (:mod:`perfnet.inference.consistency`; two
    more passes without flips, with the time grid started 3 s earlier and later) and its
    ``cnn_inconsistent`` flag.
    ``time_scaling``: how a study whose bolus rises slower than the networks trained on (beyond
    their domain's margin) is read (:mod:`perfnet.inference.timescale`): ``"gated"`` (None, the
    default) reads it as acquired and, where that reading puts the healthy tissue's Tmax late,
    again on a time axis compressed into the trained rises, its maps mapped back (provenance
    ``time_scale_gate``: the gate's numbers; ``time_scale``: the compression, where applied);
    ``"always"`` (True) compresses every such study; ``"off"`` (False) reads it as acquired.
    ``weights``: one file, or several (an ensemble, e.g. the k fold models of one ``perfnet train``
    run, nnU-Net style): every map is the members' mean, its uncertainty the Laplace scale of their
    mixture (the members' scales and their spread), the shift check runs on the mean, and the
    study is outside the training domain when it is outside any member's."""
    from perfnet import qc
    from perfnet.preprocess.shared import preprocess

    started = time.perf_counter()
    if prepared is None:
        prepared = preprocess(series, skip_frames=skip_frames, motion_correction=False, brain_mask=brain)
    series = prepared.series
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    routed = None
    if weights is None:  # the bundled networks: the one whose training domain holds the study
        weights, routed = route(prepared, series.modality)
    members = _members(weights, series.modality, dev)
    path, _, config = members[0]
    maps = config["maps"]
    check = consistency and config.get("align_lead_s") is not None and "tmax" in maps
    described = domain.describe(prepared)
    # a bolus slower than the networks trained on: read on a compressed time axis (timescale)
    mode = timescale.mode_of(time_scaling)
    scaled = (
        timescale.time_scale(described, [cfg.get("domain") for _, _, cfg in members])
        if mode != "off"
        else None
    )
    factor = float(scaled["factor"]) if scaled and mode == "always" else 1.0
    gated = bool(scaled) and mode == "gated"
    # a gated study's shift check waits for the gate: it runs on the reading that is kept
    mixture, shifted, inp = _read(
        members, prepared, flips, batch_slices, dev, progress, factor, check and not gated
    )
    mean = mixture.maps()
    gate = None
    if gated:  # compressed only where the reading as acquired is late
        median = timescale.healthy_median(mean.get("tmax", np.zeros(0)), inp.brain)
        late = timescale.late_read(median)
        gate = {
            "healthy_tmax_median_s": None if median is None else round(median, 3),
            "late_above_s": timescale.LATE_READ_S,
            "compressed": late,
            "factor": scaled["factor"],
        }
        if late:
            del mixture, mean, shifted, inp
            factor = float(scaled["factor"])
            again = None if progress is None else _relabelled(progress, COMPRESSED_STEP)
            mixture, shifted, inp = _read(members, prepared, flips, batch_slices, dev, again, factor, check)
            mean = mixture.maps()
        elif check:
            shifted = _shift_read(members, prepared, inp, batch_slices, dev)
    scaled = scaled | {"mode": mode} if scaled and factor != 1.0 else None
    scales = mixture.scales()
    out: dict[str, np.ndarray] = {}
    for name in maps:
        out[name] = np.where(inp.brain, mean[name], 0.0).astype(np.float32)
        if name in scales:
            out[f"{name}_uncertainty"] = np.where(inp.brain, scales[name], 0.0).astype(np.float32)
    if CORE_PROBABILITY in mean:  # the members' mean probability (all have a core head or none)
        out[CORE_PROBABILITY] = np.where(inp.brain, mean[CORE_PROBABILITY], 0.0).astype(np.float32)
    checked = None
    if check:
        from perfnet.lesions import voxel_volume_ml

        # keyed by the study's seconds: a compressed axis (timescale) shifted its grid by 3 s × s
        averaged = {k * factor: v / len(members) for k, v in shifted.items()}
        checked = shift_consistency(
            out["tmax"], averaged, inp.brain, voxel_volume_ml(series.affine), SHIFT_S * factor
        )
    flags = list(prepared.qc_flags)
    for _, _, cfg in members:  # outside any member's training domain: flagged once
        flags += [f for f in domain.domain_flags(described, cfg.get("domain")) if f not in flags]
    flags += consistency_flags(checked)
    unenhanced = None
    if series.modality in enhancement.MODALITIES and "tmax" in out:
        from perfnet.lesions import voxel_volume_ml
        from perfnet.preprocess.mask import csf_mask

        tissue = inp.brain & ~csf_mask(series, inp.brain)
        relative = enhancement.peak_enhancement(series, prepared.bolus.baseline_end, tissue)
        voxel_ml = voxel_volume_ml(series.affine)
        unenhanced = enhancement.unenhanced_normal(relative, out["tmax"], tissue, voxel_ml)
        flags += enhancement.unenhanced_flags(unenhanced)
    provenance = {
        "perfnet_version": __version__,
        "method": "cnn",
        "weights": str(path) if len(members) == 1 else [str(m[0]) for m in members],
        # more than one weights file: the maps are the members' mean (predict's docstring)
        **({"ensemble": {"members": len(members), "combine": "mean"}} if len(members) > 1 else {}),
        # a bundled specialist took the study: outside the primary network's training domain
        **({"routed": routed} if routed else {}),
        "model": config["model"],
        "model_kwargs": config["model_kwargs"],
        "maps": maps,
        "time_grid": {
            "frame_interval_s": config["frame_interval"],
            "frames": config["frames"],
            "offset_s": round(inp.offset_s, 3),
        },
        "model_pixel_mm": config.get("pixel_mm"),
        "bolus_patch_centre": list(inp.bolus_centre),
        "bolus_rule": bolus_rule_of(config),
        "training": config.get("training", {}),
        # the study against the network's training domain (perfnet.inference.domain)
        "training_domain": config.get("domain"),
        "study_descriptors": described,
        # the Tmax > 6 s region with the time grid started 3 s earlier / later (perfnet.inference.consistency)
        "shift_consistency": checked,
        # barely enhancing tissue the network reads as normal (perfnet.inference.enhancement)
        "unenhanced_normal": unenhanced,
        # the core threshold's calibration for this model's CBF (perfnet.lesions applies it)
        **(
            {"core_calibration": timescale.calibration(config["core_calibration"], factor)}
            if config.get("core_calibration")
            else {}
        ),
        # the time axis the network read the study on, where compressed (timescale)
        **({"time_scale": scaled} if scaled else {}),
        # a flagged slow bolus under the gated mode: the reading as acquired and the gate's verdict
        **({"time_scale_gate": gate} if gate else {}),
        # the core from the network's core head (perfnet.lesions reads core_probability.nii.gz)
        **({"core_head": config["core_head"]} if config.get("core_head") else {}),
        "device": str(dev),
        "test_time_flips": bool(flips),
        "seconds": prepared.seconds | {"total": round(time.perf_counter() - started, 3)},
        **prepared.provenance(),
        "qc_flags": flags,
        "qc": qc.summary(flags, prepared.qc_measures),
        "verdict": qc.verdict(flags),
        "qc_verdict": qc.verdict(flags),
        "reliable": qc.reliable(flags),
    }
    return PerfusionMaps(
        maps=out, affine=series.affine, brain_mask=inp.brain, method="cnn", provenance=provenance
    )


def analyze_cnn(
    series: PerfusionSeries,
    weights: str | Path | Sequence[str | Path] | None = None,
    *,
    motion_correction: bool = True,
    device: str | None = None,
    brain: np.ndarray | None = None,
    progress: Progress | None = None,
    skip_frames: int | None = None,
    prepared: Preprocessed | None = None,
    time_scaling: bool | str | None = None,
) -> tuple[PerfusionMaps, PerfusionSeries]:
    """`analyze --method cnn`: the shared preprocessing (:func:`perfnet.preprocess.shared.preprocess`:
    non-steady-state leading frames dropped, rigid motion correction with unalignable frames
    replaced in time, brain mask, bolus timing, input QC — the same as every method's, flags
    included), then the model (``time_scaling``: :func:`predict`'s). Returns the maps and the
    series the model saw."""
    from perfnet.preprocess.shared import preprocess

    if prepared is None:
        prepared = preprocess(
            series,
            skip_frames=skip_frames,
            motion_correction=motion_correction,
            brain_mask=brain,
            progress=progress,
        )
    maps = predict(
        prepared.series,
        weights,
        device=device,
        progress=progress,
        prepared=prepared,
        time_scaling=time_scaling,
    )
    return maps, prepared.series


def run_method(
    series: PerfusionSeries,
    *,
    weights: str | Path | Sequence[str | Path] | None = None,
    motion_correction: bool = True,
    device: str | None = None,
    brain_mask: np.ndarray | None = None,
    progress: Progress | None = None,
    skip_frames: int | None = None,
    prepared: Preprocessed | None = None,
    time_scaling: bool | str | None = None,
    **_: Any,
) -> tuple[PerfusionMaps, PerfusionSeries, None]:
    """The ``cnn`` method of :mod:`perfnet.registry`: maps, the series the model saw, no AIF."""
    maps, seen = analyze_cnn(
        series,
        weights,
        motion_correction=motion_correction,
        device=device,
        brain=brain_mask,
        progress=progress,
        skip_frames=skip_frames,
        prepared=prepared,
        time_scaling=time_scaling,
    )
    return maps, seen, None


__all__ = ["analyze_cnn", "load_weights", "predict", "prepare_input", "run_method", "save_weights"]
