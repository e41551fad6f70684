"""The ``perfnet`` command: parses arguments, calls the packages, prints results.

Input problems end with one line ``perfnet: error: <file>: <problem>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from perfnet import __version__, plausibility
from perfnet.errors import PerfnetError, PerfnetInputError
from perfnet.registry import DEFAULT_METHOD, method_names

EXIT_INPUT_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``perfnet: error: …``) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"perfnet: error: {self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that output folders are cleaned up on the way out."""


def _ranged(name: str, label: str) -> Callable[[str], float]:
    """argparse type: a number inside :data:`perfnet.plausibility.RANGES` [name]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            return plausibility.check(name, value, None, label)
        except PerfnetInputError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    return parse


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _add_input_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", type=str.upper, choices=["CT", "MR"], help="override the modality")
    parser.add_argument(
        "--frame-interval",
        type=_ranged("frame_interval_s", "frame interval (s)"),
        metavar="S",
        help="uniform frame interval in s",
    )
    parser.add_argument(
        "--echo-time", type=_ranged("echo_time_s", "echo time (s)"), metavar="S", help="MR echo time in s"
    )


def _add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} even if it holds files perfnet did not write (they are deleted)",
    )


def _progress(iterable: Any, **kwargs: Any) -> Any:
    """tqdm on a terminal, silent otherwise."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, **kwargs)


# --- commands ---------------------------------------------------------------------------------


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
        load_weights(args.weights)  # a missing, corrupt or foreign file is refused before any work
    destination, keep, layout = bids.destination(
        args.input, args.out, args.method, args.bids, args.subject, args.session
    )
    formats = ["nifti", *([] if args.no_report else ["report"]), *(["dicom"] if args.dicom else [])]
    protect = [args.input, *(getattr(args, m) for m in ("brain_mask", "aif_mask", "vof_mask", "weights"))]
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
    print(
        f"core {v['core']:.1f} mL, hypoperfused {v['hypoperfused']:.1f} mL, penumbra {v['penumbra']:.1f} mL,"
        f" mismatch ratio {'∞' if ratio is None else f'{ratio:.2f}'}; DEFUSE-3 target mismatch:"
        f" {'yes' if lesions['defuse3']['target_mismatch'] else 'no'}"
    )


