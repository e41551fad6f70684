"""Output writers of a :class:`perfnet.study.StudyResult`, by name (``--formats``, ``save(formats=…)``).

Each writer is ``write(result, folder, **options) -> paths written`` into a staging folder; a new
output format is one module plus one :func:`register_writer` line.

==========  ==========================================================================================
nifti       maps, brain mask, lesion masks (``<name>.nii.gz``) and the JSON side files; with
            ``layout=`` a BIDS session (:mod:`perfnet.io.bids`) instead
report      ``report.html`` + ``figures/`` (BIDS: ``<stem>_report/``)
dicom       ``dicom/``: SEG, Parametric Maps, colour and summary series for a PACS (``anonymize=``)
==========  ==========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfnet.errors import PerfnetInputError


@dataclass(frozen=True)
class Writer:
    name: str
    write: Callable[..., list[Path]]
    description: str = ""


WRITERS: dict[str, Writer] = {}


def register_writer(name: str, write: Callable[..., list[Path]], description: str = "") -> Writer:
    writer = Writer(name, write, description)
    WRITERS[name] = writer
    return writer


def check_formats(formats: Sequence[str] | str) -> list[str]:
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in names if f not in WRITERS]
    if unknown:
        raise PerfnetInputError(
            "--formats", f"unknown format {unknown[0]!r} (choose from {', '.join(WRITERS)})"
        )
    return names


def _extras_folder(folder: Path, layout: dict[str, Any] | None) -> Path:
    """Where the report and DICOM go: the output folder, or ``<stem>_report/`` in a BIDS session."""
    return folder if layout is None else folder / f"{layout['stem']}_report"


def write_nifti(result: Any, folder: Path, layout: dict[str, Any] | None = None, **_: Any) -> list[Path]:
    if layout is None:
        from perfnet.io.outputs import write_output_files

        return write_output_files(result.maps, folder, result.json_files())
    from perfnet.io.bids import write_bids_files

    source = Path(result.source).name if result.source else "unknown"
    aif_source = (result.aif or {}).get("source")
    return write_bids_files(folder, result.maps, layout["entities"], result.json_files(), source, aif_source)


def write_report_files(
    result: Any, folder: Path, layout: dict[str, Any] | None = None, **_: Any
) -> list[Path]:
    from perfnet.evaluation.report import write_report

    target = _extras_folder(folder, layout)
    target.mkdir(parents=True, exist_ok=True)
    series = result.series
    path = write_report(
        target,
        result.maps,
        series.data.mean(axis=3),
        result.lesions,
        result.provenance,
        series.modality,
        result.aif,
    )
    return [path, target / "figures"]


def write_dicom(
    result: Any, folder: Path, layout: dict[str, Any] | None = None, anonymize: bool = False, **_: Any
) -> list[Path]:
    from perfnet.io.dicom_out import write_dicom_outputs

    target = _extras_folder(folder, layout)
    write_dicom_outputs(target, result.maps, result.series, result.lesions, anonymize=anonymize)
    return [target / "dicom"]


register_writer("nifti", write_nifti, "maps and masks as NIfTI, JSON side files (or a BIDS session)")
register_writer("report", write_report_files, "self-contained report.html with figures")
register_writer("dicom", write_dicom, "DICOM SEG, Parametric Maps, colour maps and a summary page for a PACS")
