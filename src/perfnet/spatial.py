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


def _normalised_theta(voxel_maps: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """Convert voxel-index maps (N, 4, 4) on axes (i, j, k) into affine_grid thetas (N, 3, 4)
    on torch's normalised (x=k, y=j, z=i) coordinates with align_corners=True."""
    n = np.array(shape, dtype=np.float64)
    scale = np.diag(np.r_[2.0 / np.maximum(n - 1, 1), 1.0])
    scale[:3, 3] = -1.0
    norm = scale @ voxel_maps @ np.linalg.inv(scale)
    perm = np.eye(4)[[2, 1, 0, 3]]
    norm = perm @ norm @ perm.T
    return torch.from_numpy(norm[:, :3, :]).float()


def resample_frames(
    frames: np.ndarray, voxel_maps: np.ndarray, cval: float = 0.0, batch: int = 8, device: str | None = None
) -> np.ndarray:
    """Trilinearly resample each frame t of (X, Y, Z, T) at ``voxel_maps[t]`` @ output index.

    Frames whose map is the identity are copied. Points outside the volume take ``cval``.
    """
    shape = frames.shape[:3]
    out = frames.copy()
    moving = [t for t in range(frames.shape[3]) if not np.allclose(voxel_maps[t], np.eye(4), atol=1e-9)]
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for start in range(0, len(moving), batch):
        ts = moving[start : start + batch]
        theta = _normalised_theta(voxel_maps[ts], shape).to(dev)
        volume = torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames[..., ts], 3, 0)) - cval).to(dev)
        grid = F.affine_grid(theta, [len(ts), 1, *shape], align_corners=True)
        sampled = F.grid_sample(
            volume[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        out[..., ts] = np.moveaxis(sampled[:, 0].cpu().numpy(), 0, 3) + cval
    return out
