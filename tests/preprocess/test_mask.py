"""Brain mask against the phantom's tissue labels (CT and MR, noisy)."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet.phantom.anatomy import AIR, BONE, PARENCHYMA, SOFT_TISSUE
from perfnet.preprocess.mask import brain_mask, otsu_threshold, reference_image
from phantoms import small_study

CASES = [
    (1, "CT", {}),
    (2, "CT", {}),
    (3, "MR", {}),
    (4, "MR", {}),
    # slabs reaching the vertex with thick slices: the scalp of the top slice touches the brain below
    (28, "CT", {"matrix": 96, "slices": 9, "coverage_mm": 140.0, "slab_center_mm": 35.0}),
    (28, "MR", {"matrix": 96, "slices": 9, "coverage_mm": 140.0, "slab_center_mm": 35.0}),
    # head wider than the field of view: the skull reaches the image border
    (24, "MR", {"matrix": 96, "slices": 8, "coverage_mm": 39.0, "fov_mm": 200.0}),
]


@pytest.mark.parametrize(("seed", "modality", "overrides"), CASES)
def test_mask_holds_the_brain_and_not_the_skull(seed: int, modality: str, overrides: dict) -> None:
    study = small_study(seed, modality, motion=False, **overrides)
    mask = brain_mask(study.series)
    labels = study.anatomy.labels
    assert mask.dtype == bool and mask.shape == labels.shape
    parenchyma = np.isin(labels, PARENCHYMA)
    outside = np.isin(labels, (AIR, SOFT_TISSUE, BONE))
    assert mask[parenchyma].mean() >= 0.97
    assert outside[mask].mean() < 0.02


def test_reference_image_is_the_temporal_median() -> None:
    data = np.random.default_rng(0).normal(size=(5, 4, 3, 7)).astype(np.float32)
    np.testing.assert_allclose(reference_image(data), np.median(data, axis=3), rtol=1e-6)
    with pytest.raises(ValueError, match="4D"):
        reference_image(data[..., 0])


def test_otsu_separates_two_classes() -> None:
    values = np.r_[np.full(500, 10.0), np.full(300, 100.0)]
    assert 10.0 < otsu_threshold(values) <= 100.0
