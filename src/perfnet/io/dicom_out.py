"""DICOM results for a PACS: a Segmentation of the lesions, a Parametric Map per perfusion map,
colour secondary-capture series of the maps and a one-page summary, written with highdicom.

All of them form new series of the *source* study (same Study Instance UID and Frame of
Reference, source images referenced frame by frame), so a PACS files them with the patient:
that is their purpose, and so they copy the source's patient and study modules — unless
``anonymize``, which replaces both with generated values. For a NIfTI input there is no source
study: the identifiers are generated and the series descriptions say so. Nothing else perfnet
writes carries these attributes.

Geometry: frame k of every multi-frame object is slice k of the series (``data[:, :, k]``), at
the source slice's Image Position (Patient); the DICOM pixel (row j, column i) is voxel (i, j, k)
— the inverse of :func:`perfnet.io.dicom.load_dicom_series`.
"""

from __future__ import annotations

import datetime as _dt
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perfnet import __version__
from perfnet.constants import MAP_NAMES, MAP_UNITS
from perfnet.errors import PerfnetInputError
from perfnet.io.types import PerfusionMaps, PerfusionSeries

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
#: Patient and study attributes copied from the source (never into logs, JSON, HTML or NIfTI).
_PATIENT_STUDY_IDENTIFIER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
SERIES_NUMBERS = {"seg": 9001, "pm": 9010, "color": 9030, "summary": 9050}
SEGMENTS = ("core", "penumbra", "hypoperfused")
#: Display windows of the colour series and the Parametric Maps (map units).
WINDOWS = {"cbf": (0.0, 80.0), "cbv": (0.0, 8.0), "mtt": (0.0, 20.0), "ttp": (0.0, 60.0), "tmax": (0.0, 20.0)}
COLORMAP = "jet"


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "category": codes.SCT.MorphologicallyAbnormalStructure,
        "core": CodedConcept("55641003", "SCT", "Infarct"),
        "penumbra": CodedConcept("52674009", "SCT", "Ischemia"),
        "hypoperfused": CodedConcept("52674009", "SCT", "Ischemia"),
        "units": {
            "cbf": codes.UCUM.MilliliterPer100GramPerMinute,
            "cbv": CodedConcept("ml/100g", "UCUM", "milliliter per 100 gram"),
            "mtt": codes.UCUM.Second,
            "ttp": codes.UCUM.Second,
            "tmax": codes.UCUM.Second,
        },
    }


def _uid() -> str:
    from highdicom import UID

    return str(UID())


def _slice_geometry(affine: np.ndarray, k: int) -> tuple[list[float], list[float], list[float], float]:
    """Image Position (LPS), Image Orientation, Pixel Spacing (between rows, between columns) and
    slice thickness of slice k."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    col0, col1, col2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    spacing_i, spacing_j = float(np.linalg.norm(col0)), float(np.linalg.norm(col1))
    position = (lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
    orientation = [*(col0 / spacing_i), *(col1 / spacing_j)]
    return (
        [round(float(v), 6) for v in position],
        [round(float(v), 8) for v in orientation],
        [round(spacing_j, 6), round(spacing_i, 6)],
        float(np.linalg.norm(col2)),
    )


def source_images(series: PerfusionSeries, anonymize: bool = False) -> list[Any]:
    """One header-only dataset per slice, standing for the source images: geometry from the
    series' affine, identity (SOP instance, series, study, frame of reference, patient) from the
    source DICOM's frame-0 image of each slice when there is one, generated otherwise."""
    import pydicom
    from pydicom.dataset import Dataset

    nx, ny, nz = series.spatial_shape
    files = series.meta.get("dicom_slice_files") or []
    first = None
    if files:
        try:
            first = pydicom.dcmread(files[0][0], stop_before_pixels=True)
        except Exception:
            first = None
    generated = first is None
    study_uid = _uid() if generated or anonymize else str(first.StudyInstanceUID)
    frame_uid = str(getattr(first, "FrameOfReferenceUID", "") or "") if first is not None else ""
    frame_uid = frame_uid or _uid()
    series_uid = str(first.SeriesInstanceUID) if first is not None else _uid()
    now = _dt.datetime.now()
    out = []
    for k in range(nz):
        ds = Dataset()
        ds.SOPClassUID = SOP_CLASS[series.modality]
        if files and not generated:
            path = files[k][0]
            try:
                src = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SOPClassUID"]
                )
                ds.SOPInstanceUID = str(src.SOPInstanceUID)
                ds.SOPClassUID = str(src.SOPClassUID)
            except Exception:
                ds.SOPInstanceUID = _uid()
        else:
            ds.SOPInstanceUID = _uid()
        ds.Modality = series.modality
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.FrameOfReferenceUID = frame_uid
        if generated or anonymize:
            ds.PatientName = "Anonymous^perfnet"
            ds.PatientID = "PERFNET-" + study_uid.rsplit(".", 1)[-1][-10:]
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.StudyDate = now.strftime("%Y%m%d")
            ds.StudyTime = now.strftime("%H%M%S")
            ds.StudyID = ""
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
        else:
            for keyword in _PATIENT_STUDY_IDENTIFIER:
                setattr(ds, keyword, getattr(first, keyword, ""))
        position, orientation, spacing, thickness = _slice_geometry(series.affine, k)
        ds.ImagePositionPatient = position
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = spacing
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.InstanceNumber = k + 1
        out.append(ds)
    return out


