"""A bolus slower than a network trained on, read on a compressed time axis where it is read late.

The indicator-dilution model the maps are defined by is equivariant to a change of time scale.
With the tissue curve C(t) = CBF · (AIF ⊗ R)(t) and every time read as t' = t / s,

    C(s t') = s · CBF · (AIF_s ⊗ R_s)(t'),   AIF_s(t') = AIF(s t'),  R_s(t') = R(s t'),

so the same frames given to a network with their times divided by s are a study whose bolus is s
times narrower, whose Tmax, MTT and TTP are s times shorter, whose CBF is s times higher and whose
CBV is the same. A network reads a bolus slower than any it trained on late (docs/cnn.md "A slow
bolus": the bundled MR network's healthy Tmax +1.7 s on a first pass rising 23 s where its
training rose at most 15 s; the CT U-Net +5 s on a 23 s rise); compressed into the rises it
trained on, the same study is inside its training domain on that count, and its maps are the
network's reading of the compressed study mapped back (:func:`restored`).

When (:func:`time_scale`): only for a study the bolus-rise check flags, i.e. whose rise exceeds the
network's training envelope by more than the margin of
:data:`perfnet.inference.domain.MARGINS` (a study inside the margin is read as acquired: on the
CT style-B studies whose rise lies between the envelope and its margin, compressing them to the
envelope changed Tmax MAEC by −0.07 to +0.10 s, nothing to gain). How much: the least that brings
the rise inside, s = rise / the flag's limit, held so that the compressed acquisition still runs
at least as long after the bolus arrival as the shortest one the network trained on. The
compression has a cost: whatever the network reads wrong on the compressed axis comes back s
times larger (measured: compressing further, to the envelope itself, read MR style B's flagged
studies' Tmax better but turned a few hundred healthy voxels of a moving CT study into 7 s of
Tmax, hypoperfused Dice 0.84 → 0.64; just inside the limit kept every Dice). The study stays
flagged ``outside_training_domain`` for its rise (the maps are an extrapolation by the model's
symmetry, not a study like its training ones); provenance.json's ``time_scale`` says by how much
it was compressed, and its ``time_grid`` is the compressed axis the network read.

Measured at stop 48 (docs/cnn.md "A slow bolus", ``benchmarks/generalisation.py --time-scaling
always``): on the benchmark's style-B studies the bolus-rise check flags, Tmax MAEC 1.47 → 1.14 s
(MR, 7 studies) and 1.06 → 0.61 s (CT, 4), Dice kept; on 16 other flagged style-B seeds, which
played no part in its design, nothing gained (CT Tmax MAEC 0.81 → 0.80 s, hypoperfused Dice 0.868
→ 0.865, core Dice 0.42 → 0.25; MR 1.34 → 1.39 s, hypoperfused Dice 0.84 → 0.80, core Dice 0.43 →
0.29: one study's 137 mL core lost). It helped where the network read the study late as acquired
and hurt where it read it on time: a slow bolus does not by itself make these networks late.

So the default (``gated``, stop 49) reads a flagged study as acquired first and compresses it only
where that reading is late (:func:`late_read`): the median Tmax over the brain voxels the network
reads at most 6 s (the tissue it calls not at risk) above :data:`LATE_READ_S`. Healthy tissue's
Tmax is a second or two; a network that puts the median of what it calls healthy above 2.3 s is
reading the whole study late. The threshold was chosen on the 27 flagged studies above (≥ 2.45 s on
every one read ≥ 1.07 s late, ≤ 1.94 s on all others but two) and checked on 51 fresh flagged
style-B seeds (indices 33–99 of the generalisation benchmark's): on CT it took 6 of 27, the 3 read
≥ 1 s late among them; over the 27, Tmax MAEC 0.97 → 0.78 s, hypoperfused Dice 0.849 → 0.889, core
Dice 0.451 → 0.445 (every flagged study compressed: 0.74 s, 0.888, 0.397); on MR exactly the 5 of 24
read ≥ 1 s late: Tmax MAEC 1.23 → 1.08 s, hypoperfused Dice 0.796 → 0.799, core Dice 0.241 → 0.227
(every one compressed: 1.02 s, 0.808, 0.233). A gated study costs a second reading. The true
healthy Tmax median of a study bounds such a gate: a study whose healthy tissue really is late
(style B's reaches 2.6 s) and whose bolus is slow is compressed too.
``predict(..., time_scaling="always")`` (``--time-scaling always``) compresses every flagged study,
``"off"`` none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from perfnet.inference import domain

if TYPE_CHECKING:
    from perfnet.preprocess.shared import Preprocessed

#: how each map's value scales with the time axis (value in real time = value read × s ** power)
POWERS: dict[str, int] = {"tmax": 1, "mtt": 1, "ttp": 1, "cbf": -1, "cbv": 0}
#: the most a study is compressed: 2× (the flagged studies measured at stop 48 needed 1.01–1.61×);
#: a rise read wrong (a noisy brain curve's late peak) must not stretch a study further than that
MAX_FACTOR = 2.0
#: how a CNN reads a study the bolus-rise check flags: ``off`` (as acquired), ``always``
#: (compressed, the stop-48 reading) or ``gated`` (compressed only where the network, reading it as
#: acquired, puts the healthy tissue late: :func:`late_read`)
MODES = ("off", "gated", "always")
#: the mode of ``time_scaling=None`` (the CLI's default)
DEFAULT_MODE = "gated"
#: the gate: a reading as acquired is late where the median Tmax over the brain voxels it reads at
#: most :data:`HEALTHY_TMAX_S` exceeds this (s). Chosen at stop 48 on 27 flagged style-B studies
#: (≥ 2.45 s on every study read ≥ 1.07 s late, ≤ 1.94 s on all others but two) and checked at
#: stop 49 on 51 fresh ones (module docstring)
LATE_READ_S = 2.3
#: the voxels the gate's median is taken over: what the network reads as tissue not at risk
#: (the lesion rule's Tmax threshold), so a lesion's size does not move it
HEALTHY_TMAX_S = 6.0


def mode_of(time_scaling: bool | str | None) -> str:
    """A ``time_scaling`` argument → one of :data:`MODES` (None: :data:`DEFAULT_MODE`; True:
    ``always``; False: ``off``)."""
    if time_scaling is None:
        return DEFAULT_MODE
    if isinstance(time_scaling, bool):
        return "always" if time_scaling else "off"
    if time_scaling not in MODES:
        from perfnet.errors import PerfnetInputError

        raise PerfnetInputError("--time-scaling", f"must be one of {', '.join(MODES)}, got {time_scaling!r}")
    return time_scaling


def healthy_median(tmax: np.ndarray, brain: np.ndarray) -> float | None:
    """The median Tmax (s) over the ``brain`` voxels a reading puts at most :data:`HEALTHY_TMAX_S`
    (None where there are none)."""
    values = tmax[brain]
    values = values[np.isfinite(values) & (values <= HEALTHY_TMAX_S)]
    return float(np.median(values)) if values.size else None


def late_read(median: float | None) -> bool:
    """Whether a reading whose healthy Tmax median is ``median`` is late (:data:`LATE_READ_S`)."""
    return median is not None and median > LATE_READ_S


def time_scale(described: dict[str, float], domains: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The compression of a study's time axis for networks with training ``domains`` (one per
    ensemble member), or None where it is read as acquired: its ``factor`` s (> 1), the study's
    rise and the rise it is read at. None where the study's bolus rise lies inside any member's
    limit, or a member records no rise."""
    rise = described.get("bolus_rise_s")
    if rise is None or not domains or any(not d or "bolus_rise_s" not in d for d in domains):
        return None
    known = [d for d in domains if d]
    limits = [domain.limit("bolus_rise_s", d) for d in known]
    if not all(lim is not None and rise > lim for lim in limits):
        return None
    slowest = min(float(domain.envelope_bound("bolus_rise_s", d) or 0.0) for d in known)
    target = min(lim for lim in limits if lim is not None)  # just inside the narrowest member's limit
    if target <= 0:
        return None
    factor = rise / target
    after = described.get("after_arrival_s")
    shortest = [b for d in known if (b := domain.envelope_bound("after_arrival_s", d)) is not None]
    held_by = None
    if after is not None and shortest:
        most = float(after) / max(shortest)
        if most < factor:
            factor, held_by = most, "acquisition after the arrival"
    if factor > MAX_FACTOR:
        factor, held_by = MAX_FACTOR, f"at most ×{MAX_FACTOR:g}"
    if factor <= 1.0:
        return None
    record = {
        "factor": round(factor, 4),
        "bolus_rise_s": round(float(rise), 3),
        "read_at_rise_s": round(float(rise) / factor, 3),
        "trained_rise_s": round(slowest, 3),
    }
    return record | ({"held_by": held_by} if held_by else {})


