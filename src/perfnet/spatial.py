"""Rigid transforms and batched resampling of 3D frames (torch, so a GPU helps when present)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation


def rigid_matrix(params: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4×4 world transform x' = R (x − c) + c + t for params (tx, ty, tz mm, rx, ry, rz deg)."""
    rot = Rotation.from_euler("xyz", params[3:], degrees=True).as_matrix()
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + params[:3]
    return out


def voxel_map(world_transform: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Output voxel → input voxel map that renders an object moved by ``world_transform``."""
    return np.linalg.inv(affine) @ np.linalg.inv(world_transform) @ affine


def _sampling_grid(voxel_map_: np.ndarray, shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """grid_sample grid (1, X, Y, Z, 3) of the input positions of every output voxel.

    Built by broadcasting the affine map over the three axes (cheaper than affine_grid) and
    expressed in torch's normalised (x=k, y=j, z=i) coordinates with align_corners=True.
    """
    m = torch.as_tensor(voxel_map_, dtype=torch.float32, device=device)
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in shape]
    i, j, k = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    grid = torch.empty((1, *shape, 3), dtype=torch.float32, device=device)
    for channel, row in enumerate((2, 1, 0)):
        scale = 2.0 / max(shape[row] - 1, 1)
        plane = (m[row, 0] * scale) * i + (m[row, 1] * scale) * j + (m[row, 3] * scale - 1.0)
        grid[0, ..., channel] = plane + (m[row, 2] * scale) * k
    return grid


def resample_frames(
    frames: np.ndarray,
    voxel_maps: np.ndarray,
    cval: float = 0.0,
    device: str | None = None,
    batch: int = 8,
    padding: str = "zeros",
) -> np.ndarray:
    """Trilinearly resample each frame t of (X, Y, Z, T) at ``voxel_maps[t]`` @ output index.

    Frames whose map is the identity are copied. Points outside the volume take ``cval``
    (``padding="zeros"``) or the nearest edge voxel's value (``"border"``).
    Frames go through in batches so reads and writes of the (X, Y, Z, T) layout stay blocked.
    """
    shape = frames.shape[:3]
    out = np.empty_like(frames)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for start in range(0, frames.shape[3], batch):
        stop = min(start + batch, frames.shape[3])
        block = np.moveaxis(frames[..., start:stop], 3, 0).copy()
        for b, t in enumerate(range(start, stop)):
            if np.allclose(voxel_maps[t], np.eye(4), atol=1e-9):
                continue
            volume = torch.from_numpy(block[b] - np.float32(cval)).to(dev)[None, None]
            grid = _sampling_grid(voxel_maps[t], shape, dev)
            sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode=padding, align_corners=True)
            block[b] = sampled[0, 0].cpu().numpy() + np.float32(cval)
        out[..., start:stop] = np.moveaxis(block, 0, 3)
    return out
