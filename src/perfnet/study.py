"""The one place where a study is analysed: ``perfnet.analyze(study, method=…) -> StudyResult``.

The command line, the demo, the cohort runner and notebooks all call it::

    from perfnet import analyze
    result = analyze("sub-01_ses-01_ctp.nii.gz", method="osvd")
    result                       # StudyResult(osvd, CT 256×256×8×40: core 11.2 mL, …, QC ok)
    result.maps["tmax"]          # numpy (X, Y, Z), s
    result.lesions["volumes_ml"]
    result.save("out/", formats=("nifti", "report"))

A :class:`StudyResult` holds the maps (with the core / penumbra / hypoperfused masks), the
lesions.json content, the QC flags and verdict, the provenance, and the series the maps came from.
``save`` writes it through the output writers of :mod:`perfnet.io.writers` into an output folder
that is replaced whole (:class:`perfnet.io.output.OutputFolder`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from perfnet import plausibility
from perfnet.constants import HEMATOCRIT_FACTOR, TISSUE_DENSITY
from perfnet.errors import PerfnetInputError, about
from perfnet.io.types import PerfusionMaps, PerfusionSeries

Progress = Callable[[str, float], None]
MaskLike = np.ndarray | str | Path | None


def qc_verdict(flags: Sequence[dict[str, Any]]) -> str:
    """``ok`` / ``review`` / ``unreliable`` (:func:`perfnet.qc.verdict`)."""
    from perfnet.qc import verdict

    return verdict(flags)


def _in_late_tissue(maps: PerfusionMaps, prepared: Any) -> dict[str, Any]:
    """lesions.json's ``in_late_tissue_ml`` where the input QC raised ``late_bolus``: of each lesion
    volume, the part in the tissue still enhancing at the last frame (``prepared.late``,
    :func:`perfnet.qc.late_tissue`), whose CBF, Tmax and core no method measured."""
    late = prepared.late
    raised = any(f["code"] == "late_bolus" for f in prepared.qc_flags)
    if not raised or late is None or late.shape != maps.brain_mask.shape:
        return {}
    from perfnet.lesions import voxel_volume_ml

    voxel_ml = voxel_volume_ml(maps.affine)
    names = ("core", "hypoperfused", "penumbra")
    return {
        "in_late_tissue_ml": {k: round(float((maps.masks[k] & late).sum()) * voxel_ml, 2) for k in names}
        | {"late_tissue": prepared.qc_measures["late_peak_ml"]}  # the input QC's measure of ``late``
    }


def _merge_flags(*groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flags of all groups, each code once (the first occurrence kept)."""
    seen: set[str] = set()
    out = []
    for flags in groups:
        for f in flags:
            if f["code"] not in seen:
                seen.add(f["code"])
                out.append(f)
    return out


@dataclass
class StudyResult:
    """Everything one analysis produced (see the module docstring)."""

    maps: PerfusionMaps
    series: PerfusionSeries
    lesions: dict[str, Any]
    aif: dict[str, Any] | None = None
    source: str | None = None
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.maps.method

    @property
    def provenance(self) -> dict[str, Any]:
        return self.maps.provenance

    @property
    def qc_flags(self) -> list[dict[str, Any]]:
        return list(self.provenance.get("qc_flags", []))

    @property
    def verdict(self) -> str:
        return str(self.provenance.get("qc_verdict") or qc_verdict(self.qc_flags))

    def json_files(self) -> dict[str, Any]:
        """The JSON side files of the output set, by name."""
        files = {"lesions": self.lesions, "provenance": self.provenance}
        return ({"aif": self.aif} if self.aif is not None else {}) | files

    def __repr__(self) -> str:
        v = self.lesions["volumes_ml"]
        shape = "×".join(str(n) for n in self.series.shape)
        flags = ", ".join(f["code"] for f in self.qc_flags) or "none"
        return (
            f"StudyResult({self.method}, {self.series.modality} {shape}: core {v['core']:.1f} mL,"
            f" hypoperfused {v['hypoperfused']:.1f} mL, penumbra {v['penumbra']:.1f} mL;"
            f" QC {self.verdict} ({flags}))"
        )

    def write(self, folder: Path, formats: Sequence[str] = ("nifti", "report"), **options: Any) -> list[Path]:
        """Write the result into ``folder`` (a staging folder) with the named writers."""
        from perfnet.io.writers import WRITERS, check_formats

        written: list[Path] = []
        for name in check_formats(formats):
            written += WRITERS[name].write(self, Path(folder), **options)
        return written

    def save(
        self,
        out: str | Path,
        formats: Sequence[str] = ("nifti", "report"),
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> list[Path]:
        """Write the result to ``out``, replacing an earlier perfnet output there as a whole."""
        from perfnet.io.output import OutputFolder
        from perfnet.io.writers import check_formats

        check_formats(formats)
        with OutputFolder(out, overwrite=overwrite, command="analyze") as folder:
            self.provenance["run_id"] = self.run_id = folder.run_id
            written = self.write(folder.staging, formats, **options)
        return [Path(out) / p.relative_to(folder.staging) for p in written]


def _mask(mask: MaskLike, shape: tuple[int, ...], option: str) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, str | Path):
        from perfnet.io import load_map

        data, _ = load_map(mask)
        source: Any = mask
    else:
        data, source = np.asarray(mask), option
    if data.shape != shape:
        raise PerfnetInputError(source, f"mask shape {data.shape} differs from the series grid {shape}")
    return data > 0.5


