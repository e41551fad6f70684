"""The MNI152 brain template that style-B anatomy is built from, and what is placed in its space.

Tissue: the ICBM 2009a non-linear symmetric grey- and white-matter probability maps and the
skull-stripped T1 template (Fonov et al., NeuroImage 2011), 1 mm, as the ``nilearn`` package
ships them in ``nilearn/datasets/data/`` (read from there with nibabel: no download, no network,
nilearn's heavy ``datasets`` module is not even imported). Intracranial space = T1 > 0; CSF =
intracranial − GM − WM.

Placed geometrically in MNI coordinates (mm; x right, y anterior, z superior), all approximate
and documented here because no template of them ships offline:

- vascular territories after the atlas of Tatu et al. (Neurology 1998) and Kim et al. (2019):
  ACA = a paramedian strip |x| < 12 + 0.35·max(z, 0) mm over the frontal and parietal lobes
  (y > −58 + 0.2·z) and the medial orbitofrontal cortex; PCA = occipital lobe (y < −68), inferior
  and medial temporal lobe behind y = −20 below z ≈ −4, thalamus and the posterior fossa
  (cerebellum and brainstem, the vertebrobasilar supply, counted with the posterior circulation);
  MCA = the rest of the supratentorial brain (lateral convexity, insula, lentiform nucleus);
  borders wobble with a smooth random field (± 6 mm);
- deep grey nuclei: caudate head, putamen/pallidum, thalamus as ellipsoids (Talairach atlas
  positions transferred to MNI), taking the grey-matter probability inside them;
- arteries as polylines with radii: ICA (supraclinoid), M1, two M2 trunks over the insula and
  M3 branches on the convexity, A1, A2 and the pericallosal artery, basilar, P1–P3;
- venous sinuses: the superior sagittal sinus follows the intracranial surface of the
  mid-sagittal plane (found from the template) down to the confluence, then the straight sinus
  to the vein of Galen and both transverse and sigmoid sinuses.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from perfnet.errors import PerfnetInputError

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: Template point that the study's world origin (head centre) maps to (MNI mm).
BRAIN_CENTRE_MNI = np.array([0.0, -18.0, 12.0])

#: (name, territory fed or None, radius mm, centre line in MNI mm on the right; mirrored for left).
ARTERIES: tuple[tuple[str, str | None, float, tuple[tuple[float, float, float], ...]], ...] = (
    ("ICA", None, 2.2, ((17, 2, -40), (16, 4, -28), (15, 2, -18), (14, 3, -13))),
    ("M1", "MCA", 1.4, ((14, 3, -13), (22, 4, -12), (30, 5, -10), (37, 6, -7))),
    ("M2sup", "MCA", 1.05, ((37, 6, -7), (38, 0, 0), (39, -10, 8), (41, -22, 16), (44, -34, 22))),
    ("M2inf", "MCA", 1.0, ((37, 6, -7), (40, -4, -5), (43, -18, -2), (47, -32, 2), (50, -46, 6))),
    ("M3front", "MCA", 0.75, ((38, 0, 0), (46, 14, 8), (50, 24, 20), (47, 30, 34))),
    ("M3par", "MCA", 0.75, ((41, -22, 16), (52, -24, 28), (56, -30, 40), (50, -42, 50))),
    ("A1", "ACA", 1.0, ((14, 3, -13), (8, 10, -11), (2.5, 14, -9))),
    ("A2", "ACA", 0.95, ((2.5, 14, -9), (3.0, 24, -4), (3.0, 34, 8), (3.0, 36, 22))),
    ("pericallosal", "ACA", 0.8, ((3, 36, 22), (3, 26, 34), (3, 6, 40), (3, -20, 42), (3, -42, 38))),
    ("P1", "PCA", 1.0, ((0.0, -16, -20), (7, -18, -17), (14, -22, -14))),
    ("P2", "PCA", 0.95, ((14, -22, -14), (22, -30, -10), (26, -44, -6), (22, -60, -2))),
    ("P3", "PCA", 0.8, ((22, -60, -2), (14, -74, 2), (8, -88, 6))),
)
MIDLINE_ARTERIES: tuple[tuple[str, float, tuple[tuple[float, float, float], ...]], ...] = (
    ("basilar", 1.5, ((0.0, -22, -60), (0.0, -20, -40), (0.0, -17, -27), (0.0, -16, -20))),
)
#: Branches that fill late and weakly when their territory's artery is occluded (per level).
OCCLUDED_BRANCHES = {
    ("MCA", "proximal"): ("M1", "M2sup", "M2inf", "M3front", "M3par"),
    ("MCA", "distal"): ("M2sup", "M3par"),
    ("ACA", "proximal"): ("A2", "pericallosal"),
    ("ACA", "distal"): ("pericallosal",),
    ("PCA", "proximal"): ("P2", "P3"),
    ("PCA", "distal"): ("P3",),
}
#: Deep grey nuclei, right side (centre, semi-axes; MNI mm).
DEEP_NUCLEI = (
    ((13.0, 12.0, 9.0), (5.0, 9.0, 9.0)),  # caudate head
    ((25.0, 2.0, 0.0), (7.0, 14.0, 8.0)),  # putamen and pallidum
    ((12.0, -18.0, 6.0), (8.0, 11.0, 8.0)),  # thalamus
)
TERRITORY_CODES = {"MCA": 1, "ACA": 2, "PCA": 3}
#: Voxel → voxel map of the 2 mm level: coarse index i is the mean of fine voxels 2i and 2i + 1.
_HALF_RESOLUTION = np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]])


@dataclass(frozen=True)
class MniTemplate:
    """Template volumes at one resolution (float32, index order x, y, z), voxel → MNI affine."""

    gm: np.ndarray
    wm: np.ndarray
    intracranial: np.ndarray  # 0–1 (a fraction at the coarser level)
    deep_grey: np.ndarray  # 0–1 weight of the deep grey nuclei (geometric, see DEEP_NUCLEI)
    outside_distance: np.ndarray  # template mm from the intracranial surface (0 inside)
    affine: np.ndarray
    sinuses: tuple[tuple[np.ndarray, float], ...]  # (centre line (K, 3) MNI mm, radius mm)
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))


def template_folder() -> Path:
    """Where nilearn keeps its bundled MNI152 files (nilearn is located, not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise PerfnetInputError(
            "--style mni", "needs the nilearn package (pip install nilearn), which ships the MNI152 template"
        )
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise PerfnetInputError(folder, f"nilearn's MNI152 files are missing: {', '.join(missing)}")
    return folder


@functools.lru_cache(maxsize=2)
def load_template(level: int = 1) -> MniTemplate:
    """The template at 1 mm (``level`` 1) or 2 mm (2: 2×2×2 block means, for coarse study grids),
    read once per process and kept (level 1 ≈ 1–2 s, level 2 from it ≈ 0.3 s)."""
    if level == 2:
        fine = load_template(1)
        gm, wm, icv, deep = (_block_mean(v) for v in (fine.gm, fine.wm, fine.intracranial, fine.deep_grey))
        return MniTemplate(
            gm=gm,
            wm=wm,
            intracranial=icv,
            deep_grey=deep,
            outside_distance=_block_mean(fine.outside_distance),
            affine=fine.affine
            @ np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]]),
            sinuses=fine.sinuses,
            source=fine.source.replace(", 1 mm,", ", block means to 2 mm,"),
        )
    if level != 1:
        raise ValueError(f"template level must be 1 or 2, got {level}")
    import nibabel as nib

    folder = template_folder()
    images = {key: nib.load(folder / name) for key, name in TEMPLATE_FILES.items()}
    affine = images["gm"].affine.astype(np.float64)
    t1, gm, wm = (np.asarray(images[k].dataobj, dtype=np.float32) for k in ("t1", "gm", "wm"))
    t1 = t1 / max(float(t1.max()), 1e-6)
    gm, wm = gm / max(float(gm.max()), 1e-6), wm / max(float(wm.max()), 1e-6)
    intracranial = (t1 > 0.02) | (gm + wm > 0.1)
    tissue_sum = np.maximum(gm + wm, 1.0)  # keep GM + WM ≤ 1
    gm, wm = gm / tissue_sum, wm / tissue_sum
    gm[~intracranial] = 0.0
    wm[~intracranial] = 0.0
    # distance outside the intracranial space (skull, scalp): exact at the even voxels (2 mm
    # grid), linear in between
    coarse = ndimage.distance_transform_edt(~intracranial[::2, ::2, ::2], sampling=2.0).astype(np.float32)
    distance = ndimage.zoom(coarse, 2.0, order=1, grid_mode=False)[tuple(slice(0, n) for n in gm.shape)]
    distance = np.pad(distance, [(0, n - m) for n, m in zip(gm.shape, distance.shape, strict=True)], "edge")
    distance[intracranial] = 0.0
    # deep grey nuclei: evaluated in the box that holds them
    deep = np.zeros(gm.shape, dtype=np.float32)
    inv = np.linalg.inv(affine)
    lo = np.floor(inv[:3, :3] @ np.array([-40.0, -35.0, -15.0]) + inv[:3, 3]).astype(int)
    hi = np.ceil(inv[:3, :3] @ np.array([40.0, 28.0, 24.0]) + inv[:3, 3]).astype(int)
    box = tuple(slice(a, b) for a, b in zip(np.minimum(lo, hi), np.maximum(lo, hi), strict=True))
    idx = np.indices(deep[box].shape).reshape(3, -1) + np.array([b.start for b in box])[:, None]
    q = affine[:3, :3] @ idx + affine[:3, 3:]
    deep[box] = deep_grey_weight(q).reshape(deep[box].shape)
    return MniTemplate(
        gm=np.ascontiguousarray(gm),
        wm=np.ascontiguousarray(wm),
        intracranial=intracranial.astype(np.float32),
        deep_grey=deep,
        outside_distance=distance,
        affine=affine,
        sinuses=_sinuses(intracranial, affine),
        source=f"ICBM 2009a nonlinear symmetric (MNI152), 1 mm, from {folder}",
    )


