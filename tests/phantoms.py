"""Small phantom studies for tests, cached per session (they are deterministic)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from perfnet.evaluation.metrics import maec
from perfnet.phantom import PhantomConfig, PhantomStudy, simulate_study
from perfnet.phantom.signal import add_noise, apply_motion

DATA = Path(__file__).parent / "data"


@functools.lru_cache(maxsize=16)
def small_study(seed: int, modality: str = "CT", noise: bool = True, **overrides) -> PhantomStudy:
    """A small phantom study (96×96×6 unless overridden), cached by its arguments."""
    overrides = {"matrix": 96, "slices": 6, "coverage_mm": 60.0, **overrides}
    return simulate_study(PhantomConfig.draw(seed, modality, **overrides), noise=noise)


#: small moving studies with 6 mm slices: 2–4 mm and 2–3° of smooth 6-DOF motion (+ a jerk at times)
MOVING = {"matrix": 80, "slices": 8, "coverage_mm": 48.0, "frames": 40, "frame_interval_s": 1.0}
MOVING |= {"timing": "uniform", "arrival_s": 6.0, "lesion": "core", "territory": "MCA"}
MOVING |= {"lesion_radius_mm": 40.0, "motion": True, "motion_translation_mm": 3.5, "motion_rotation_deg": 3.0}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def moving_score(study: PhantomStudy, result) -> tuple[float, float]:
    truth = study.truth
    brain, tmax = truth.masks["brain"], result.maps["tmax"]
    return _dice((tmax > 6) & brain, truth.masks["hypoperfused"]), maec(tmax, truth.maps["tmax"], brain)


def jerked_study(modality: str, jerks: dict[tuple[int, ...], list[float]]) -> PhantomStudy:
    """A motion-free small study whose head jumps to ``jerks`` poses before the noise is added."""
    cfg = PhantomConfig.draw(5, modality, **(MOVING | {"motion": False, "frames": 36}))
    study = simulate_study(cfg, noise=False)
    params = np.zeros((study.series.n_frames, 6))
    for frames, pose in jerks.items():
        params[list(frames)] = pose
    centre = np.array([cfg.head_offset_mm[0], cfg.head_offset_mm[1], 0.0])
    data = apply_motion(
        study.series.data, params, study.series.affine, centre, -1000.0 if modality == "CT" else 0.0
    )
    add_noise(data, cfg, np.random.default_rng(11))
    study.series = study.series.with_data(data)
    return study
