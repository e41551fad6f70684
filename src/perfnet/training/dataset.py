"""Slice dataset with the augmentations of the two papers, each sample's random draw logged.

Augmentations (training only; parameters drawn first from ``default_rng([seed, epoch, index])``,
so a run is reproducible and every draw can be written out):

- temporal shift of −5 … +30 frames with reflect padding (Hess et al. 2018); TTP (measured from
  the first frame) moves with it, Tmax (relative to the arterial input) does not;
- left–right and up–down flips, an in-plane rotation of ±10°;
- added Gaussian noise (another dose / SNR level), with probability ½, SD up to half the input scale;
- frame thinning (Gava's fewer-frames motivation): keep every k-th grid frame (k drawn from
  ``thin``, random phase) and interpolate linearly between them, as inference does with a series
  acquired at k times the interval;
- regional delay (``regional_delay`` = (lo, hi) frames; off by default): with probability ½ a
  smooth region of the slice (a Gaussian bump, random centre and width) is delayed by d frames, d
  drawn from the non-zero integers in [lo, hi] (negative: advanced), whole frames so the noise keeps
  its texture; its Tmax and TTP targets move with it while CBF, CBV and MTT do not: C(t) =
  CBF·(AIF ⊗ R)(t − δ), a delay alone changes no flow. An advance stops where a pixel's Tmax would
  fall below zero (no tissue fills before its artery), so it moves delayed tissue (lesions)
  earlier and leaves healthy tissue nearly in place. Phantom lesions tie a long delay to a low
  flow, and networks trained on them read a core's flow partly by its delay
  (benchmarks/candidate_core.py ``--set delay``); this shows them cores at short delays and
  delayed tissue at normal flow, on every slice of every study.
- truncated acquisition (``truncate`` = (lo, hi) grid frames; off by default): with probability
  ½ the series is cut after grid frame c, c drawn from [lo, hi], and reflect-padded there, as
  inference pads an acquisition that ends early (:func:`perfnet.inference.inputs.reflect_times`);
  the targets stay the truth, so tissue whose bolus peaks after the cut is still asked for its
  true Tmax and flow (a short acquisition cuts a delayed lesion's curve on its rise, and a network
  that never saw one reads the mirrored rise as an early, normal bolus).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from perfnet.inference.inputs import reflect_index, reflect_times
from perfnet.inference.targets import to_model
from perfnet.training.data import StudySlices


@dataclass
class Normalisation:
    """Input scale and per-map target standardisation, in the network's domain (``log_offsets``:
    the maps regressed as log(value + offset), see :mod:`perfnet.inference.targets`)."""

    input_scale: float
    target_mean: dict[str, float]
    target_sd: dict[str, float]
    log_offsets: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, studies: list[StudySlices], maps: list[str], log_offsets: dict[str, float] | None = None
    ) -> Normalisation:
        """From studies in memory (see :meth:`from_moments`)."""
        from perfnet.training.prepare import study_moments

        log_offsets = dict(log_offsets or {})
        parts = [study_moments(s.inputs, s.targets, s.brain, maps, log_offsets) for s in studies]
        return cls.from_moments(parts, maps, log_offsets)

    @classmethod
    def from_moments(
        cls, parts: list[dict[str, list[float]]], maps: list[str], log_offsets: dict[str, float] | None = None
    ) -> Normalisation:
        """From per-study count, sum and sum of squares
        (:func:`perfnet.training.prepare.study_moments`): the input's SD (every 7th brain value of
        each study) and each map's mean and SD in the network's domain over the studies' brain
        voxels (sample SD, as ``torch.std``)."""

        def mean_sd(name: str) -> tuple[float, float, float]:
            n, s1, s2 = (sum(p[name][i] for p in parts) for i in range(3))
            mean = s1 / n if n else 0.0
            var = max(s2 - s1 * mean, 0.0) / (n - 1) if n > 1 else 0.0
            return n, mean, math.sqrt(var)

        n, _, sd = mean_sd("input")
        scale = max(sd, 1e-6) if n > 1 else 1.0
        mean, sds = {}, {}
        for m in maps:
            n, mean[m], sd = mean_sd(m)
            sds[m] = max(sd, 1e-6) if n > 1 else 1.0
        return cls(scale, mean, sds, dict(log_offsets or {}))

    def standardise(self, y: torch.Tensor, maps: list[str]) -> torch.Tensor:
        """Targets (M, …) in map units → standardised network domain."""
        out = [
            (to_model(y[i], m, self.log_offsets) - self.target_mean[m]) / self.target_sd[m]
            for i, m in enumerate(maps)
        ]
        return torch.stack(out)


@dataclass
class Augmentation:
    shift: tuple[int, int] = (-5, 30)
    flips: bool = True
    rotation_deg: float = 10.0
    noise: float = 0.5  # max added noise SD, fraction of the input scale
    enabled: bool = True
    thin: tuple[int, ...] = (1,)  # frame-thinning factors, drawn with equal probability
    #: how a shifted series is padded: "reflect" (time mirrored at the ends, Hess et al.) or "edge"
    #: (the first / last frame repeated). With the grid started 6 s before the arrival, a delay of
    #: more than 6 frames mirrors the bolus itself into the padded start under "reflect": the
    #: sample then holds a time-reversed bolus before the real one (2/3 of the draws of the default
    #: shift range; 2 in 12, and only the rise's first frames, at the bundled recipes' -3..8);
    #: "edge" pads with baseline.
    shift_pad: str = "reflect"
    #: regional delays (lo, hi) in frames ((0, 0): off); see the module docstring
    regional_delay: tuple[int, int] = (0, 0)
    #: truncated acquisitions: cut after a grid frame drawn from (lo, hi) ((0, 0): off)
    truncate: tuple[int, int] = (0, 0)


#: The prepared grid starts ``align_lead`` (6 s) before the detected bolus arrival: its first 4 s
#: are baseline, and a regionally delayed curve's first frames are filled from them in turn (their
#: own noise, no repeated frame and no part of the bolus); an advanced curve's last frames likewise
#: from the grid's last 4 s (the slow washout).
BASELINE_S = 4.0


class SlicedStudy(Protocol):
    """What the dataset reads of a study: :class:`~perfnet.training.prepare.PreparedStudy` (on
    disk, one slice at a time) or :class:`~perfnet.training.data.StudySlices` (in memory)."""

    name: str

    @property
    def slices(self) -> int: ...

    def slice(self, z: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def read_bolus(self) -> torch.Tensor: ...


@dataclass
class SliceDataset(Dataset):
    """Slices of studies → dict(x (T,H,W), y (M,H,W), mask (H,W), bolus (T,D,P,P), count),
    standardised.

    The resolution follows the sample's epoch (so DataLoader worker processes, which keep their
    own copy of the dataset, need no message from the main process): epochs before
    ``pretrain_epochs`` shrink slices to ``pretrain_size``² (Gava's pre-training), later ones
    resize to ``size``² (None: native) and take a random ``crop``² window (None: whole slices,
    validation at batch size 1). Index −1 is a padding sample (``count`` 0, empty mask) that the
    validation shards use to run equal numbers of steps on every rank.
    """

    studies: Sequence[SlicedStudy]
    maps: list[str]
    norm: Normalisation
    frame_interval: float
    size: int | None = None
    crop: int | None = None
    augment: Augmentation = field(default_factory=lambda: Augmentation(enabled=False))
    seed: int = 0
    epoch: int = 0
    pretrain_epochs: int = 0
    pretrain_size: int | None = None

    def __post_init__(self) -> None:
        self.index = [(i, z) for i, s in enumerate(self.studies) for z in range(s.slices)]

    def __len__(self) -> int:
        return len(self.index)

    def stage(self, epoch: int) -> tuple[int | None, int | None]:
        """(resize, crop) of samples drawn in ``epoch``."""
        if epoch < self.pretrain_epochs:
            return self.pretrain_size, None
        return self.size, self.crop

    def draw(self, item: int, epoch: int | None = None) -> dict[str, Any]:
        """The augmentation of sample ``item`` in ``epoch`` (default: the current one)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, item])
        a = self.augment
        p = {
            "shift": int(rng.integers(a.shift[0], a.shift[1] + 1)),
            "flip_x": bool(a.flips and rng.uniform() < 0.5),
            "flip_y": bool(a.flips and rng.uniform() < 0.5),
            "angle_deg": float(rng.uniform(-a.rotation_deg, a.rotation_deg)),
            "noise": float(rng.uniform(0, a.noise)) if rng.uniform() < 0.5 else 0.0,
            "crop": (float(rng.uniform()), float(rng.uniform())),
            "noise_seed": int(rng.integers(2**31)),
            "thin": int(rng.choice(a.thin)) if len(a.thin) > 1 else int(a.thin[0]),
            "thin_phase": float(rng.uniform()),
        }
        delays = [v for v in range(a.regional_delay[0], a.regional_delay[1] + 1) if v]
        if delays:  # drawn last and only when on: other runs' draws stay as they were
            p["delay_frames"] = int(delays[rng.integers(len(delays))]) if rng.uniform() < 0.5 else 0
            p["delay_centre"] = (float(rng.uniform()), float(rng.uniform()))
            p["delay_width"] = float(rng.uniform(0.08, 0.3))  # Gaussian SD, fraction of the slice
        if a.truncate[1] > 0:  # drawn after the delays, and only when on
            p["cut"] = int(rng.integers(a.truncate[0], a.truncate[1] + 1)) if rng.uniform() < 0.5 else 0
        return p

    def log_row(self, item: int, epoch: int) -> dict[str, Any]:
        """augmentations.csv's row of sample ``item`` in ``epoch`` (drawn again from its seed in
        the main process: the draw in a loader worker is the same and needs no reporting back)."""
        i, z = self.index[item]
        return {"epoch": epoch, "index": item, "study": self.studies[i].name, "slice": z} | self.draw(
            item, epoch
        )

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """A sample by index, or by ``(epoch, index)`` (what
        :class:`~perfnet.training.sampler.GlobalBatchSampler` yields)."""
        epoch = self.epoch
        if isinstance(item, tuple | list):
            epoch, item = int(item[0]), int(item[1])
        padding = item == -1
        i, z = self.index[0 if padding else item]
        s = self.studies[i]
        x16, y, brain = s.slice(z)
        x = x16.float()  # (T, X, Y)
        mask = torch.zeros(brain.shape) if padding else brain.float()
        bolus = s.read_bolus()
        size, crop = self.stage(epoch)
        p = self.draw(item, epoch) if self.augment.enabled and not padding else None
        if p is not None:
            if p.get("delay_frames"):
                x, y = regional_delay(x, y, mask, p, self.maps, self.frame_interval)
            if p.get("cut"):  # before the shift: the cut is in acquisition time
                idx = torch.from_numpy(cut_index(x.shape[0], p["cut"]))
                x, bolus = x[idx], bolus[idx]
            if p["shift"]:
                pad = edge_index if self.augment.shift_pad == "edge" else reflect_index
                idx = torch.from_numpy(pad(x.shape[0], p["shift"]))
                x, bolus = x[idx], bolus[idx]
                if "ttp" in self.maps:
                    k = self.maps.index("ttp")
                    y[k] = torch.where(mask > 0, y[k] + p["shift"] * self.frame_interval, y[k])
            if p["thin"] > 1:
                x = thin_frames(x, p["thin"], p["thin_phase"])
                bolus = thin_frames(bolus, p["thin"], p["thin_phase"])
        if size is not None and tuple(x.shape[1:]) != (size, size):
            x = F.interpolate(x[None], size=(size, size), mode="area")[0]
            y = F.interpolate(y[None], size=(size, size), mode="area")[0]
            mask = (F.interpolate(mask[None, None], size=(size, size), mode="area")[0, 0] > 0.5).float()
        if p is not None:
            dims = [d for d, f in ((1, p["flip_x"]), (2, p["flip_y"])) if f]
            if dims:
                x, y, mask = x.flip(dims), y.flip(dims), mask.flip([d - 1 for d in dims])
            if p["angle_deg"]:
                x, y, mask = _rotate(x, y, mask, p["angle_deg"])
            if p["noise"] > 0:
                g = torch.Generator().manual_seed(p["noise_seed"])
                x = x + torch.randn(x.shape, generator=g) * (p["noise"] * self.norm.input_scale)
        if crop is not None:
            x, y, mask = _crop(x, y, mask, crop, p["crop"] if p else (0.5, 0.5))
        y = self.norm.standardise(y, self.maps)
        return {
            "x": x / self.norm.input_scale,
            "y": y * mask,
            "mask": mask > 0.5,
            "bolus": bolus.float() / self.norm.input_scale,
            "count": torch.tensor(0.0 if padding else 1.0),
        }