def _int_pair(text: str, option: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise PerfnetInputError(option, f"expected two integers MIN,MAX, got {text!r}") from None
    if lo > hi:
        raise PerfnetInputError(option, f"MIN > MAX in {text!r}")
    return lo, hi


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PerfnetInputError(option, f"expected comma-separated integers, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from perfnet.training.run import TrainConfig, train

    maps = [m.strip().lower() for m in args.maps.split(",") if m.strip()]
    cfg = TrainConfig(
        model=args.model,
        maps=maps,
        targets=args.targets,
        folds=args.folds,
        fold=args.fold,
        epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs,
        pretrain_size=args.pretrain_size,
        crop=args.crop,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_step_epochs=args.lr_step,
        width=args.width,
        frame_interval=args.frame_interval,
        frames=args.frames,
        pixel_mm=args.pixel_mm,
        align_lead_s=None if args.align_lead < 0 else args.align_lead,
        shift=_int_pair(args.shift, "--shift"),
        log_maps=[m.strip().lower() for m in args.log_maps.split(",") if m.strip()],
        init=None if args.init is None else str(args.init),
        thin=_int_list(args.thin, "--thin"),
        seed=args.seed,
        accelerator=args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        max_minutes=args.max_minutes,
        val_every=args.val_every,
        progress=sys.stderr.isatty(),
    )
    plan = train(args.cohort, args.out, cfg, resume=not args.restart)
    cv = plan.get("cross_validation", {})
    print(json.dumps({"out": str(args.out), "weights": str(Path(args.out) / "weights.pt"), "validation": cv}))
    return 0


def cmd_cohort(args: argparse.Namespace) -> int:
    from perfnet.runner import parse_part, run_cohort

    part = parse_part(args.part)
    options = ["--no-report"] if args.no_report else []
    if args.weights is not None:
        options += ["--weights", str(Path(args.weights).absolute())]
    if args.dicom:
        options += ["--dicom"]
    progress = _cohort_progress()
    summary = run_cohort(
        args.root,
        args.out,
        args.method,
        jobs=args.jobs,
        threads=args.threads,
        scheduler=args.scheduler,
        part=part,
        overwrite=args.overwrite,
        options=options,
        progress=progress,
    )
    run = summary["this_run"]
    print(
        f"cohort: {summary['studies']} studies, {summary['done']} done, {summary['failed']} failed,"
        f" {summary['crashed']} crashed, {summary['pending']} pending; this run: {run['done']} done,"
        f" {run['failed']} failed, {run['skipped']} already complete; {args.out}/cohort.tsv"
    )
    return 0


def _cohort_progress() -> Callable[[dict[str, Any]], None]:
    """A line per finished study (studies done / failed / remaining and the estimated time left)."""

    def report(state: dict[str, Any]) -> None:
        finished = state["done"] + state["failed"]
        left = state["total"] - finished
        elapsed = time.perf_counter() - state["started"]
        eta = elapsed / max(finished, 1) * left
        record = state["record"]
        what = "ok" if record["status"] == "done" else f"{record['status']}: {record['error']}"
        print(
            f"[{finished}/{state['total']}] {state['study']} {what} ({record['seconds']} s);"
            f" done {state['done']}, failed {state['failed']}, remaining {left}, eta {eta / 60:.1f} min",
            flush=True,
        )

    return report


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


def _phantom_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        "matrix": args.size,
        "slices": args.slices,
        "frames": args.frames,
        "frame_interval_s": args.frame_interval,
        "dose_mas": args.dose,
        "noise_sd": args.noise_sd,
        "snr": args.snr,
        "lesion": args.lesion,
        "territory": args.territory,
        "hemisphere": args.hemisphere,
        "residue": args.residue,
        "arrival_s": args.arrival,
    }
    if args.frame_interval is not None:
        overrides["timing"] = "uniform"
    if args.no_noise:
        overrides["noise"] = False
    if args.motion is not None:
        overrides["motion"] = args.motion
    return {k: v for k, v in overrides.items() if v is not None}


def cmd_simulate(args: argparse.Namespace) -> int:
    from perfnet.phantom import write_cohort

    started = time.perf_counter()

    def report(name: str, study: Any, path: Path) -> None:
        vol = study.truth.parameters["volumes_ml"]
        cfg = study.config
        print(
            f"{name}: seed {cfg.seed} {cfg.modality} {study.series.shape} lesion={cfg.lesion}"
            f" core={vol['core']:.1f} mL hypoperfused={vol['hypoperfused']:.1f} mL"
            f" ({study.truth.parameters['seconds']:.1f} s)",
            flush=True,
        )

    rows = write_cohort(
        args.out,
        args.modality,
        args.cases,
        args.seed,
        overrides=_phantom_overrides(args),
        progress=lambda it: _progress(it, total=args.cases, desc="simulating", unit="study"),
        on_study=report,
        overwrite=args.overwrite,
        style=args.style,
    )
    print(f"wrote {len(rows)} studies to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from perfnet.demo import print_comparison, run_demo

    comparison = run_demo(args.out, args.seed, say=lambda text: print(text, flush=True))
    print_comparison(comparison, Path(args.out))
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="perfnet",
        description="Perfusion maps (CBF, CBV, MTT, TTP, Tmax) and core/penumbra from CT perfusion "
        "and DSC-MRI.",
    )
    parser.add_argument("--version", action="version", version=f"perfnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", help="describe a 4D series (NIfTI file or DICOM folder) as JSON")
    p.add_argument("path", type=Path, help="NIfTI file or DICOM folder")
    _add_input_overrides(p)
    p.add_argument("--compact", action="store_true", help="one-line JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a DICOM series (or NIfTI) to 4D NIfTI + JSON sidecar")
    p.add_argument("input", type=Path, help="DICOM folder or NIfTI file")
    p.add_argument("output", type=Path, help="output .nii.gz (the sidecar is written beside it)")
    _add_input_overrides(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("analyze", help="perfusion maps from a series (NIfTI file or DICOM folder)")
    p.add_argument("input", type=Path, help="NIfTI file or DICOM folder")
    p.add_argument("--out", type=Path, help="output folder (a derivatives folder: BIDS layout)")
    p.add_argument(
        "--bids",
        action="store_true",
        help="write BIDS derivatives: <dataset>/derivatives/perfnet/sub-X/ses-Y/perf/ (or under --out)",
    )
    p.add_argument("--subject", metavar="LABEL", help="BIDS subject label (default: from the input's path)")
    p.add_argument("--session", metavar="LABEL", help="BIDS session label (default: from the input's path)")
    p.add_argument(
        "--method",
        choices=method_names(),
        default=DEFAULT_METHOD,
        help=f"deconvolution method, or cnn (model-free; default {DEFAULT_METHOD}: best on the phantom)",
    )
    p.add_argument(
        "--weights", type=Path, metavar="FILE", help="CNN weights (default: the bundled ones of the modality)"
    )
    p.add_argument("--no-motion-correction", action="store_true", help="skip rigid motion correction")
    p.add_argument("--no-filter", action="store_true", help="skip the guided bilateral filter")
    p.add_argument(
        "--skip-frames",
        type=_non_negative_int,
        metavar="N",
        help="drop the first N frames (non-steady state; default: detected; 0: keep all)",
    )
    p.add_argument(
        "--temporal-smoothing",
        type=_ranged("temporal_smoothing_s", "temporal smoothing σ (s)"),
        default=0.0,
        metavar="S",
        help="Gaussian σ in s (0: off)",
    )
    p.add_argument("--brain-mask", type=Path, metavar="FILE", help="NIfTI brain mask on the series grid")
    p.add_argument("--aif-mask", type=Path, metavar="FILE", help="NIfTI mask of arterial voxels")
    p.add_argument("--vof-mask", type=Path, metavar="FILE", help="NIfTI mask of venous (sinus) voxels")
    p.add_argument(
        "--hematocrit-factor",
        type=_ranged("hematocrit_factor", "hematocrit factor"),
        default=0.73,
        metavar="KH",
    )
    p.add_argument(
        "--tissue-density",
        type=_ranged("tissue_density", "tissue density (g/mL)"),
        default=1.04,
        metavar="RHO",
        help="g/mL",
    )
    p.add_argument("--device", help="torch device for the batched fits (default: cuda when available)")
    p.add_argument("--no-report", action="store_true", help="skip report.html and figures/")
    p.add_argument(
        "--record-input-path",
        action="store_true",
        help="write the input path into provenance.json and the report (off: exports are often named "
        "after the patient)",
    )
    p.add_argument(
        "--dicom",
        action="store_true",
        help="also write dicom/: SEG of the lesions, Parametric Maps, colour maps and a summary page, "
        "in the source's study (for a PACS)",
    )
    p.add_argument(
        "--anonymize",
        action="store_true",
        help="DICOM outputs without the source's patient and study identity",
    )
    g = p.add_argument_group(
        "lesions (hypoperfused: Tmax > 6 s; core: rCBF < 30 %% of the healthy reference)"
    )
    g.add_argument(
        "--lesion-preset", choices=["rapid", "severe"], default="rapid", help="severe: Tmax > 10 s"
    )
    g.add_argument("--tmax-threshold", type=_positive_float, metavar="S", help="hypoperfusion Tmax threshold")
    g.add_argument("--core-threshold", type=_fraction, metavar="F", help="core relative CBF (0.3)")
    g.add_argument(
        "--reference",
        choices=["contralateral", "brain", "tmax4"],
        default="contralateral",
        help="healthy CBF reference: contralateral hemisphere, whole brain, or Tmax < 4 s tissue",
    )
    _add_input_overrides(p)
    _add_overwrite(p, "--out")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("train", help="train a perfusion CNN on a cohort with k-fold cross-validation")
    p.add_argument("cohort", type=Path, help="BIDS-like cohort folder (as perfnet simulate writes)")
    p.add_argument("--out", type=Path, required=True, help="run folder (plan, checkpoints, weights)")
    p.add_argument("--model", choices=["unet", "temporal"], default="unet")
    p.add_argument("--maps", default="cbf,cbv,mtt,tmax,ttp", help="comma-separated maps to regress")
    p.add_argument(
        "--targets",
        default="truth",
        help="truth | reference | a conventional method: " + " | ".join(method_names("conventional")),
    )
    p.add_argument("--folds", type=_positive_int, default=3, help="cross-validation folds (by patient)")
    p.add_argument("--fold", type=int, help="train only this fold (default: all)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=5, help="unet: epochs at --pretrain-size²")
    p.add_argument("--pretrain-size", type=_positive_int, default=128)
    p.add_argument("--crop", type=_positive_int, help="fine-tuning window (unet 256, temporal 32)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--lr", type=_positive_float, default=5e-4)
    p.add_argument("--lr-step", type=_positive_int, default=4, help="halve the learning rate every N epochs")
    p.add_argument("--width", type=_positive_int, default=16, help="channels of the first stage")
    p.add_argument("--frame-interval", type=_positive_float, default=1.0, help="model time grid step (s)")
    p.add_argument("--frames", type=_positive_int, default=80, help="model time grid length")
    p.add_argument("--pixel-mm", type=_positive_float, help="model in-plane pixel size (default: native)")
    p.add_argument(
        "--align-lead",
        type=float,
        default=6.0,
        metavar="S",
        help="start the time grid S s before the detected bolus arrival (negative: at the first frame)",
    )
    p.add_argument("--shift", default="-5,30", metavar="MIN,MAX", help="temporal shift augmentation (frames)")
    p.add_argument(
        "--log-maps",
        default="cbf,cbv",
        metavar="MAPS",
        help="maps regressed as log(value + offset) so low-flow tissue weighs by ratio ('' for none)",
    )
    p.add_argument(
        "--init",
        type=Path,
        metavar="WEIGHTS",
        help="fine-tune from this weights file (e.g. the bundled ct.pt) instead of from scratch",
    )
    p.add_argument(
        "--thin",
        default="1",
        metavar="K,...",
        help="frame-thinning augmentation: keep every k-th frame, k drawn from the list (e.g. 1,2,4)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", default="auto", help="Lightning devices (a count or auto)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy (e.g. ddp)")
    p.add_argument("--num-nodes", type=_positive_int, default=1)
    p.add_argument("--max-minutes", type=_positive_float, help="stop each fold after this long")
    p.add_argument("--val-every", type=_positive_int, default=1, help="validate every N epochs")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out (no resume)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="score a cohort of maps against a reference cohort (or phantom truth)"
    )
    p.add_argument("pred_root", type=Path, help="folder of predicted study folders (analyze outputs)")
    p.add_argument("ref_root", type=Path, help="reference cohort (e.g. a phantom cohort with truth/)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--compare",
        action="append",
        metavar="[LABEL=]ROOT",
        help="another predicted cohort for the Friedman test of Tmax MAEC (repeat; ≥ 3 methods in all)",
    )
    p.add_argument(
        "--desc", metavar="METHOD", help="BIDS derivatives holding several methods: score this one"
    )
    _add_overwrite(p, "--out")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cohort", help="analyse every study of a dataset into BIDS derivatives (resumable)")
    p.add_argument("root", type=Path, help="BIDS-like dataset (or a folder of DICOM series folders)")
    p.add_argument(
        "--out", type=Path, required=True, help="derivatives folder (e.g. ROOT/derivatives/perfnet)"
    )
    p.add_argument("--method", choices=method_names(), default=DEFAULT_METHOD)
    p.add_argument("--weights", type=Path, metavar="FILE", help="CNN weights (--method cnn)")
    p.add_argument("--jobs", type=_positive_int, default=1, help="studies analysed at once on this machine")
    p.add_argument("--threads", type=_positive_int, help="threads per study (default: cores / jobs)")
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="a Dask scheduler (tcp://host:8786) instead of --jobs"
    )
    p.add_argument("--part", metavar="K/N", help="only the K-th of N interleaved parts (SLURM array jobs)")
    p.add_argument(
        "--overwrite", action="store_true", help="analyse studies whose output is already complete"
    )
    p.add_argument("--no-report", action="store_true", help="no report.html per study")
    p.add_argument("--dicom", action="store_true", help="also DICOM outputs per study")
    p.set_defaults(func=cmd_cohort)

    p = sub.add_parser("simulate", help="write a cohort of phantom studies with known truth")
    p.add_argument("out", type=Path, help="output cohort folder")
    p.add_argument("--modality", type=str.upper, choices=["CT", "MR"], default="CT")
    p.add_argument("--cases", type=_positive_int, default=1)
    p.add_argument("--seed", type=int, default=0, help="case i uses seed + i")
    p.add_argument(
        "--style",
        choices=["geometric", "mni"],
        default="geometric",
        help="phantom style: geometric head (A) or the MNI152 template (B, an independent simulator)",
    )
    g = p.add_argument_group("overrides of the randomised parameters")
    g.add_argument("--size", type=_positive_int, help="in-plane matrix (64–512)")
    g.add_argument("--slices", type=_positive_int, help="number of slices (4–32)")
    g.add_argument("--frames", type=_positive_int, help="number of frames (30–90)")
    g.add_argument(
        "--frame-interval", type=_positive_float, metavar="S", help="uniform frame interval (0.5–2 s)"
    )
    g.add_argument(
        "--dose", type=_positive_float, metavar="MAS", help="CT tube current-time product (50–400 mAs)"
    )
    g.add_argument("--noise-sd", type=float, metavar="HU", help="CT noise SD, overriding --dose")
    g.add_argument("--snr", type=_positive_float, help="MR baseline grey-matter SNR (15–150)")
    g.add_argument("--no-noise", action="store_true", help="noise-free signal")
    g.add_argument("--motion", action=argparse.BooleanOptionalAction, default=None, help="rigid head motion")
    g.add_argument("--lesion", choices=["none", "oligaemia", "penumbra", "core"])
    g.add_argument("--territory", choices=["MCA", "ACA", "PCA"], type=str.upper)
    g.add_argument("--hemisphere", choices=["left", "right"], type=str.lower)
    g.add_argument("--residue", choices=["exponential", "box", "gamma", "lognormal"])
    g.add_argument("--arrival", type=float, metavar="S", help="bolus arrival time (2–15 s)")
    _add_overwrite(p, "OUT")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="simulate a stroke study and summarise it")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--seed", type=int, default=2024)
    p.set_defaults(func=cmd_demo)
    return parser


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _crash_log(argv: Sequence[str]) -> Path | None:
    """The traceback of an internal error in a log file (the command's arguments, which may be
    paths named after a patient, are replaced by their position)."""
    text = traceback.format_exc()
    for i, arg in sorted(enumerate(argv), key=lambda a: -len(a[1])):
        if len(arg) > 2 and not arg.startswith("-"):
            text = text.replace(arg, f"<argument {i + 1}>")
    try:
        handle, name = tempfile.mkstemp(
            prefix=f"perfnet-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log"
        )
        with open(handle, "w") as f:
            f.write(f"perfnet {__version__}\n{text}")
    except OSError:
        return None
    return Path(name)


def _one_line_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    print(f"perfnet: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done; 2 bad input or usage (one line naming the file or
    option, no output written); 1 an internal error (one line and the path of a log file with
    the traceback); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    show_warning = warnings.showwarning
    warnings.showwarning = _one_line_warning  # perfnet's own warnings: one line each, no source
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error already printed in one line
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_INPUT_ERROR
        return int(args.func(args))
    except PerfnetInputError as exc:
        print(f"perfnet: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except PerfnetError as exc:
        print(f"perfnet: error: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    except KeyboardInterrupt:
        print("perfnet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("perfnet: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except MemoryError:
        print(
            "perfnet: error: out of memory (a smaller series, or a machine with more memory)", file=sys.stderr
        )
        return EXIT_UNEXPECTED
    except Exception as exc:
        if debug:
            raise
        text = str(exc).strip().splitlines()
        log = _crash_log(argv)
        where = f"; traceback in {log}" if log else ""
        print(
            f"perfnet: internal error: {type(exc).__name__}: {text[0] if text else ''}{where}"
            " (please report it)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
