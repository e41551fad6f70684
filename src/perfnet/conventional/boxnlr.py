"""Box-shaped residue fitted by non-linear least squares, every voxel in one batch (box-NLR).

Model (Bennink et al. 2016): a box residue of height F (flow, 1/s) from the delay d to d + MTT,

    c(t) = F · [A(t − d) − A(t − d − MTT)],   A(τ) = ∫₀^τ C_a,  A(τ < 0) = 0,

with C_a linear between frames, so A is piecewise quadratic and exact:
A(τ) = A_i + a_i·s + (a_{i+1} − a_i)·s²/(2Δt), i = ⌊τ/Δt⌋, s = τ − iΔt.
Bounds: F ≥ 0, 0 ≤ d ≤ d_max, MTT_min ≤ MTT ≤ MTT_max.

Fit: (a) a grid over (MTT, d) where F has the closed form F = max(⟨c, g⟩, 0)/|g|² of linear
least squares, done as one matmul of the curves with the unit-norm grid curves ĝ (the best
combination maximises ⟨c, ĝ⟩); (b) a few bounded Levenberg–Marquardt steps from there on
(d, MTT) with F kept at its closed form (variable projection, Golub & Pereyra 1973, with
Kaufman's 1975 Jacobian F·(I − ĝĝᵀ)·∂g/∂θ), using the analytic derivatives of g = A(t−d) −
A(t−d−MTT): ∂g/∂d = −[C_a(t−d) − C_a(t−d−MTT)], ∂g/∂MTT = C_a(t−d−MTT). Eliminating F removes
the F–MTT valley of short boxes (c ≈ F·MTT·C_a), so 5–8 steps converge. A step is kept only
where it lowers the voxel's residual, so the fit never ends worse than its grid start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: Bounds and grid: delay 0–20 s, MTT 0.5–30 s (clipped to the acquisition).
MAX_DELAY_S = 20.0
MTT_RANGE_S = (0.5, 30.0)
GRID_MTT_LEVELS = 32  # log-spaced
GRID_DELAY_STEP_S = 0.5
LM_ITERATIONS = 8


@dataclass
class BoxFit:
    """Fitted box-NLR parameters per voxel (float32): flow F (1/s), mtt and delay (s), the RMS
    residual of the fit and of its grid start (curve units), and accepted LM steps (int16)."""

    flow: np.ndarray
    mtt: np.ndarray
    delay: np.ndarray
    residual: np.ndarray
    grid_residual: np.ndarray
    iterations: np.ndarray


class _CumulativeAif:
    """A(τ) and C_a(τ) for C_a linear between frames (Bennink 2016 model input)."""

    def __init__(self, aif: np.ndarray, dt: float, device: torch.device, dtype: torch.dtype) -> None:
        a = np.asarray(aif, dtype=np.float64)
        cumulative = np.r_[0.0, np.cumsum(0.5 * dt * (a[1:] + a[:-1]))]
        # per frame interval i: A_i, a_i and the slope b_i = (a_{i+1} − a_i)/Δt
        self.tables = [
            torch.as_tensor(x, dtype=dtype, device=device) for x in (cumulative, a, np.diff(a) / dt)
        ]
        self.dt = dt
        self.last = a.shape[0] - 2

    def __call__(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position = tau * (1.0 / self.dt)
        index = position.floor().clamp_(0, self.last)
        s = (position - index).mul_(self.dt)
        index = index.long()
        cumulative_table, value_table, slope_table = self.tables
        value = value_table[index]
        slope = slope_table[index].mul_(s)
        cumulative = cumulative_table[index].add_(s * value.add(slope, alpha=0.5))
        value.add_(slope)
        inside = tau > 0
        return cumulative.mul_(inside), value.mul_(inside)


def _box_shape(
    model: _CumulativeAif, times: torch.Tensor, delay: torch.Tensor, mtt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g = A(t−d) − A(t−d−MTT) (B, N) and its derivatives ∂g/∂d, ∂g/∂MTT."""
    start = times[None, :] - delay[:, None]
    area_start, aif_start = model(start)
    area_end, aif_end = model(start - mtt[:, None])
    return area_start - area_end, aif_end - aif_start, aif_end