def _frames(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) → (Z, rows = Y, columns = X): frame k is slice k."""
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))


def _device() -> dict[str, Any]:
    return {
        "manufacturer": "perfnet",
        "manufacturer_model_name": "perfnet",
        "software_versions": __version__,
        "device_serial_number": "0",
    }


def _description(text: str, generated: bool) -> str:
    suffix = " (generated identifiers: NIfTI source)" if generated else ""
    return (text + suffix)[:64]


def segmentation(maps: PerfusionMaps, sources: Sequence[Any], method: str, generated: bool) -> Any:
    """A binary DICOM SEG of core, penumbra and hypoperfused tissue."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    c = _codes()
    missing = [s for s in SEGMENTS if s not in maps.masks]
    if missing:
        raise PerfnetInputError(None, f"no {', '.join(missing)} mask to export")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"perfnet {method}", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions, arrays = [], []
    colors = {"core": (220, 30, 30), "penumbra": (30, 200, 60), "hypoperfused": (250, 200, 0)}
    for number, name in enumerate(SEGMENTS, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=c["category"],
                segmented_property_type=c[name],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*colors[name])
                if hasattr(hd, "color") and hasattr(hd.color, "CIELabColor")
                else None,
            )
        )
        arrays.append(_frames(maps.masks[name].astype(np.uint8)))
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=np.stack(arrays, axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uid(),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=_uid(),
        instance_number=1,
        omit_empty_frames=False,
        content_label="LESIONS",
        content_description=_description(f"perfnet {method} core/penumbra", generated),
        **_device(),
    )
    seg.SeriesDescription = _description(f"perfnet {method} lesions", generated)
    return seg


def parametric_map(
    name: str, volume: np.ndarray, sources: Sequence[Any], method: str, number: int, generated: bool
) -> Any:
    """A float32 DICOM Parametric Map of one map, with its unit in the real-world value mapping."""
    import highdicom as hd

    units = _codes()["units"]
    values = np.nan_to_num(np.asarray(volume, dtype=np.float32))
    lo, hi = float(values.min()), float(values.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=name.upper(),
        lut_explanation=f"{name.upper()} ({MAP_UNITS[name]}), perfnet {method}",
        unit=units[name],
        value_range=(lo, hi if hi > lo else lo + 1.0),
        slope=1.0,
        intercept=0.0,
    )
    w_lo, w_hi = WINDOWS[name]
    pm = hd.pm.ParametricMap(
        source_images=list(sources),
        pixel_array=_frames(values),
        series_instance_uid=_uid(),
        series_number=number,
        sop_instance_uid=_uid(),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=(w_lo + w_hi) / 2, window_width=w_hi - w_lo)
        ],
        content_label=name.upper(),
        content_description=_description(f"perfnet {method} {name}", generated),
        **_device(),
    )
    pm.SeriesDescription = _description(f"perfnet {method} {name.upper()} ({MAP_UNITS[name]})", generated)
    return pm


