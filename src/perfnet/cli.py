"""The ``perfnet`` command: parses arguments, calls the packages, prints results.

Input problems end with one line ``perfnet: error: <file>: <problem>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perfnet import __version__
from perfnet.conventional.pipeline import DEFAULT_METHOD, METHODS
from perfnet.errors import PerfnetError, PerfnetInputError

EXIT_INPUT_ERROR = 2
EXIT_UNEXPECTED = 1


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _add_input_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", type=str.upper, choices=["CT", "MR"], help="override the modality")
    parser.add_argument(
        "--frame-interval", type=_positive_float, metavar="S", help="uniform frame interval in s"
    )
    parser.add_argument("--echo-time", type=_positive_float, metavar="S", help="MR echo time in s")


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
    from perfnet.io import atomic_output_dir, load_series, save_series_nifti
    from perfnet.io.nifti import is_nifti

    if not is_nifti(args.output):
        raise PerfnetInputError(args.output, "output must end in .nii or .nii.gz")
    series = load_series(
        args.input, modality=args.modality, frame_interval=args.frame_interval, echo_time=args.echo_time
    )
    with atomic_output_dir(args.output.parent) as staging:
        save_series_nifti(series, staging / args.output.name)
    print(f"wrote {args.output} {list(series.shape)} ({series.modality}, {series.n_frames} frames)")
    return 0


def _load_mask(path: Path | None, shape: tuple[int, ...]) -> Any:
    if path is None:
        return None
    from perfnet.io import load_map

    data, _ = load_map(path)
    if data.shape != shape:
        raise PerfnetInputError(path, f"mask shape {data.shape} differs from the series grid {shape}")
    return data > 0.5


def _step_printer() -> Any:
    """Progress of long steps on a terminal (stderr); silent when output is redirected."""
    if not sys.stderr.isatty():
        return None
    started: dict[str, float] = {}

    def report(step: str, fraction: float) -> None:
        if fraction <= 0.0:
            started[step] = time.perf_counter()
            print(f"  {step} ...", end="", file=sys.stderr, flush=True)
        elif fraction >= 1.0:
            print(
                f" {time.perf_counter() - started.get(step, time.perf_counter()):.1f} s",
                file=sys.stderr,
                flush=True,
            )

    return report


def cmd_analyze(args: argparse.Namespace) -> int:
    from perfnet.conventional.pipeline import AnalysisOptions, analyze
    from perfnet.inference import analyze_cnn
    from perfnet.io import load_series
    from perfnet.io.outputs import write_output_set

    started = time.perf_counter()
    series = load_series(
        args.input, modality=args.modality, frame_interval=args.frame_interval, echo_time=args.echo_time
    )
    shape = series.spatial_shape
    masks = {name: _load_mask(getattr(args, name), shape) for name in ("brain_mask", "aif_mask", "vof_mask")}
    print(f"perfnet analyze: {series.modality} {list(series.shape)}, method {args.method}", file=sys.stderr)
    json_files: dict[str, Any] = {}
    aif = None
    if args.method == "cnn":  # the series the model saw (motion-corrected) also feeds lesions and report
        maps, series = analyze_cnn(
            series,
            args.weights,
            motion_correction=not args.no_motion_correction,
            device=args.device,
            brain=masks["brain_mask"],
            progress=_step_printer(),
        )
    else:
        if args.weights is not None:
            raise PerfnetInputError("--weights", "only --method cnn takes weights")
        options = AnalysisOptions(
            method=args.method,
            motion_correction=not args.no_motion_correction,
            bilateral_filter=not args.no_filter,
            temporal_smoothing_s=args.temporal_smoothing,
            hematocrit_factor=args.hematocrit_factor,
            tissue_density=args.tissue_density,
            device=args.device,
        )
        result = analyze(series, options, progress=_step_printer(), **masks)
        maps, aif = result.maps, result.aif.to_json(result.times)
        json_files["aif"] = aif
    provenance = maps.provenance
    provenance["seconds"]["total"] = round(time.perf_counter() - started, 3)
    provenance["input"]["path"] = str(args.input)
    lesions = _segment(maps, args, series)
    written = write_output_set(
        maps,
        args.out,
        json_files | {"lesions": lesions, "provenance": provenance},
        extra=_reporter(args, maps, series, lesions, provenance, aif),
    )
    _print_lesions(lesions)
    flags = [f["code"] for f in provenance["qc_flags"]]
    print(f"wrote {len(written)} files to {args.out} in {time.perf_counter() - started:.1f} s")
    print(f"QC flags: {', '.join(flags) if flags else 'none'}")
    return 0


def _segment(maps: Any, args: argparse.Namespace, series: Any) -> dict[str, Any]:
    """Core / hypoperfused / penumbra masks added to ``maps``; returns lesions.json's content."""
    from dataclasses import replace

    from perfnet.lesions import PRESETS, segment_map_set

    settings = PRESETS[args.lesion_preset]
    if args.tmax_threshold is not None:
        settings = replace(settings, tmax_threshold_s=args.tmax_threshold)
    if args.core_threshold is not None:
        settings = replace(settings, core_relative_cbf=args.core_threshold)
    settings = replace(settings, reference=args.reference)
    return segment_map_set(maps, series, settings) | {"preset": args.lesion_preset}