@dataclass
class _State:
    """Variable-projection state of a batch at parameters (d, MTT)."""

    params: torch.Tensor  # (B, 2): delay, MTT
    flow: torch.Tensor
    residual: torch.Tensor  # model − data (B, N)
    ss: torch.Tensor
    jacobian: torch.Tensor  # (B, N, 2)

    def where(self, mask: torch.Tensor, other: _State) -> _State:
        """This state where ``mask`` (B,) holds, ``other`` elsewhere."""
        picked = {}
        for name, mine in vars(self).items():
            picked[name] = torch.where(mask.view(-1, *([1] * (mine.dim() - 1))), mine, getattr(other, name))
        return _State(**picked)


def _evaluate(model: _CumulativeAif, times: torch.Tensor, c: torch.Tensor, params: torch.Tensor) -> _State:
    """F = max(⟨c, g⟩, 0)/|g|², r = F·g − c and Kaufman's Jacobian F·(I − ĝĝᵀ)·∂g/∂θ."""
    g, dg_delay, dg_mtt = _box_shape(model, times, params[:, 0], params[:, 1])
    gg = (g * g).sum(dim=1).clamp(min=1e-30)
    flow = (c * g).sum(dim=1).clamp(min=0.0) / gg
    residual = flow[:, None] * g - c
    derivatives = torch.stack((dg_delay, dg_mtt), dim=2)
    along = (g[:, :, None] * derivatives).sum(dim=1) / gg[:, None]  # (B, 2)
    jacobian = flow[:, None, None] * (derivatives - g[:, :, None] * along[:, None, :])
    return _State(params, flow, residual, (residual * residual).sum(dim=1), jacobian)