def _render_rgb(image: np.ndarray, name: str, title: str) -> np.ndarray:
    """One slice in colour with a labelled colour bar, as an RGB uint8 array (rows, cols, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = WINDOWS[name]
    fig, ax = plt.subplots(figsize=(5.12, 4.4), dpi=100, facecolor="black")
    shown = ax.imshow(np.fliplr(image), cmap=COLORMAP, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, color="white", fontsize=9)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(f"{name.upper()} ({MAP_UNITS[name]})", color="white")
    bar.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    fig.tight_layout()
    return _figure_rgb(fig)


def _figure_rgb(fig: Any) -> np.ndarray:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=fig.get_facecolor())
    plt.close(fig)
    buffer.seek(0)
    import matplotlib.image as mpimg

    rgba = mpimg.imread(buffer)
    return np.ascontiguousarray((rgba[..., :3] * 255).round().astype(np.uint8))


def _orientation_letter(ras: np.ndarray) -> str:
    """DICOM patient-orientation letter of a direction given in RAS (DICOM letters are LPS)."""
    lps = np.array([-ras[0], -ras[1], ras[2]])
    axis = int(np.argmax(np.abs(lps)))
    return ("L", "P", "H")[axis] if lps[axis] > 0 else ("R", "A", "F")[axis]


def _patient_orientation(affine: np.ndarray) -> tuple[str, str]:
    """Of the rendered slices (``np.fliplr(volume[:, :, k].T)``: radiological, the patient's right
    on the image's left): the directions of increasing column and of increasing row."""
    affine = np.asarray(affine, dtype=np.float64)
    return _orientation_letter(-affine[:3, 0]), _orientation_letter(affine[:3, 1])


def _sc(
    pixels: np.ndarray,
    reference: Any,
    series_uid: str,
    number: int,
    instance: int,
    description: str,
    orientation: tuple[str, str],
) -> Any:
    import highdicom as hd

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=orientation,
        series_instance_uid=series_uid,
        sop_instance_uid=_uid(),
        series_number=number,
        instance_number=instance,
        manufacturer="perfnet",
    )
    sc.SeriesDescription = description
    sc.BurnedInAnnotation = "YES"
    return sc


def colour_series(
    name: str,
    volume: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    sources: Sequence[Any],
    method: str,
    number: int,
    generated: bool,
) -> list[Any]:
    """Secondary captures of one map, one per slice, in colour with a colour bar (burned in)."""
    series_uid = _uid()
    description = _description(f"perfnet {method} {name.upper()} colour", generated)
    orientation = _patient_orientation(affine)
    out = []
    for k in range(volume.shape[2]):
        image = np.where(brain[:, :, k], volume[:, :, k], np.nan).T
        pixels = _render_rgb(image, name, f"{name.upper()} slice {k + 1}/{volume.shape[2]}")
        out.append(_sc(pixels, sources[k], series_uid, number, k + 1, description, orientation))
    return out


#: characters per line of the summary page (10 pt monospace across 7.68 in)
SUMMARY_WIDTH = 86


