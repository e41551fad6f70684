"""A bolus slower than the networks trained on, read on a compressed time axis where the reading
as acquired is late (:mod:`perfnet.inference.timescale`)."""

from __future__ import annotations

import numpy as np
import pytest

import perfnet
from perfnet.errors import PerfnetInputError
from perfnet.inference import cnn, domain, timescale
from perfnet.inference.cnn import COMPRESSED_STEP
from perfnet.phantom import PhantomConfig, simulate_study

TRAINED = {"bolus_rise_s": [6.0, 12.0], "after_arrival_s": [30.0, 100.0], "head_motion_mm": [0.0, 0.5]}


def test_only_a_rise_beyond_the_limit_is_compressed_and_only_into_the_envelope() -> None:
    assert domain.limit("bolus_rise_s", TRAINED) == 15.0
    # inside the margin: read as acquired
    assert timescale.time_scale({"bolus_rise_s": 14.0, "after_arrival_s": 80.0}, [TRAINED]) is None
    # beyond it: just inside the limit, the least compression that brings it in
    scaled = timescale.time_scale({"bolus_rise_s": 24.0, "after_arrival_s": 80.0}, [TRAINED])
    assert scaled == {"factor": 1.6, "bolus_rise_s": 24.0, "read_at_rise_s": 15.0, "trained_rise_s": 12.0}
    # held so that the compressed acquisition runs as long after the arrival as the shortest trained
    held = timescale.time_scale({"bolus_rise_s": 24.0, "after_arrival_s": 45.0}, [TRAINED])
    assert held["factor"] == 1.5 and held["read_at_rise_s"] == 16.0
    assert held["held_by"] == "acquisition after the arrival"
    assert timescale.time_scale({"bolus_rise_s": 24.0, "after_arrival_s": 25.0}, [TRAINED]) is None
    # never more than 2× (a rise read wrong must not stretch a study further than measured)
    held = timescale.time_scale({"bolus_rise_s": 60.0, "after_arrival_s": 90.0}, [TRAINED])
    assert held["factor"] == 2.0 and held["read_at_rise_s"] == 30.0 and held["held_by"] == "at most ×2"
    # an ensemble: compressed only when outside every member, inside the narrowest member's limit
    other = TRAINED | {"bolus_rise_s": [6.0, 16.0]}
    assert timescale.time_scale({"bolus_rise_s": 19.0}, [TRAINED, other]) is None
    assert timescale.time_scale({"bolus_rise_s": 24.0}, [TRAINED, other])["factor"] == 1.6
    # weights without a recorded rise, or a study without one: never
    no_rise = {k: v for k, v in TRAINED.items() if k != "bolus_rise_s"}
    assert timescale.time_scale({"bolus_rise_s": 40.0}, [no_rise]) is None
    assert timescale.time_scale({"bolus_rise_s": 40.0}, [TRAINED, None]) is None
    assert timescale.time_scale({"after_arrival_s": 80.0}, [TRAINED]) is None


def test_maps_read_on_the_compressed_axis_are_mapped_back() -> None:
    """Times ÷ s: Tmax, MTT, TTP read s times shorter, CBF s times higher, CBV the same."""
    read = np.array([2.0, 4.0], dtype=np.float32)
    assert np.allclose(timescale.restored(read, "tmax", 2.0), [4.0, 8.0])
    assert np.allclose(timescale.restored(read, "mtt", 2.0), [4.0, 8.0])
    assert np.allclose(timescale.restored(read, "cbf", 2.0), [1.0, 2.0])
    assert timescale.restored(read, "cbv", 2.0) is read and timescale.restored(read, "tmax", 1.0) is read
    assert timescale.restored(read, "cbf", 2.0).dtype == np.float32
    # a core rule read on the flow above the network's floor: the floor is in its CBF units
    record = {"factor": 0.67, "offset": 6.0, "references": [20.0, 44.0], "source": "x"}
    assert timescale.calibration(record, 2.0) == record | {"offset": 3.0, "references": [10.0, 22.0]}
    assert timescale.calibration(record, 1.0) is record
    assert timescale.calibration({"factor": 1.2}, 2.0) == {"factor": 1.2}


