"""Brain mask from the (motion-corrected) series: intensity window → components → holes filled.

CT: brain parenchyma, CSF and vessels lie in a narrow HU window (about −15…100 HU) that excludes
air (−1000 HU) and bone (> 150 HU); the scalp has the same HU as the brain but the skull separates
the two. MR (DSC, T2*-weighted): parenchyma and CSF are bright, skull and air dark; Otsu's
threshold (bounded to a fraction of the robust maximum) separates them. Then, for both:

1. the skull (CT: > 150 HU; MR: dark and not connected in-plane to the image border, which the
   air is) is closed in-plane over gaps < 2 :data:`SKULL_GAP_MM` (a sinus or foramen crossing the
   bone, partial volume) and removed from the candidate;
2. opening-by-reconstruction (radius :data:`BRIDGE_RADIUS_MM`) and the largest 3D component: thin
   bridges through a thin or partial-volumed skull are cut;
3. slice-to-slice propagation of in-plane components: thick slices make an oblique skull (vertex,
   skull base) leak: the scalp of one slice touches the brain of the next through z only. Starting
   from the largest in-plane component of the largest slice, a slice's in-plane component is kept
   when ≥ half of it lies over the kept mask of a neighbouring slice (the scalp ring does not);
4. holes filled (3D, then per slice) and the largest component kept.

Source: skull stripping by thresholding + connected components + morphology, as in Muschelli et al.,
"Validated automatic brain extraction of head CT images", NeuroImage 2015.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from perfnet.io.types import PerfusionSeries

#: CT window of intracranial soft tissue (HU) and the bone threshold.
CT_WINDOW_HU = (-15.0, 100.0)
CT_BONE_HU = 150.0
CT_AIR_HU = -300.0
#: Air outside the head reaches at least this far (mm, in-plane) from tissue; the skull does not.
AIR_DEPTH_MM = 6.0
#: Gaps in the skull ring narrower than about twice this (mm) are closed before testing enclosure.
SKULL_GAP_MM = 4.0
#: Radius (mm) of the opening that detaches structures touching the brain through thin bridges.
BRIDGE_RADIUS_MM = 2.5
#: MR threshold bounds as fractions of the robust (99th percentile) maximum.
MR_THRESHOLD_BOUNDS = (0.15, 0.45)
#: Fraction of an in-plane component that must overlap the neighbouring slice's mask to be kept.
MIN_OVERLAP = 0.75
#: In-plane components whose outline touches the outside air over this fraction are not brain.
MAX_AIR_CONTACT = 0.25
#: Radius (mm) of the opening that splits brain and scalp joined through a gap in the skull.
SPLIT_RADIUS_MM = 4.0

_FACE_3D = ndimage.generate_binary_structure(3, 1)
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)
_SQUARE = np.zeros((3, 3, 3), dtype=bool)
_SQUARE[:, :, 1] = True


def reference_image(data4d: np.ndarray) -> np.ndarray:
    """Temporal median (X, Y, Z): near the pre-contrast image in tissue, noise reduced ≈ √(2T/π)×."""
    data4d = np.asarray(data4d)
    if data4d.ndim != 4:
        raise ValueError(f"expected a 4D array (X, Y, Z, T), got shape {data4d.shape}")
    out = np.empty(data4d.shape[:3], dtype=np.float32)
    # chunks over x keep the median's temporary copy small on 512² × 16 × 89 series
    step = max(1, 2**24 // max(1, int(np.prod(data4d.shape[1:]))))
    for start in range(0, data4d.shape[0], step):
        out[start : start + step] = np.median(data4d[start : start + step], axis=3)
    return out


def _ball(radius_mm: float, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """Ellipsoidal structuring element of ``radius_mm`` (≥ 1 voxel in-plane; none in z if thick)."""
    r = [int(np.floor(radius_mm / v)) for v in voxel_size]
    r[0], r[1] = max(r[0], 1), max(r[1], 1)
    axes = [np.arange(-k, k + 1) * v for k, v in zip(r, voxel_size, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    return sum(g**2 for g in grids) <= max(radius_mm, *voxel_size[:2]) ** 2 + 1e-9


def largest_component(mask: np.ndarray, structure: np.ndarray = _FACE_3D) -> np.ndarray:
    """The largest connected component (face connectivity by default); empty stays empty."""
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes in 3D, then per axial slice (holes open at the slab's top/bottom stay in 3D)."""
    mask = ndimage.binary_fill_holes(mask, structure=_FACE_3D)
    return ndimage.binary_fill_holes(mask, structure=_IN_PLANE)


