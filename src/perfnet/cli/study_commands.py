"""Commands on single studies: info, convert, analyze, evaluate, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from perfnet.errors import PerfnetInputError


def cmd_info(args: argparse.Namespace) -> int:
    from perfnet.io import load_series

    series = load_series(
        args.path, modality=args.modality, frame_interval=args.frame_interval, echo_time=args.echo_time
    )
    print(json.dumps(series.summary(), indent=None if args.compact else 2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from perfnet.io import load_series, save_series_nifti
    from perfnet.io.nifti import is_nifti, sidecar_path
    from perfnet.io.output import staged_files

    if not is_nifti(args.output):
        raise PerfnetInputError(args.output, "output must end in .nii or .nii.gz")
    with staged_files(args.output, sidecar_path(args.output)) as staging:  # checked before reading
        series = load_series(
            args.input, modality=args.modality, frame_interval=args.frame_interval, echo_time=args.echo_time
        )
        save_series_nifti(series, staging / args.output.name)
    print(f"wrote {args.output} {list(series.shape)} ({series.modality}, {series.n_frames} frames)")
    return 0


def _step_printer() -> Any:
    """Progress of the long steps: on a terminal, each step's name and then its time (stderr);
    redirected to a log file, one line per finished step on stdout (stderr keeps only errors)."""
    started: dict[str, float] = {}
    terminal = sys.stderr.isatty()

    def report(step: str, fraction: float) -> None:
        if fraction <= 0.0:
            started[step] = time.perf_counter()
            if terminal:
                print(f"  {step} ...", end="", file=sys.stderr, flush=True)
        elif fraction >= 1.0:
            seconds = time.perf_counter() - started.get(step, time.perf_counter())
            if terminal:
                print(f" {seconds:.1f} s", file=sys.stderr, flush=True)
            else:
                print(f"  {step}: {seconds:.1f} s", flush=True)

    return report


def cmd_analyze(args: argparse.Namespace) -> int:
    from perfnet.device import resolve_device
    from perfnet.io import bids
    from perfnet.io.output import OutputFolder
    from perfnet.study import analyze

    started = time.perf_counter()
    device = resolve_device(args.device)  # every option and the output folder before any work
    if args.weights is not None:
        from perfnet.inference.weights import load_weights

        if args.method != "cnn":
            raise PerfnetInputError("--weights", "only --method cnn takes weights")
        for weights in args.weights:  # a missing, corrupt or foreign file is refused before any work
            load_weights(weights)
    if args.cross_check is not None and args.method != "cnn":
        raise PerfnetInputError("--cross-check", "checks a CNN's core: only with --method cnn")
    if args.time_scaling is not None and args.method != "cnn":
        raise PerfnetInputError("--time-scaling", "sets how a CNN reads a slow bolus: only with --method cnn")
    destination, keep, layout = bids.destination(
        args.input, args.out, args.method, args.bids, args.subject, args.session
    )
    formats = ["nifti", *([] if args.no_report else ["report"]), *(["dicom"] if args.dicom else [])]
    inputs = ("brain_mask", "aif_mask", "vof_mask", "adc")
    protect = [args.input, *(getattr(args, m) for m in inputs), *(args.weights or [])]
    with OutputFolder(
        destination, overwrite=args.overwrite, command="analyze", protect=protect, keep=keep
    ) as output:
        result = analyze(
            args.input,
            args.method,
            weights=args.weights,
            modality=args.modality,
            frame_interval=args.frame_interval,
            echo_time=args.echo_time,
            motion_correction=not args.no_motion_correction,
            bilateral_filter=not args.no_filter,
            temporal_smoothing_s=args.temporal_smoothing,
            hematocrit_factor=args.hematocrit_factor,
            tissue_density=args.tissue_density,
            device=device,
            brain_mask=args.brain_mask,
            aif_mask=args.aif_mask,
            vof_mask=args.vof_mask,
            adc=args.adc,
            lesion_preset=args.lesion_preset,
            tmax_threshold_s=args.tmax_threshold,
            core_relative_cbf=args.core_threshold,
            reference=args.reference,
            progress=_step_printer(),
            record_input_path=args.record_input_path,
            on_loaded=lambda s: print(
                f"perfnet analyze: {s.modality} {list(s.shape)}, method {args.method}", flush=True
            ),
            skip_frames=args.skip_frames,
            cross_check=args.cross_check,
            time_scaling=args.time_scaling,
        )
        result.run_id = result.provenance["run_id"] = output.run_id
        written = result.write(output.staging, formats, layout=layout, anonymize=args.anonymize)
    if layout is not None:
        bids.write_dataset_description(layout["root"], Path(args.input))
    _print_lesions(result.lesions)
    flags = [f["code"] for f in result.qc_flags]
    print(f"wrote {len(written)} files to {destination} in {time.perf_counter() - started:.1f} s")
    print(f"QC: {result.verdict}; flags: {', '.join(flags) if flags else 'none'}")
    if "report" in formats:
        report = next((p for p in written if p.name == "report.html"), None)
        if report is not None:
            print(f"report: {Path(destination) / report.relative_to(output.staging)}")
    return 0


def _print_lesions(lesions: dict[str, Any]) -> None:
    v = lesions["volumes_ml"]
    ratio = lesions["mismatch_ratio"]
    source = " (ADC)" if lesions.get("core_source") == "adc" else ""
    print(
        f"core {v['core']:.1f} mL{source}, hypoperfused {v['hypoperfused']:.1f} mL,"
        f" penumbra {v['penumbra']:.1f} mL,"
        f" mismatch ratio {'∞' if ratio is None else f'{ratio:.2f}'}; DEFUSE-3 target mismatch:"
        f" {'yes' if lesions['defuse3']['target_mismatch'] else 'no'}"
    )
    late = lesions.get("in_late_tissue_ml")
    if late:  # late_bolus was raised: the part of the lesions no method measured
        print(
            f"  of which in the {late['late_tissue']:.0f} mL still enhancing at the last frame (not"
            f" measured): core {late['core']:.1f} mL, hypoperfused {late['hypoperfused']:.1f} mL"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from perfnet.evaluation import evaluate_cohort

    others = {}
    for item in args.compare or []:
        label, sep, root = item.partition("=")
        others[label if sep else Path(item).name] = root if sep else item
    summary = evaluate_cohort(
        args.pred_root, args.ref_root, args.out, others or None, args.overwrite, args.desc
    )
    metrics = summary["metrics"]
    print(f"evaluated {summary['studies']} studies; wrote {args.out}/metrics.csv, summary.json, figures/")
    for key in ("tmax_maec", "cbf_mae", "cbv_mae", "hypoperfused_dice", "core_dice"):
        if key in metrics:
            print(f"  {key:18s} {metrics[key]['mean']:.3f} ± {metrics[key]['sd']:.3f}")
    for mask, agree in summary["volumes"].items():
        r, ba, icc = agree["pearson"]["r"], agree["bland_altman"], agree["icc1k"]["icc"]
        print(f"  {mask:12s} volume r {r:.3f}, bias {ba['bias']:.1f} mL, ICC(1,k) {icc:.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from perfnet.demo import print_comparison, run_demo

    comparison = run_demo(args.out, args.seed, say=lambda text: print(text, flush=True), weights=args.weights)
    print_comparison(comparison, Path(args.out))
    return 0