def _reporter(
    args: argparse.Namespace, maps: Any, series: Any, lesions: Any, provenance: Any, aif: Any
) -> Any:
    """The report writer handed to the output set (None with --no-report)."""
    if args.no_report:
        return None

    def write(folder: Path) -> list[Path]:
        from perfnet.evaluation.report import write_report

        mean_frame = series.data.mean(axis=3)
        path = write_report(folder, maps, mean_frame, lesions, provenance, series.modality, aif)
        return [path, folder / "figures"]

    return write


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from perfnet.evaluation import evaluate_cohort

    others = {}
    for item in args.compare or []:
        label, sep, root = item.partition("=")
        others[label if sep else Path(item).name] = root if sep else item
    summary = evaluate_cohort(args.pred_root, args.ref_root, args.out, others or None)
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
        style=args.style,
    )
    print(f"wrote {len(rows)} studies to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate a CT stroke study, analyse it with the bundled CNN and with oSVD, compare both
    against the phantom's truth, print the volumes and where the reports are."""
    from perfnet.evaluation import evaluate_study
    from perfnet.inference.weights import bundled_weights
    from perfnet.phantom import write_cohort

    started = time.perf_counter()
    out = Path(args.out)
    print("perfnet demo: simulating a CT stroke study with the digital phantom ...", flush=True)
    overrides = {
        "matrix": 256,
        "slices": 8,
        "coverage_mm": 64.0,
        "lesion": "core",
        "territory": "MCA",
        "lesion_radius_mm": 35.0,
    }
    rows = write_cohort(out / "phantom", "CT", 1, args.seed, overrides=overrides)
    row = rows[0]
    series = next((out / "phantom").rglob("*_ctp.nii.gz"))
    truth_dir = series.parent / "truth"
    methods = [DEFAULT_METHOD]
    try:
        bundled_weights("CT")
        methods.insert(0, "cnn")
    except PerfnetInputError as exc:
        print(f"  (no CNN: {exc})")
    comparison: dict[str, Any] = {
        "truth": {k: round(float(row[f"{k}_ml"]), 1) for k in ("core", "penumbra", "hypoperfused")},
        "lesion": f"{row['lesion']} ({row['territory']}, {row['hemisphere']})",
    }
    for method in methods:
        print(f"perfnet demo: analysing with {method} ...", flush=True)
        code = main(["analyze", str(series), "--out", str(out / method), "--method", method])
        if code != 0:
            return code
        metrics = evaluate_study(out / method, truth_dir)
        lesions = json.loads((out / method / "lesions.json").read_text())
        comparison[method] = {
            "volumes_ml": {k: lesions["volumes_ml"][k] for k in ("core", "penumbra", "hypoperfused")},
            "tmax_maec_s": round(metrics["tmax_maec"], 3),
            "hypoperfused_dice": round(metrics["hypoperfused_dice"], 3),
            "core_dice": round(metrics["core_dice"], 3),
            "cbf_mae": round(metrics["cbf_mae"], 2),
            "seconds": json.loads((out / method / "provenance.json").read_text())["seconds"].get("total"),
            "report": str(out / method / "report.html"),
        }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    t = comparison["truth"]
    print(f"\nstudy: {series}  lesion: {comparison['lesion']}")
    print(
        f"{'':10s} {'core mL':>8s} {'penumbra mL':>12s} {'Tmax MAEC s':>12s}"
        f" {'hypo Dice':>10s} {'core Dice':>10s}"
    )
    print(f"{'truth':10s} {t['core']:8.1f} {t['penumbra']:12.1f}")
    for method in methods:
        c = comparison[method]
        v = c["volumes_ml"]
        print(
            f"{method:10s} {v['core']:8.1f} {v['penumbra']:12.1f} {c['tmax_maec_s']:12.2f}"
            f" {c['hypoperfused_dice']:10.3f} {c['core_dice']:10.3f}"
        )
    for method in methods:
        print(f"report ({method}): {comparison[method]['report']}")
    print(f"comparison: {out / 'comparison.json'}  ({time.perf_counter() - started:.0f} s)")
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfnet",
        description="Perfusion maps (CBF, CBV, MTT, TTP, Tmax) and core/penumbra from CT perfusion "
        "and DSC-MRI.",
    )
    parser.add_argument("--version", action="version", version=f"perfnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--method",
        choices=(*METHODS, "cnn"),
        default=DEFAULT_METHOD,
        help=f"deconvolution method, or cnn (model-free; default {DEFAULT_METHOD}: best on the phantom)",
    )
    p.add_argument(
        "--weights", type=Path, metavar="FILE", help="CNN weights (default: the bundled ones of the modality)"
    )
    p.add_argument("--no-motion-correction", action="store_true", help="skip rigid motion correction")
    p.add_argument("--no-filter", action="store_true", help="skip the guided bilateral filter")
    p.add_argument(
        "--temporal-smoothing", type=float, default=0.0, metavar="S", help="Gaussian σ in s (0: off)"
    )
    p.add_argument("--brain-mask", type=Path, metavar="FILE", help="NIfTI brain mask on the series grid")
    p.add_argument("--aif-mask", type=Path, metavar="FILE", help="NIfTI mask of arterial voxels")
    p.add_argument("--vof-mask", type=Path, metavar="FILE", help="NIfTI mask of venous (sinus) voxels")
    p.add_argument("--hematocrit-factor", type=_positive_float, default=0.73, metavar="KH")
    p.add_argument("--tissue-density", type=_positive_float, default=1.04, metavar="RHO", help="g/mL")
    p.add_argument("--device", help="torch device for the batched fits (default: cuda when available)")
    p.add_argument("--no-report", action="store_true", help="skip report.html and figures/")
    g = p.add_argument_group(
        "lesions (hypoperfused: Tmax > 6 s; core: rCBF < 30 %% of the healthy reference)"
    )
    g.add_argument(
        "--lesion-preset", choices=["rapid", "severe"], default="rapid", help="severe: Tmax > 10 s"
    )
    g.add_argument("--tmax-threshold", type=_positive_float, metavar="S", help="hypoperfusion Tmax threshold")
    g.add_argument("--core-threshold", type=_positive_float, metavar="F", help="core relative CBF (0.3)")
    g.add_argument(
        "--reference",
        choices=["contralateral", "brain", "tmax4"],
        default="contralateral",
        help="healthy CBF reference: contralateral hemisphere, whole brain, or Tmax < 4 s tissue",
    )
    _add_input_overrides(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("train", help="train a perfusion CNN on a cohort with k-fold cross-validation")
    p.add_argument("cohort", type=Path, help="BIDS-like cohort folder (as perfnet simulate writes)")
    p.add_argument("--out", type=Path, required=True, help="run folder (plan, checkpoints, weights)")
    p.add_argument("--model", choices=["unet", "temporal"], default="unet")
    p.add_argument("--maps", default="cbf,cbv,mtt,tmax,ttp", help="comma-separated maps to regress")
    p.add_argument(
        "--targets", default="truth", help="truth | reference | ssvd | csvd | osvd | tikhonov | boxnlr"
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
    p.set_defaults(func=cmd_evaluate)

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
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="simulate a stroke study and summarise it")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--seed", type=int, default=2024)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PerfnetInputError as exc:
        print(f"perfnet: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except PerfnetError as exc:
        print(f"perfnet: error: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    except KeyboardInterrupt:
        print("perfnet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        text = str(exc).strip().splitlines()
        print(
            f"perfnet: error: unexpected {type(exc).__name__}: {text[0] if text else ''}"
            " (rerun with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