def _opened_component(candidate: np.ndarray, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """Largest component after an opening-by-reconstruction of radius :data:`BRIDGE_RADIUS_MM`:
    erode, keep the largest component, dilate back inside the candidate, keep the component."""
    ball = _ball(BRIDGE_RADIUS_MM, voxel_size)
    core = ndimage.binary_erosion(candidate, structure=ball)
    if not core.any():
        return largest_component(candidate)
    grown = ndimage.binary_dilation(largest_component(core), structure=ball) & candidate
    return largest_component(grown)


def _air_contact(mask: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane component labels of ``mask`` and, per label, whether its outline borders the
    outside air over less than :data:`MAX_AIR_CONTACT` of its length (label 0: False)."""
    labels, n = ndimage.label(mask, structure=_IN_PLANE)
    edge = mask & ~ndimage.binary_erosion(mask, structure=_IN_PLANE, border_value=1)
    touching = edge & ndimage.binary_dilation(outside, structure=_IN_PLANE)
    edge_counts = np.bincount(labels[edge], minlength=n + 1)
    touch_counts = np.bincount(labels[touching], minlength=n + 1)
    allowed = touch_counts < MAX_AIR_CONTACT * np.maximum(edge_counts, 1)
    allowed[0] = False
    return labels, allowed


def _split_from_scalp(
    mask: np.ndarray, region: np.ndarray, outside: np.ndarray, voxel_size: tuple[float, float, float]
) -> np.ndarray:
    """Cut the scalp off components (``region``) joined to it through a gap in the skull: an
    in-plane opening of radius :data:`SPLIT_RADIUS_MM` removes the scalp ring and the bridge; the
    cores farther than that from the outside air grow back inside the region."""
    disc = _ball(SPLIT_RADIUS_MM, (voxel_size[0], voxel_size[1], 1e9))  # in-plane disc
    core = ndimage.binary_erosion(region, structure=disc)
    core &= ~ndimage.binary_dilation(outside, structure=disc)
    grown = ndimage.binary_dilation(core, structure=disc) & region
    return (mask & ~region) | grown


def _propagate_slices(
    mask: np.ndarray, outside: np.ndarray, voxel_size: tuple[float, float, float]
) -> np.ndarray:
    """Keep the in-plane components connected slice to slice by a substantial overlap (step 3).

    Components whose outline borders the air outside the head over ≥ :data:`MAX_AIR_CONTACT` of
    its length (the scalp, a scalp cap cut tangentially, brain joined to the scalp through a gap
    in the skull) are first split by a wider opening, then never kept if they still do. A slice
    left without any kept component is bridged: the slices on either side are compared.
    """
    labels, allowed = _air_contact(mask, outside)
    if (~allowed[1:]).any():  # split what touches the air, then judge the pieces again
        mask = _split_from_scalp(mask, np.isin(labels, np.flatnonzero(~allowed)[1:]), outside, voxel_size)
        labels, allowed = _air_contact(mask, outside)
    n = len(allowed) - 1
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    if not allowed[1:].any():  # no skull between brain and air (craniectomy, pre-stripped data)
        allowed[1:] = True
    seed_slice = int(np.argmax(allowed[labels].sum(axis=(0, 1))))
    seed_labels = labels[:, :, seed_slice]
    seed_sizes = np.bincount(seed_labels[allowed[seed_labels]], minlength=n + 1)
    keep = np.zeros(n + 1, dtype=bool)
    keep[int(np.argmax(seed_sizes))] = True
    nz = mask.shape[2]
    for _ in range(3):  # sweeps outward from the seed, then over all slices, until nothing changes
        before = int(keep.sum())
        for order in (range(seed_slice + 1, nz), range(seed_slice - 1, -1, -1), range(nz)):
            for z in order:
                for step in (-1, 1):
                    other = z + step
                    if 0 <= other < nz and not keep[labels[:, :, other]].any():
                        other += step  # bridge one slice without kept components
                    if not 0 <= other < nz:
                        continue
                    over = keep[labels[:, :, other]] & (labels[:, :, z] > 0)
                    counts = np.bincount(labels[:, :, z][over], minlength=n + 1)
                    keep |= (counts >= MIN_OVERLAP * sizes) & allowed
        if int(keep.sum()) == before:
            break
    keep[0] = False
    return keep[labels]


def outside_air(dark: np.ndarray, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """Per axial slice, the air around the head: the in-plane opening (disc of radius
    :data:`AIR_DEPTH_MM`) of the dark components that touch the image border.

    The opening keeps what is wider than 2 :data:`AIR_DEPTH_MM`: the air, not a skull band (MR: as
    dark as air) even where a gap in a thin scalp or the field of view joins it to the air.
    """
    labels, n = ndimage.label(dark, structure=_IN_PLANE)
    border = np.zeros(dark.shape, dtype=bool)
    border[[0, -1], :, :] = True
    border[:, [0, -1], :] = True
    on_border = np.zeros(n + 1, dtype=bool)
    on_border[labels[border & dark]] = True
    on_border[0] = False
    reached = on_border[labels]
    air = np.zeros(dark.shape, dtype=bool)
    for z in np.flatnonzero(reached.any(axis=(0, 1))):  # opening by distance maps, per slice
        padded = np.pad(reached[:, :, z], 1, constant_values=False)
        centres = ndimage.distance_transform_edt(padded, sampling=voxel_size[:2]) > AIR_DEPTH_MM
        near = ndimage.distance_transform_edt(~centres, sampling=voxel_size[:2]) <= AIR_DEPTH_MM
        air[:, :, z] = (near & padded)[1:-1, 1:-1]
    return air


def close_skull(skull: np.ndarray, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """The skull with in-plane gaps narrower than about 2 :data:`SKULL_GAP_MM` closed (square
    closing per slice): a sinus or a foramen crossing the bone, partial volume of a thin skull."""
    r = max(1, round(SKULL_GAP_MM / min(voxel_size[0], voxel_size[1])))
    closed = ndimage.binary_dilation(skull, structure=_SQUARE, iterations=r)
    return ndimage.binary_erosion(closed, structure=_SQUARE, iterations=r, border_value=1) | skull


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold, maximising the between-class variance w₀w₁(μ₀ − μ₁)² (Otsu 1979)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _component_mask(
    candidate: np.ndarray, skull: np.ndarray, dark: np.ndarray, voxel_size: tuple[float, float, float]
) -> np.ndarray:
    """Steps 1–4 of the module docstring."""
    candidate = candidate & ~close_skull(skull, voxel_size)
    mask = _propagate_slices(
        _opened_component(candidate, voxel_size), outside_air(dark, voxel_size), voxel_size
    )
    return largest_component(fill_holes(largest_component(mask)))


def ct_brain_mask(reference: np.ndarray, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """CT brain mask from a pre-contrast-like image in HU (see the module docstring)."""
    lo, hi = CT_WINDOW_HU
    candidate = (reference >= lo) & (reference <= hi)
    return _component_mask(candidate, reference > CT_BONE_HU, reference < CT_AIR_HU, voxel_size)


def mr_brain_mask(reference: np.ndarray, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """MR brain mask from the baseline (T2*-weighted) signal (see the module docstring)."""
    robust_max = float(np.percentile(reference, 99.0))
    if robust_max <= 0:
        return np.zeros(reference.shape, dtype=bool)
    lo, hi = MR_THRESHOLD_BOUNDS
    threshold = float(np.clip(otsu_threshold(reference), lo * robust_max, hi * robust_max))
    dark = reference < 0.5 * threshold
    skull = dark & ~outside_air(dark, voxel_size)
    return _component_mask(reference > threshold, skull, dark, voxel_size)


def brain_mask(series: PerfusionSeries) -> np.ndarray:
    """Boolean brain mask (X, Y, Z): parenchyma, CSF and vessels inside the skull, not skull or scalp.

    Computed on the temporal median of the series, so run it after motion correction.
    """
    reference = reference_image(series.data)
    if series.modality == "CT":
        return ct_brain_mask(reference, series.voxel_size)
    return mr_brain_mask(reference, series.voxel_size)


#: CSF thresholds: CT temporal median below 15 HU (CSF ≈ 0–10 HU, white matter ≈ 25–30 HU);
#: MR (T2*-weighted) temporal median above 1.4 × the brain median (CSF is the brightest tissue).
CSF_CT_HU = 15.0
CSF_MR_RELATIVE = 1.4


def csf_mask(series: PerfusionSeries, brain: np.ndarray) -> np.ndarray:
    """Cerebrospinal fluid (ventricles, sulci) within ``brain`` from the temporal median (not
    smoothed: thin CSF lies next to bone, which any spatial filter would spread into it).

    Lesion analysis leaves CSF out: it has no perfusion, so its Tmax is noise and its CBF is ~0,
    which would read as ischaemic core."""
    brain = np.asarray(brain, dtype=bool)
    mean = reference_image(series.data).astype(np.float64)
    if series.modality == "CT":
        csf = mean < CSF_CT_HU
    else:
        inside = mean[brain]
        csf = mean > CSF_MR_RELATIVE * float(np.median(inside)) if inside.size else np.zeros_like(brain)
    return csf & brain