def summary_lines(
    lesions: dict[str, Any], provenance: dict[str, Any], method: str, generated: bool
) -> list[str]:
    """The summary page's text: core, hypoperfused volumes at each Tmax threshold, mismatch, ratio,
    HIR, affected side, the DEFUSE-3 verdict, and the QC verdict with its flags (a reader in the
    PACS sees no other QC), the late tissue's share of the lesions when ``late_bolus`` was raised."""
    import textwrap

    v = lesions["volumes_ml"]
    ratio = lesions.get("mismatch_ratio")
    tmax = lesions.get("tmax_volumes_ml", {})
    hir = lesions.get("hypoperfusion_intensity_ratio")
    thr = lesions["settings"]["tmax_threshold_s"]
    core_pct = 100 * lesions["settings"]["core_relative_cbf"]
    factor = float(lesions["settings"].get("cbf_calibration", 1.0))
    lines = [
        f"perfnet {__version__} — {method} — research use, not a medical device",
        "",
        f"CBF < {core_pct:.0f}% volume (core):       {v['core']:7.1f} mL"
        if lesions.get("core_source") != "adc"
        else f"ADC < 620 volume (core):         {v['core']:7.1f} mL",
        f"Tmax > {thr:g} s volume (hypoperfused): {v['hypoperfused']:7.1f} mL",
        f"Mismatch volume:                 {v['mismatch']:7.1f} mL",
        f"Mismatch ratio:                  {'infinite' if ratio is None else f'{ratio:7.2f}'}",
        "",
        *(f"Tmax > {t:>2s} s:                    {vol:7.1f} mL" for t, vol in tmax.items()),
        f"Hypoperfusion intensity ratio:   {'—' if hir is None else f'{hir:7.2f}'}",
        f"Affected side:                   {lesions.get('affected_side') or 'none'}",
        "",
        f"DEFUSE-3 target mismatch: {'YES' if lesions['defuse3']['target_mismatch'] else 'NO'}"
        " (core < 70 mL, ratio ≥ 1.8, mismatch ≥ 15 mL)",
    ]
    applied = float(lesions.get("core_threshold_percent", core_pct * factor))
    if abs(applied - core_pct) > 0.05:
        lines.append(f"Core threshold calibrated for this method's CBF: {applied:.1f}%")
    weight = float(lesions["settings"].get("core_cbv_weight") or 0.0)
    if weight and lesions.get("core_source") != "adc":
        lines.append(f"Core index: (rCBF × rCBV^{weight:g})^(1/{1 + weight:g}), CBV weighed in")
    verdict = provenance.get("qc_verdict")
    notes = []
    if verdict:
        codes = [f["code"] for f in provenance.get("qc_flags", [])]
        notes.append(f"QC: {verdict.upper()}" + (f" — {', '.join(codes)}" if codes else ""))
        if verdict == "unreliable":
            notes.append("The maps are shown, not trusted: read the report's QC before the volumes.")
    late = lesions.get("in_late_tissue_ml")
    if late:
        notes.append(
            f"{late['late_tissue']:.0f} mL still enhancing at the last frame (bolus after the scan):"
            f" {late['core']:.1f} mL of the core, {late['hypoperfused']:.1f} mL hypoperfused lie there,"
            " not measured by any method."
        )
    if notes:
        lines.append("")
    for note in notes:
        lines += textwrap.wrap(note, SUMMARY_WIDTH)
    if generated:
        lines.append("Identifiers generated: the source was NIfTI")
    return lines


def summary_page(
    lesions: dict[str, Any], maps: PerfusionMaps, source: Any, method: str, generated: bool
) -> Any:
    """A RAPID-style one-page summary (:func:`summary_lines`, burned-in secondary capture)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = summary_lines(lesions, maps.provenance, method, generated)
    fig = plt.figure(figsize=(7.68, 5.12), dpi=100, facecolor="black")
    fig.text(0.04, 0.95, "\n".join(lines), color="white", family="monospace", fontsize=10, va="top")
    pixels = _figure_rgb(fig)
    description = _description(f"perfnet {method} summary", generated)
    orientation = _patient_orientation(maps.affine)
    return _sc(pixels, source, _uid(), SERIES_NUMBERS["summary"], 1, description, orientation)


def write_dicom_outputs(
    folder: str | Path,
    maps: PerfusionMaps,
    series: PerfusionSeries,
    lesions: dict[str, Any],
    anonymize: bool = False,
) -> list[Path]:
    """Write ``folder/dicom/``: ``seg.dcm``, ``pm-<map>.dcm``, ``color-<map>/NNN.dcm`` and
    ``summary.dcm``. Returns the paths written."""
    folder = Path(folder) / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    sources = source_images(series, anonymize)
    generated = not series.meta.get("dicom_slice_files") or anonymize
    method = maps.method
    written = []
    seg = segmentation(maps, sources, method, generated)
    seg.save_as(folder / "seg.dcm")
    written.append(folder / "seg.dcm")
    names = [m for m in MAP_NAMES if m in maps.maps]
    for i, name in enumerate(names):
        pm = parametric_map(name, maps[name], sources, method, SERIES_NUMBERS["pm"] + i, generated)
        path = folder / f"pm-{name}.dcm"
        pm.save_as(path)
        written.append(path)
        sub = folder / f"color-{name}"
        sub.mkdir()
        number = SERIES_NUMBERS["color"] + i
        volume, brain, affine = maps[name], maps.brain_mask, maps.affine
        for sc in colour_series(name, volume, brain, affine, sources, method, number, generated):
            path = sub / f"{int(sc.InstanceNumber):03d}.dcm"
            sc.save_as(path)
            written.append(path)
    summary = summary_page(lesions, maps, sources[0], method, generated)
    summary.save_as(folder / "summary.dcm")
    written.append(folder / "summary.dcm")
    return written
