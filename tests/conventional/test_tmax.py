"""Tmax: pure shifts of a real arterial curve, and the Kudo-style tile phantom (issue 11.4).

Measured numbers and the reasons for each tolerance are in docs/analyze.md ("Tmax, the CBV
window and the tile phantom").
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perfnet.conventional.aif import arterial_input
from perfnet.conventional.deconvolution import deconvolve
from perfnet.phantom.tiles import tile_phantom

PATIENT = Path(__file__).resolve().parent.parent / "data" / "osipi-dsc-patient"
SHIFTS = np.array([0.0, 1.0, 2.0, 3.0])


@lru_cache(maxsize=1)
def osipi_arterial_curve() -> np.ndarray:
    """The AIF perfnet picks in OSIPI's real DSC crop around an MCA (1 s frames)."""
    conc = np.asarray(nib.load(PATIENT / "test_concentration.nii").dataobj, dtype=np.float32)
    times = np.arange(conc.shape[-1], dtype=float)
    result = arterial_input(conc, times, np.ones(conc.shape[:3], dtype=bool), (1.0, 1.0, 1.0))
    return result.aif.astype(np.float64)


def shifted_tmax(method: str) -> np.ndarray:
    aif = osipi_arterial_curve()
    times = np.arange(aif.size, dtype=float)
    curves = np.array([np.interp(times - s, times, aif, left=0.0) for s in SHIFTS])
    return deconvolve(curves, aif, 1.0, method).tmax


@pytest.mark.parametrize("method", ["csvd", "tikhonov"])
def test_pure_shift_of_the_real_aif_gives_the_shift(method: str) -> None:
    """The AIF deconvolved with itself shifted by 0–3 s: a narrow, symmetric residue peak read
    at its trapezoid cell's centre (formerly at its start: 0/0.5/1.5/2.5 s)."""
    np.testing.assert_allclose(shifted_tmax(method), SHIFTS, atol=0.15)


def test_osvd_pure_shift_keeps_its_half_frame_offset() -> None:
    """oSVD smooths a pure shift into a broad peak (±2 frames above 0.6 of it) that no local
    feature tells from the broad residues of dispersed tissue; reading those at the cell centre
    made the phantom table worse (see svd.NARROW_PEAK), so oSVD reads shift − 0.5 s."""
    tmax = shifted_tmax("osvd")
    assert tmax[0] == pytest.approx(0.0, abs=0.05)
    np.testing.assert_allclose(tmax[1:], SHIFTS[1:] - 0.5, atol=0.1)


@pytest.mark.xfail(strict=True, reason="oSVD reads a pure shift 0.5 s early (docs/analyze.md: Tmax)")
def test_osvd_pure_shift_within_target() -> None:
    np.testing.assert_allclose(shifted_tmax("osvd"), SHIFTS, atol=0.15)


def test_boxnlr_and_ssvd_pure_shift() -> None:
    """Box-NLR's delay (the box start) reads 0.25 s early; sSVD (causal, P = 0.2) cannot place a
    delta-like residue: 0/0/0.16/3.01 s."""
    np.testing.assert_allclose(shifted_tmax("boxnlr"), [0.0, 0.75, 1.75, 2.75], atol=0.1)
    ssvd = shifted_tmax("ssvd")
    assert ssvd[0] == pytest.approx(0.0, abs=0.05) and ssvd[3] == pytest.approx(3.0, abs=0.15)


# --- Kudo-style tile phantom, noise-free ---------------------------------------------------

#: Measured range of Tmax − delay over the noise-free exponential and gamma tiles (MTT 3.4–24 s,
#: delays 0–3 s, AIF arrival 5.0 / 5.3 / 5.7 s): the regulariser blurs the residue's jump at the
#: delay and its maximum lands 1–3 s later, more for longer MTT; box-NLR fits a box whose start
#: lies up to 2 s before the delay of an exponential residue. Nothing here meets 0.2 s (docs/analyze.md).
TILE_TMAX_RANGE = {
    "ssvd": (-1.0, 5.0),
    "csvd": (1.3, 3.2),
    "osvd": (-0.2, 2.7),
    "tikhonov": (1.0, 2.55),
    "boxnlr": (-2.1, 0.05),
}
#: Measured correlation of Tmax with the delay, per family (exponential, gamma), lower bounds.
TILE_TMAX_R = {"ssvd": 0.8, "csvd": 0.87, "osvd": 0.84, "tikhonov": 0.9, "boxnlr": 0.84}


@lru_cache(maxsize=3)
def tiles(arrival: float):
    return tile_phantom(tile=1, arrival_s=arrival, residues=("exponential", "gamma"))


@pytest.mark.parametrize("arrival", [5.0, 5.3, 5.7])
@pytest.mark.parametrize("method", sorted(TILE_TMAX_RANGE))
def test_tile_tmax_tracks_the_delay_within_the_measured_offsets(method: str, arrival: float) -> None:
    phantom = tiles(arrival)
    tmax = deconvolve(phantom.curves, phantom.aif, 1.0, method).tmax
    error = tmax - phantom.delay
    lo, hi = TILE_TMAX_RANGE[method]
    assert lo <= error.min() and error.max() <= hi, (error.min(), error.max())
    for family in ("exponential", "gamma"):
        sel = phantom.residue == family
        assert np.corrcoef(tmax[sel], phantom.delay[sel])[0, 1] >= TILE_TMAX_R[method]


def test_tile_tmax_offset_is_steady_within_an_mtt_row() -> None:
    """What a user can rely on: at one MTT, Tmax steps with the delay (oSVD, exponential
    residue, MTT 4.8–12 s: every 0.5 s step reads 0.5 ± 0.35 s later, never earlier)."""
    phantom = tiles(5.3)
    tmax = deconvolve(phantom.curves, phantom.aif, 1.0, "osvd").tmax
    for mtt in (4.8, 6.0, 8.0, 12.0):
        sel = (phantom.residue == "exponential") & (phantom.cbv == 3.0) & np.isclose(phantom.mtt, mtt)
        steps = np.diff(tmax[sel][np.argsort(phantom.delay[sel])])
        assert np.all(np.abs(steps - 0.5) <= 0.35), (mtt, steps)