def regional_delay(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, p: dict[str, Any], maps: list[str], interval: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (T, H, W) with a smooth region delayed (advanced when negative): d = round(``delay_frames``
    · bump) whole frames per pixel, the bump a Gaussian of SD ``delay_width`` (fraction of the slice)
    at ``delay_centre``; an advance is limited to the pixel's Tmax target (in ``y``: M, H, W, not
    standardised; without a Tmax target nothing is advanced). Frames before a pixel's start
    (after its end) are taken in turn from the grid's first (last) :data:`BASELINE_S` s. The Tmax
    and TTP targets move by d·``interval`` inside ``mask``."""
    n, h, w = x.shape
    yy = (torch.arange(h, dtype=torch.float32) + 0.5) / h - p["delay_centre"][0]
    xx = (torch.arange(w, dtype=torch.float32) + 0.5) / w - p["delay_centre"][1]
    bump = torch.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2.0 * p["delay_width"] ** 2))
    d = torch.round(p["delay_frames"] * bump).long()  # (H, W)
    if p["delay_frames"] < 0:
        tmax = y[maps.index("tmax")] if "tmax" in maps else torch.zeros(h, w)
        earliest = -torch.floor(torch.clamp(tmax, min=0.0) / interval).long()
        d = torch.maximum(d, torch.where(mask > 0, earliest, torch.zeros_like(d)))
    src = torch.arange(n)[:, None, None] - d[None]
    base = min(n, max(1, int(BASELINE_S / interval)))
    src = torch.where(src >= 0, src, torch.remainder(src, base))
    src = torch.where(src < n, src, n - base + torch.remainder(src - n, base))
    x = torch.gather(x, 0, src)
    y = y.clone()
    for name in ("tmax", "ttp"):
        if name in maps:
            k = maps.index(name)
            y[k] = torch.where(mask > 0, y[k] + d * interval, y[k])
    return x, y


def cut_index(n: int, cut: int) -> np.ndarray:
    """Source frame of each of ``n`` grid frames when the acquisition ends at frame ``cut``:
    reflect-padded there (frames past it mirrored back, as inference pads a short series)."""
    if cut <= 0 or cut >= n - 1:
        return np.arange(n)
    return reflect_times(np.arange(n, dtype=np.float64), float(cut)).astype(np.int64)


def edge_index(n: int, shift: int) -> np.ndarray:
    """Source frame of each output frame when a series of ``n`` frames is delayed by ``shift``
    frames (advanced when negative), repeating the first / last frame at the ends."""
    return np.clip(np.arange(n) - shift, 0, n - 1)


def thin_frames(x: torch.Tensor, k: int, phase: float = 0.0) -> torch.Tensor:
    """Keep every ``k``-th frame of ``x`` (frames on dim 0) starting at ``int(phase · k)`` and fill
    the others by linear interpolation (held constant before the first and after the last kept)."""
    n = x.shape[0]
    start = min(int(phase * k), n - 1)
    kept = torch.arange(start, n, k)
    idx = torch.arange(n, dtype=torch.float32)
    pos = ((idx - start) / k).clamp(0, len(kept) - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(len(kept) - 1)
    w = (pos - lo).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    xk = x[kept]
    return xk[lo] * (1 - w) + xk[hi] * w


def _rotate(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, angle_deg: float):
    a = math.radians(angle_deg)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])[None]
    grid = F.affine_grid(theta, [1, 1, *x.shape[1:]], align_corners=False)
    x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    y = F.grid_sample(y[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    mask = F.grid_sample(mask[None, None], grid, mode="nearest", align_corners=False)[0, 0]
    return x, y, mask


def _crop(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, size: int, where: tuple[float, float]):
    h, w = x.shape[1:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
        y = F.pad(y, (0, pw, 0, ph))
        mask = F.pad(mask, (0, pw, 0, ph))
        h, w = x.shape[1:]
    top, left = int(where[0] * (h - size + 1)), int(where[1] * (w - size + 1))
    top, left = min(top, h - size), min(left, w - size)
    return (
        x[:, top : top + size, left : left + size],
        y[:, top : top + size, left : left + size],
        mask[top : top + size, left : left + size],
    )