def _lm_step(state: _State, damping: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Marquardt step of the 2-parameter problem with Jacobi-scaled normal equations + λ·I.

    A parameter on a bound whose step points outwards is held there and the other one takes
    the step of its own 1D problem (an active-set step), so a fit can slide along a bound.
    """
    j = state.jacobian
    h00, h01, h11 = (j[:, :, 0] ** 2).sum(1), (j[:, :, 0] * j[:, :, 1]).sum(1), (j[:, :, 1] ** 2).sum(1)
    g = (j * state.residual[:, :, None]).sum(dim=1)
    s0, s1 = h00.clamp(min=1e-30).rsqrt(), h11.clamp(min=1e-30).rsqrt()
    a = (h00 * s0 * s0) + damping
    d = (h11 * s1 * s1) + damping
    b = h01 * s0 * s1
    r0, r1 = -g[:, 0] * s0, -g[:, 1] * s1
    det = a * d - b * b
    step = torch.stack(((d * r0 - b * r1) * s0, (a * r1 - b * r0) * s1), dim=1) / det[:, None]
    blocked = ((state.params <= lower) & (step < 0)) | ((state.params >= upper) & (step > 0))
    zero = torch.zeros_like(r0)
    step = torch.where(blocked[:, :1], torch.stack((zero, r1 / d * s1), dim=1), step)
    step = torch.where(blocked[:, 1:], torch.stack((r0 / a * s0, zero), dim=1), step)
    step = torch.where(blocked.all(dim=1, keepdim=True), 0.0, step)
    return step.nan_to_num_(0.0, 0.0, 0.0)


def _grid(
    model: _CumulativeAif,
    times: torch.Tensor,
    max_delay: float,
    mtt_range: tuple[float, float],
    n_mtt: int,
    delay_step: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-norm grid curves ĝ (K, N) and the (delay, MTT) of each row."""
    mtts = np.geomspace(mtt_range[0], mtt_range[1], n_mtt)
    delays = np.arange(0.0, max_delay + 1e-9, delay_step)
    d, m = (
        torch.as_tensor(x.ravel(), dtype=times.dtype, device=times.device)
        for x in np.meshgrid(delays, mtts, indexing="ij")
    )
    shape, _, _ = _box_shape(model, times, d, m)
    norm = torch.linalg.vector_norm(shape, dim=1)
    keep = norm > 0
    return shape[keep] / norm[keep, None], torch.stack((d[keep], m[keep]), dim=1)


def boxnlr_fit(
    curves: np.ndarray,
    aif: np.ndarray,
    dt: float,
    *,
    max_delay: float = MAX_DELAY_S,
    mtt_range: tuple[float, float] = MTT_RANGE_S,
    grid_mtt_levels: int = GRID_MTT_LEVELS,
    grid_delay_step: float = GRID_DELAY_STEP_S,
    iterations: int = LM_ITERATIONS,
    device: str | torch.device | None = None,
    chunk_size: int = 8192,
    progress: Callable[[float], None] | None = None,
) -> BoxFit:
    """Fit the box-residue model to every curve (V, N) on the grid t_k = k·dt (Bennink 2016).

    ``max_delay`` and ``mtt_range`` (s) bound the fit and are clipped to the acquisition;
    ``grid_mtt_levels`` log-spaced MTTs × delays every ``grid_delay_step`` s form the start grid;
    ``iterations`` LM steps follow. Computation in float32 on ``device`` (default CPU).
    """
    curves = np.asarray(curves)
    aif = np.asarray(aif, dtype=np.float64)
    if curves.ndim != 2 or aif.ndim != 1 or aif.shape[0] != curves.shape[1] or aif.shape[0] < 3:
        raise ValueError(f"need curves (V, N) and aif (N,) with N ≥ 3, got {curves.shape} and {aif.shape}")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    duration = (aif.shape[0] - 1) * dt
    max_delay = float(min(max_delay, duration))
    lo, hi = float(mtt_range[0]), float(min(mtt_range[1], duration))
    if not (max_delay >= 0 and 0 < lo < hi):
        raise ValueError(f"bad bounds: delay ≤ {max_delay} s, MTT in [{lo}, {hi}] s")
    if grid_mtt_levels < 2 or not grid_delay_step > 0 or iterations < 0:
        raise ValueError("grid_mtt_levels must be ≥ 2, grid_delay_step > 0 and iterations ≥ 0")
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = torch.float32  # the grid is built in float64, the fit runs in float32
    model = _CumulativeAif(aif, dt, device, dtype)
    times = torch.arange(aif.shape[0], dtype=dtype, device=device) * dt
    grid, grid_params = (
        x.to(dtype)
        for x in _grid(
            _CumulativeAif(aif, dt, device, torch.float64),
            times.to(torch.float64),
            max_delay,
            (lo, hi),
            grid_mtt_levels,
            grid_delay_step,
        )
    )
    lower = torch.tensor([0.0, lo], dtype=dtype, device=device)
    upper = torch.tensor([max_delay, hi], dtype=dtype, device=device)

    n_voxels, n = curves.shape
    out = {k: np.empty(n_voxels, dtype=np.float32) for k in ("flow", "mtt", "delay", "residual", "grid")}
    accepted = np.zeros(n_voxels, dtype=np.int16)
    starts = range(0, n_voxels, chunk_size)
    with torch.inference_mode():
        for done, start in enumerate(starts, 1):
            rows = slice(start, min(start + chunk_size, n_voxels))
            c = torch.from_numpy(np.ascontiguousarray(curves[rows], dtype=np.float32)).to(device)
            best = (c @ grid.T).argmax(dim=1)  # max ⟨c, ĝ⟩ = least residual with F ≥ 0
            state = _evaluate(model, times, c, grid_params[best])
            grid_ss = state.ss
            damping = torch.full_like(grid_ss, 1e-3)
            steps = torch.zeros_like(grid_ss, dtype=torch.int16)
            for _ in range(iterations):
                trial = torch.minimum(
                    torch.maximum(state.params + _lm_step(state, damping, lower, upper), lower), upper
                )
                new = _evaluate(model, times, c, trial)
                better = new.ss < state.ss
                state = new.where(better, state)
                damping = torch.where(better, damping * 0.2, damping * 10.0).clamp_(1e-9, 1e9)
                steps += better.to(torch.int16)
            values = {
                "flow": state.flow,
                "delay": state.params[:, 0],
                "mtt": state.params[:, 1],
                "residual": (state.ss / n).sqrt(),
                "grid": (grid_ss / n).sqrt(),
            }
            for key, value in values.items():
                out[key][rows] = value.cpu().numpy()
            accepted[rows] = steps.cpu().numpy()
            if progress is not None:
                progress(done / len(starts))
    return BoxFit(
        flow=out["flow"],
        mtt=out["mtt"],
        delay=out["delay"],
        residual=out["residual"],
        grid_residual=out["grid"],
        iterations=accepted,
    )