def _block_mean(volume: np.ndarray) -> np.ndarray:
    """2×2×2 block means (the last odd plane of each axis dropped)."""
    x, y, z = (n // 2 * 2 for n in volume.shape)
    v = volume[:x, :y, :z].reshape(x // 2, 2, y // 2, 2, z // 2, 2)
    return np.ascontiguousarray(v.mean(axis=(1, 3, 5), dtype=np.float32))


def _mid_sagittal_surface(intracranial: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intracranial boundary of the mid-sagittal plane along rays from (y, z) = (−20, 10):
    angles (rad, 0 = anterior, π/2 = superior) and boundary points (K, 3) in MNI mm."""
    inv = np.linalg.inv(affine)
    i0 = round(float((inv @ np.array([0.0, 0.0, 0.0, 1.0]))[0]))
    plane = intracranial[i0 - 1 : i0 + 2].any(axis=0)  # (y, z)
    angles = np.radians(np.linspace(-25.0, 240.0, 134))
    radii = np.arange(0.0, 140.0, 0.5)
    centre = np.array([-20.0, 10.0])
    points = []
    for angle in angles:
        yz = centre[None, :] + radii[:, None] * np.array([np.cos(angle), np.sin(angle)])[None, :]
        vox = (inv @ np.c_[np.zeros(len(radii)), yz, np.ones(len(radii))].T)[1:3]
        j, k = np.rint(vox).astype(int)
        ok = (j >= 0) & (j < plane.shape[0]) & (k >= 0) & (k < plane.shape[1])
        inside = np.zeros(len(radii), dtype=bool)
        inside[ok] = plane[j[ok], k[ok]]
        last = int(np.flatnonzero(inside)[-1]) if inside.any() else 0
        points.append([0.0, *yz[last]])
    return angles, np.array(points)


def _sinuses(intracranial: np.ndarray, affine: np.ndarray) -> tuple[tuple[np.ndarray, float], ...]:
    """Superior sagittal, straight, transverse and sigmoid sinuses (MNI centre lines, radius)."""
    _, surface = _mid_sagittal_surface(intracranial, affine)
    # the SSS lies in the falx just outside the brain: from the frontal pole (y ≈ +50) over the
    # vertex to the confluence at the internal occipital protuberance (z ≈ −8 behind y = −80)
    outward = surface - np.array([0.0, -20.0, 10.0])
    outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-6)
    shell = surface + 2.5 * outward
    start = int(np.argmax(shell[:, 1] < 50.0))
    after = np.flatnonzero((shell[:, 2] < -8.0) & (shell[:, 1] < -60.0) & (np.arange(len(shell)) > start))
    stop = int(after[0]) if after.size else len(shell) - 1
    sagittal = shell[start : stop + 1 : 2]
    confluence = shell[stop]
    _, cy, cz = confluence
    straight = np.array([confluence, [0.0, cy + 25.0, cz + 8.0], [0.0, -50.0, 2.0]])
    out: list[tuple[np.ndarray, float]] = [(sagittal, 3.5), (straight, 2.2)]
    for side in (1.0, -1.0):
        transverse = np.array(
            [
                confluence,
                [side * 22.0, cy + 2.0, cz - 4.0],
                [side * 42.0, cy + 14.0, cz - 10.0],
                [side * 56.0, cy + 34.0, cz - 16.0],
                [side * 54.0, cy + 52.0, cz - 26.0],  # sigmoid sinus
                [side * 44.0, cy + 58.0, cz - 40.0],
            ]
        )
        out.append((transverse, 3.0))
    return tuple(out)


def territory_codes(q: np.ndarray, wobble: np.ndarray) -> np.ndarray:
    """Vascular territory (TERRITORY_CODES) of MNI points ``q`` (3, N); ``wobble`` in [−1, 1] (N,)
    moves the borders by up to 6 mm. See the module docstring for the geometry."""
    x, y, z = q
    ax = np.abs(x)
    w = 6.0 * np.clip(wobble, -1.0, 1.0)
    codes = np.full(x.shape, TERRITORY_CODES["MCA"], dtype=np.uint8)
    aca = (ax < 12.0 + 0.35 * np.maximum(z, 0.0) + w) & (y > -58.0 + 0.2 * z + w) & (z > -6.0)
    aca |= (ax < 16.0 + w) & (y > 20.0) & (z > -30.0)  # medial orbitofrontal, gyrus rectus
    codes[aca] = TERRITORY_CODES["ACA"]
    thalamus = (((ax - 12.0) / 9.0) ** 2 + ((y + 18.0) / 12.0) ** 2 + ((z - 6.0) / 9.0) ** 2) < 1.0
    posterior_fossa = (y < -30.0) & (z < -14.0 - 0.12 * (y + 30.0))
    brainstem = (ax < 14.0) & (y < -8.0) & (y > -45.0) & (z < -8.0)
    pca = (y < -68.0 + w) | ((y < -20.0 + w) & (z < -4.0 + 0.5 * w) & (ax < 48.0)) | thalamus
    codes[pca | posterior_fossa | brainstem] = TERRITORY_CODES["PCA"]
    return codes


def deep_grey_weight(q: np.ndarray) -> np.ndarray:
    """1 inside the deep grey nuclei (either side), 0 outside, over a 2 mm soft edge."""
    x, y, z = q
    ax = np.abs(x)
    weight = np.zeros(x.shape, dtype=np.float32)
    for (cx, cy, cz), (sx, sy, sz) in DEEP_NUCLEI:
        rho = np.sqrt(((ax - cx) / sx) ** 2 + ((y - cy) / sy) ** 2 + ((z - cz) / sz) ** 2)
        edge = 2.0 / min(sx, sy, sz)
        weight = np.maximum(weight, np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0))
    return weight
