"""Anatomy: tissue classes, vessels and partial volume."""

from __future__ import annotations

import numpy as np

from perfnet.phantom import PhantomConfig
from perfnet.phantom.anatomy import (
    ARTERY,
    BONE,
    CSF,
    DEEP_GREY,
    GREY_MATTER,
    VEIN,
    WHITE_MATTER,
    Grid,
    build_anatomy,
    tube_partial_volume,
)


def test_tissue_classes_present_and_plausible() -> None:
    cfg = PhantomConfig.draw(1, "CT", matrix=128, slices=8, coverage_mm=80, slab_center_mm=10)
    anatomy = build_anatomy(cfg)
    counts = np.bincount(anatomy.labels.ravel(), minlength=9)
    for label in (BONE, CSF, GREY_MATTER, WHITE_MATTER, DEEP_GREY, ARTERY, VEIN):
        assert counts[label] > 0, label
    voxel_ml = np.prod(cfg.voxel_size) / 1000
    brain_ml = (counts[GREY_MATTER] + counts[WHITE_MATTER] + counts[DEEP_GREY]) * voxel_ml
    assert 300 < brain_ml < 1400
    assert 0.15 < counts[GREY_MATTER] / (counts[GREY_MATTER] + counts[WHITE_MATTER]) < 0.7
    assert anatomy.artery_pv.max() <= 1.0 and anatomy.vein_pv.max() <= 1.0


def test_anatomy_is_independent_of_matrix_size() -> None:
    """Same seed at two resolutions: the same head, just sampled differently."""
    coarse = build_anatomy(PhantomConfig.draw(2, "CT", matrix=64, slices=4, coverage_mm=40))
    fine = build_anatomy(PhantomConfig.draw(2, "CT", matrix=128, slices=4, coverage_mm=40))
    frac = [np.isin(a.labels, (GREY_MATTER, WHITE_MATTER, DEEP_GREY)).mean() for a in (coarse, fine)]
    assert abs(frac[0] - frac[1]) < 0.02


def test_tube_partial_volume_conserves_cross_section() -> None:
    """Blood volume per mm of vessel ≈ πr² whatever the voxel size (partial volume dilutes)."""
    for pixel, radius in ((0.5, 1.5), (2.0, 1.0), (3.5, 1.2)):
        n, nz = int(40 / pixel), 5
        aff = np.diag([pixel, pixel, 5.0, 1.0])
        aff[:3, 3] = [-(n - 1) / 2 * pixel, -(n - 1) / 2 * pixel, -10.0]
        ii, jj, kk = np.meshgrid(np.arange(n), np.arange(n), np.arange(nz), indexing="ij")
        pts = (aff[:3, :3] @ np.stack([ii.ravel(), jj.ravel(), kk.ravel()]) + aff[:3, 3:]).astype(np.float32)
        grid = Grid(shape=(n, n, nz), affine=aff, points=pts)
        _, pv = tube_partial_volume(grid, np.array([0.0, -30.0, 0.0]), np.array([0.0, 30.0, 0.0]), radius)
        per_mm = pv.sum() * pixel * pixel * 5.0 / (n * pixel)  # blood mm³ per mm of length
        assert per_mm == np.float32(per_mm) and abs(per_mm / (np.pi * radius**2) - 1) < 0.2
