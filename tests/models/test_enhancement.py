"""The CNN's missed-core check (perfnet.inference.enhancement): barely enhancing tissue that the
network reads as normal raises ``cnn_unenhanced_normal``."""

from __future__ import annotations

import numpy as np
import pytest

from perfnet import qc
from perfnet.inference import enhancement
from perfnet.io.types import PerfusionSeries


def _series(core_amplitude: float) -> tuple[PerfusionSeries, np.ndarray]:
    """A 30×30×2 DSC series (1 s frames): one bolus everywhere, a 10×10 block per slice (200
    voxels) enhancing at ``core_amplitude`` of the rest."""
    times = np.arange(60.0)
    bolus = np.where(times > 10, ((times - 10) / 6) ** 3 * np.exp(-(times - 10) / 2), 0.0)
    bolus /= bolus.max()
    amplitude = np.ones((30, 30, 2))
    core = np.zeros((30, 30, 2), bool)
    core[5:15, 5:15] = True
    amplitude[core] = core_amplitude
    r2 = 0.5 * amplitude[..., None] * bolus  # delta R2* * TE
    data = (1000.0 * np.exp(-r2)).astype(np.float32)
    return PerfusionSeries(data, times, np.diag([1.0, 1.0, 10.0, 1.0]), "MR"), core


def test_peak_enhancement_is_relative_to_the_tissue_median() -> None:
    series, core = _series(0.1)
    tissue = np.ones(core.shape, bool)
    tissue[0] = False
    relative = enhancement.peak_enhancement(series, 8, tissue)
    assert np.median(relative[tissue]) == pytest.approx(1.0)
    assert relative[core].max() < 0.12 and relative[core].min() > 0.08
    assert (relative[~tissue] == 0).all()


@pytest.mark.parametrize(
    ("core_amplitude", "core_tmax", "flagged"),
    [
        (0.1, 1.0, True),  # barely enhancing, read as normal: the flag
        (0.1, 12.0, False),  # barely enhancing, read as hypoperfused: the network saw it
        (0.5, 1.0, False),  # enhancing at half the median: not "barely"
    ],
)
def test_flag_raised_only_where_flat_tissue_is_read_as_normal(
    core_amplitude: float, core_tmax: float, flagged: bool
) -> None:
    series, core = _series(core_amplitude)
    tissue = np.ones(core.shape, bool)
    tmax = np.where(core, core_tmax, 1.0).astype(np.float32)
    relative = enhancement.peak_enhancement(series, 8, tissue)
    result = enhancement.unenhanced_normal(relative, tmax, tissue, voxel_ml=1.0)
    # 200 voxels at 1 mL each: the whole block (a 10 x 10 square survives the 3 x 3 opening)
    expected = 200.0 if flagged else 0.0
    assert result["region_ml"] == pytest.approx(expected)
    assert result["low_enhancing_ml"] == pytest.approx(200.0 if core_amplitude < 0.2 else 0.0)
    flags = enhancement.unenhanced_flags(result)
    assert [f["code"] for f in flags] == (["cnn_unenhanced_normal"] if flagged else [])
    if flagged:
        assert "200 mL" in flags[0]["message"] and "20%" in flags[0]["message"]
        assert qc.verdict(flags) == "review"


def test_small_regions_and_single_voxels_raise_nothing() -> None:
    series, core = _series(0.1)
    tissue = np.ones(core.shape, bool)
    tmax = np.ones(core.shape, np.float32)
    relative = enhancement.peak_enhancement(series, 8, tissue)
    small = enhancement.unenhanced_normal(relative, tmax, tissue, voxel_ml=0.02)  # 200 voxels: 4 mL
    assert small["region_ml"] == pytest.approx(4.0) and enhancement.unenhanced_flags(small) == []
    speck = np.ones(core.shape, np.float32)
    speck[20, 20, 0] = 0.0  # one voxel: removed by the in-plane opening
    single = enhancement.unenhanced_normal(speck, tmax, tissue, voxel_ml=1.0)
    assert single["region_ml"] == 0.0 and single["low_enhancing_ml"] == 1.0
    assert enhancement.unenhanced_flags(None) == []


@pytest.mark.slow
def test_bundled_mr_missed_core_is_flagged() -> None:
    """71106 of benchmarks/generalisation.py (style B, a 118 mL core at 11 % of healthy CBF): the
    MR network reads the core as Tmax ~1 s (hypoperfused Dice 0.64, no core found) and says
    nothing else; the check raises ``cnn_unenhanced_normal`` (verdict review)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from generalisation import lesion_of, study_seed

    from perfnet.inference.cnn import predict
    from perfnet.inference.series import prepare_series
    from perfnet.phantom.styles import draw_config, simulate

    study = simulate(
        draw_config("mni", study_seed("mni", "MR", 6), "MR", matrix=128, slices=8, lesion=lesion_of(6))
    )
    prepared = prepare_series(study.series)
    maps = predict(prepared.series, device="cpu", prepared=prepared, consistency=False)
    core = study.truth.masks["core"] & maps.brain_mask
    assert (maps["tmax"][core] > 6).mean() < 0.2  # the miss
    checked = maps.provenance["unenhanced_normal"]
    assert checked["region_ml"] > enhancement.MIN_ML
    assert "cnn_unenhanced_normal" in {f["code"] for f in maps.provenance["qc_flags"]}
    assert maps.provenance["verdict"] in ("review", "unreliable")