def compressed(prepared: Preprocessed, factor: float) -> Preprocessed:
    """``prepared`` with its analysed series' frame times and its bolus timing divided by
    ``factor`` (the frames and everything else shared; what the network reads)."""
    series = prepared.series
    bolus = prepared.bolus
    return replace(
        prepared,
        corrected=replace(series, times=np.asarray(series.times, dtype=np.float64) / factor),
        bolus=replace(bolus, arrival_s=bolus.arrival_s / factor, peak_s=bolus.peak_s / factor),
    )


def restored(values: np.ndarray, name: str, factor: float) -> np.ndarray:
    """A map (or its Laplace scale) read on the compressed axis → the study's own time scale
    (maps without a known power returned as they are). TTP's offsets are added by the caller."""
    power = POWERS.get(name, 0)
    if factor == 1.0 or power == 0:
        return values
    return (values * np.float32(factor**power)).astype(values.dtype, copy=False)


def calibration(record: dict[str, Any] | None, factor: float) -> dict[str, Any] | None:
    """A weights' ``core_calibration`` for maps restored from the compressed axis: its CBF offset
    and reference range were in the network's CBF units, which the restored CBF divides by s."""
    if not record or factor == 1.0 or not record.get("offset"):
        return record
    out = dict(record)
    out["offset"] = float(record["offset"]) / factor
    if record.get("references") is not None:
        out["references"] = [float(v) / factor for v in record["references"]]
    return out