def test_the_gate_reads_the_healthy_tissue_of_a_reading() -> None:
    """A reading is late where the median Tmax over the brain voxels it reads ≤ 6 s exceeds 2.3 s
    (a lesion's Tmax above 6 s does not move it); the modes' names."""
    brain = np.ones(10, dtype=bool)
    on_time = np.array([1.0] * 5 + [2.0] * 3 + [9.0, 12.0], dtype=np.float32)
    assert timescale.healthy_median(on_time, brain) == 1.0 and not timescale.late_read(1.0)
    late = np.array([2.5] * 6 + [8.0] * 4, dtype=np.float32)
    assert timescale.healthy_median(late, brain) == 2.5 and timescale.late_read(2.5)
    assert timescale.healthy_median(np.full(10, 8.0), brain) is None and not timescale.late_read(None)
    assert timescale.mode_of(None) == timescale.DEFAULT_MODE == "gated"
    assert timescale.mode_of(True) == "always" and timescale.mode_of(False) == "off"
    with pytest.raises(PerfnetInputError, match="--time-scaling"):
        timescale.mode_of("sometimes")


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_a_slow_bolus_read_late_is_read_again_compressed(modality: str, monkeypatch) -> None:
    """The shape-12, 16 s bolus of the slow-bolus domain test (brain rise 23–30 s; the networks
    trained on ≤ 12.7 (CT) / 14.8 s (MR)): read as acquired (``off``), its healthy Tmax comes out
    late (stop 48, seed 4242: MR +3.7 s, CT +1.5 s) and so does the network's own healthy median;
    the default (``gated``) sees that and reads it again compressed just inside the limit, mapped
    back: within 0.5 s, and TTP nearer its truth. The study stays flagged for its rise."""
    acquisition = {"matrix": 64, "slices": 4, "frames": 90, "frame_interval_s": 1.2, "timing": "uniform"}
    cfg = PhantomConfig.draw(
        4242, modality, motion=False, lesion="penumbra", aif_alpha=12.0, aif_fwhm_s=16.0, **acquisition
    )
    study = simulate_study(cfg)
    truth = study.truth
    healthy = truth.masks["brain"] & ~truth.masks["hypoperfused"]
    # perfnet.analyze, as `perfnet analyze --method cnn [--time-scaling off]`
    steps: dict[str | None, list[tuple[str, float]]] = {"off": [], None: []}
    shift_checks: list[str | None] = []  # the shift check's readings (two passes each), per mode
    shifted_tmax = cnn._shifted_tmax

    def counted(*args, **kwargs):
        shift_checks.append(mode)
        return shifted_tmax(*args, **kwargs)

    monkeypatch.setattr(cnn, "_shifted_tmax", counted)
    read = {}
    for mode in ("off", None):
        read[mode] = perfnet.analyze(
            study.series,
            "cnn",
            device="cpu",
            time_scaling=mode,
            progress=lambda s, f, m=mode: steps[m].append((s, f)),
        ).maps
    # the gated study's shift check runs on the reading it keeps only, not on the discarded one
    assert shift_checks == ["off", None]
    bias = {}
    for mode, maps in read.items():
        inside = healthy & maps.brain_mask
        bias[mode] = {k: float(np.median(maps[k][inside] - truth.maps[k][inside])) for k in ("tmax", "ttp")}
    off, gated = read["off"], read[None]
    assert "time_scale" not in off.provenance and "time_scale_gate" not in off.provenance
    # the gate's median is the reading as acquired's own
    gate = gated.provenance["time_scale_gate"]
    median = timescale.healthy_median(off["tmax"], off.brain_mask)
    assert gate["healthy_tmax_median_s"] == pytest.approx(median, abs=1e-3) and median > 2.3
    assert gate["compressed"] is True and gate["late_above_s"] == timescale.LATE_READ_S
    scaled = gated.provenance["time_scale"]
    assert scaled["mode"] == "gated" and scaled["factor"] == gate["factor"]
    rise = gated.provenance["study_descriptors"]["bolus_rise_s"]
    limit = domain.limit("bolus_rise_s", gated.provenance["training_domain"])
    assert scaled["factor"] == pytest.approx(rise / limit, abs=1e-3) and scaled["factor"] > 1.3
    assert bias["off"]["tmax"] > 1.2 and abs(bias[None]["tmax"]) < 0.5
    # the shift check moved the compressed grid by 3 s: 3 × s of the study's own seconds
    checked = gated.provenance["shift_consistency"]
    assert checked["shift_s"] == pytest.approx(3.0 * scaled["factor"], abs=1e-3)
    assert sorted(checked["shifts"]) == sorted(f"{k * scaled['factor']:+g}" for k in (-3.0, 3.0))
    assert abs(bias[None]["ttp"]) < abs(bias["off"]["ttp"])
    # progress: the second reading is its own step, not the first one starting over
    started = [s for s, f in steps[None] if f == 0.0]
    assert started.count("network") == 1 == started.count("network" + COMPRESSED_STEP)
    assert [s for s, f in steps["off"] if f == 0.0].count("network") == 1
    for maps in read.values():
        codes = [f["code"] for f in maps.provenance["qc_flags"]]
        assert "outside_training_domain" in codes and maps.provenance["verdict"] == "unreliable"
    if modality == "CT":  # the other modes, on the cheaper study
        always = perfnet.analyze(study.series, "cnn", device="cpu", time_scaling="always").maps
        assert always.provenance["time_scale"] == scaled | {"mode": "always"}
        assert "time_scale_gate" not in always.provenance
        assert np.array_equal(always["tmax"], gated["tmax"])
        # a reading on time is kept as acquired: the gate set above this one's median
        monkeypatch.setattr(timescale, "LATE_READ_S", median + 0.1)
        kept = perfnet.analyze(study.series, "cnn", device="cpu").maps
        assert "time_scale" not in kept.provenance
        assert kept.provenance["time_scale_gate"]["compressed"] is False
        assert np.array_equal(kept["tmax"], off["tmax"])
        # its shift check, run after the gate on the reading kept, is the reading as acquired's
        assert kept.provenance["shift_consistency"] == off.provenance["shift_consistency"]


def test_time_scaling_is_a_cnn_option() -> None:
    series = simulate_study(PhantomConfig.draw(5, "CT", matrix=32, slices=2, frames=30)).series
    with pytest.raises(PerfnetInputError, match="--time-scaling"):
        perfnet.analyze(series, "osvd", time_scaling=True)