def lesion_settings(
    preset: str = "rapid",
    tmax_threshold_s: float | None = None,
    core_relative_cbf: float | None = None,
    reference: str = "contralateral",
) -> Any:
    """The lesion thresholds of a preset with any overrides."""
    from perfnet.lesions import PRESETS

    if preset not in PRESETS:
        raise PerfnetInputError("--lesion-preset", f"unknown preset {preset!r} ({', '.join(PRESETS)})")
    settings = PRESETS[preset]
    if tmax_threshold_s is not None:
        settings = replace(settings, tmax_threshold_s=tmax_threshold_s)
    if core_relative_cbf is not None:
        settings = replace(settings, core_relative_cbf=core_relative_cbf)
    return replace(settings, reference=reference).check()


def analyze(
    study: str | Path | PerfusionSeries,
    method: str | None = None,
    *,
    weights: str | Path | Sequence[str | Path] | None = None,
    modality: str | None = None,
    frame_interval: float | None = None,
    echo_time: float | None = None,
    motion_correction: bool = True,
    bilateral_filter: bool = True,
    temporal_smoothing_s: float = 0.0,
    hematocrit_factor: float = HEMATOCRIT_FACTOR,
    tissue_density: float = TISSUE_DENSITY,
    device: str | None = None,
    skip_frames: int | None = None,
    brain_mask: MaskLike = None,
    aif_mask: MaskLike = None,
    vof_mask: MaskLike = None,
    adc: str | Path | np.ndarray | None = None,
    lesion_preset: str = "rapid",
    tmax_threshold_s: float | None = None,
    core_relative_cbf: float | None = None,
    reference: str = "contralateral",
    progress: Progress | None = None,
    on_loaded: Callable[[PerfusionSeries], None] | None = None,
    record_input_path: bool = False,
    cross_check: str | None = None,
    time_scaling: bool | str | None = None,
) -> StudyResult:
    """Analyse one study (a NIfTI file, a DICOM folder or a :class:`PerfusionSeries`) with a
    method of :data:`perfnet.registry.METHODS` (default: oSVD); maps, lesions, QC and provenance.

    ``skip_frames``: non-steady-state leading frames to drop (None: detected; 0: keep all).
    ``adc``: an ADC map (a NIfTI file of the same session, any grid, or an array on the series'
    grid): the core is then read from diffusion (ADC < 620 × 10⁻⁶ mm²/s; :mod:`perfnet.lesions.adc`).
    Bad input raises :class:`perfnet.errors.PerfnetInputError` naming the file and the problem.
    The input's path is recorded in the provenance only with ``record_input_path`` (exports are
    often named after the patient).
    ``cross_check`` (CNN methods): a conventional method run on the same preprocessed series whose
    core the CNN's is compared with (:mod:`perfnet.inference.crosscheck`: flag ``cnn_core_disagrees``,
    provenance ``cross_check``).
    ``time_scaling`` (CNN methods): how a bolus slower than the network trained on is read
    (:mod:`perfnet.inference.timescale`: ``"gated"``, the default for None; ``"always"`` or True;
    ``"off"`` or False)."""
    from perfnet.registry import DEFAULT_METHOD, method_names, method_spec

    started = time.perf_counter()
    spec = method_spec(method or DEFAULT_METHOD)
    if weights is not None and not spec.takes_weights:
        raise PerfnetInputError("--weights", f"method {spec.name} takes no weights")
    if time_scaling is not None:
        from perfnet.inference.timescale import mode_of

        mode_of(time_scaling)  # a mode it does not know: refused before any work
        if spec.kind != "cnn":
            raise PerfnetInputError(
                "--time-scaling", f"sets how a CNN reads a slow bolus; method {spec.name} is not a CNN"
            )
    if cross_check is not None:
        if spec.kind != "cnn":
            raise PerfnetInputError("--cross-check", f"checks a CNN's core; method {spec.name} is not a CNN")
        if cross_check not in method_names("conventional"):
            known = ", ".join(method_names("conventional"))
            raise PerfnetInputError(
                "--cross-check", f"must be a conventional method ({known}), got {cross_check!r}"
            )
    for name, value, option in (
        ("hematocrit_factor", hematocrit_factor, "--hematocrit-factor"),
        ("tissue_density", tissue_density, "--tissue-density"),
        ("temporal_smoothing_s", temporal_smoothing_s, "--temporal-smoothing"),
    ):
        plausibility.check(name, value, option)
    settings = lesion_settings(lesion_preset, tmax_threshold_s, core_relative_cbf, reference)
    if isinstance(study, PerfusionSeries):
        series, source = study, study.meta.get("source")
    else:
        from perfnet.io import load_series

        series = load_series(study, modality=modality, frame_interval=frame_interval, echo_time=echo_time)
        source = str(study)
    with about(source):
        plausibility.check_for_analysis(series)
        shape = series.spatial_shape
        masks = {
            "brain_mask": _mask(brain_mask, shape, "--brain-mask"),
            "aif_mask": _mask(aif_mask, shape, "--aif-mask"),
            "vof_mask": _mask(vof_mask, shape, "--vof-mask"),
        }
        if on_loaded is not None:
            on_loaded(series)
        from perfnet.preprocess.shared import preprocess

        # once, before the method branch: the same frames, mask, bolus timing and input QC for all
        prepared = preprocess(
            series,
            skip_frames=skip_frames,
            motion_correction=motion_correction,
            brain_mask=masks["brain_mask"],
            progress=progress,
        )
        adc_map = None
        if adc is not None:  # checked before the method's work: units, coverage, finite values
            from perfnet.lesions.adc import load_adc

            adc_map = load_adc(adc, series.affine, prepared.brain)
        # every method's options, the shared preprocessing included (a cross-check method's too)
        options = {
            "motion_correction": motion_correction,
            "bilateral_filter": bilateral_filter,
            "temporal_smoothing_s": temporal_smoothing_s,
            "hematocrit_factor": hematocrit_factor,
            "tissue_density": tissue_density,
            "device": device,
            "skip_frames": skip_frames,
            "prepared": prepared,
            "time_scaling": time_scaling,
            **masks,
        }
        maps, analysed, aif = spec.run(series, weights=weights, progress=progress, **options)
        from perfnet.lesions import segment_map_set

        lesions = segment_map_set(maps, analysed, settings, adc=adc_map) | {"preset": lesion_preset}
        late = _in_late_tissue(maps, prepared)
        if late:  # where it lies, beside the lesion masks (late.nii.gz)
            maps.masks["late"] = prepared.late
            lesions |= late
        checked = None
        if cross_check is not None:
            from perfnet.inference.crosscheck import compare_cores

            check_started = time.perf_counter()
            from perfnet.lesions import voxel_volume_ml

            other, other_series, _ = method_spec(cross_check).run(series, **options)
            other_lesions = segment_map_set(other, other_series, settings)

            checked = compare_cores(
                lesions,
                other_lesions,
                maps.masks,
                other.masks,
                voxel_volume_ml(series.affine),
                cross_check,
                time.perf_counter() - check_started,
            )
    provenance = maps.provenance
    if not record_input_path:  # exports are often named after the patient
        provenance.get("input", {}).pop("source", None)
    else:
        provenance.setdefault("input", {})["path"] = source
    provenance.setdefault("seconds", {})["total"] = round(time.perf_counter() - started, 3)
    # every method's result carries the shared input QC (a method may add its own flags)
    from perfnet import qc

    # ... and the lesion checks (perfnet.qc.lesion_flags: hypoperfusion on both sides)
    from perfnet.inference.crosscheck import cross_check_flags

    flags = _merge_flags(
        prepared.qc_flags,
        provenance.get("qc_flags", []),
        lesions.get("qc_flags", []),
        cross_check_flags(checked),
    )
    if checked is not None:
        provenance["cross_check"] = checked
    provenance["qc_flags"] = flags
    provenance["qc"] = qc.summary(flags, prepared.qc_measures)
    provenance["verdict"] = provenance["qc_verdict"] = qc_verdict(flags)
    provenance["reliable"] = provenance["qc_verdict"] != "unreliable"
    return StudyResult(maps=maps, series=analysed, lesions=lesions, aif=aif, source=source)
