"""Commands on cohorts: simulate, train, cohort."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfnet.errors import PerfnetInputError

if TYPE_CHECKING:
    from perfnet.phantom.config import DrawOptions


def _progress(iterable: Any, **kwargs: Any) -> Any:
    """tqdm on a terminal, silent otherwise."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, **kwargs)


def _pair(text: str, option: str, cast: type = int) -> tuple[Any, Any]:
    """``MIN,MAX`` of ``option`` as two ``cast`` values (integers or numbers), MIN ≤ MAX."""
    try:
        lo, hi = (cast(v) for v in text.split(","))
    except ValueError:
        what = "integers" if cast is int else "numbers"
        raise PerfnetInputError(option, f"expected two {what} MIN,MAX, got {text!r}") from None
    if lo > hi:
        raise PerfnetInputError(option, f"MIN > MAX in {text!r}")
    return lo, hi


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PerfnetInputError(option, f"expected comma-separated integers, got {text!r}") from None


def _model_options(items: list[str]) -> dict[str, Any]:
    """``--model-option KEY=VALUE`` pairs: VALUE as JSON (numbers, true/false, lists), else text."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise PerfnetInputError("--model-option", f"expected KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from perfnet.models import build_model
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
        shift=_pair(args.shift, "--shift"),
        shift_pad=args.shift_pad,
        log_maps=[m.strip().lower() for m in args.log_maps.split(",") if m.strip()],
        init=None if args.init is None else str(args.init),
        thin=_int_list(args.thin, "--thin"),
        freeze_norm=args.freeze_norm,
        low_flow_weight=args.low_flow_weight,
        noise=args.noise_max,
        regional_delay=_pair(args.regional_delay, "--regional-delay"),
        truncate=_pair(args.truncate, "--truncate", float),
        nll_beta=args.nll_beta,
        bolus_rule=args.bolus_rule,
        seed=args.seed,
        accelerator=args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        max_minutes=args.max_minutes,
        val_every=args.val_every,
        keep=args.keep,
        select=args.select,
        progress=sys.stderr.isatty(),
        jobs=args.jobs,
        scheduler=args.scheduler,
        loader_workers=args.loader_workers,
        reuse_slices=[str(r) for r in args.reuse_slices],
        model_kwargs=_model_options(args.model_option),
    )
    if cfg.model_kwargs:
        try:  # a misspelt or out-of-range option stops here, before any data is prepared
            build_model(cfg.model, **cfg.build_kwargs())
        except (TypeError, ValueError) as exc:
            raise PerfnetInputError("--model-option", f"{cfg.model}: {exc}") from None
    if args.prepare_only:
        print(json.dumps(train(args.cohort, args.out, cfg, prepare_only=True)))
        return 0
    plan = train(args.cohort, args.out, cfg, resume=not args.restart)
    cv = plan.get("cross_validation", {})
    print(json.dumps({"out": str(args.out), "weights": str(Path(args.out) / "weights.pt"), "validation": cv}))
    return 0


def cmd_cohort(args: argparse.Namespace) -> int:
    from perfnet.runner import parse_part, run_cohort

    part = parse_part(args.part)
    options = ["--no-report"] if args.no_report else []
    for weights in args.weights or []:
        options += ["--weights", str(Path(weights).absolute())]
    if args.dicom:
        options += ["--dicom"]
    if args.cross_check is not None:
        if args.method != "cnn":
            raise PerfnetInputError("--cross-check", "checks a CNN's core: only with --method cnn")
        options += ["--cross-check", args.cross_check]
    if args.time_scaling is not None:
        if args.method != "cnn":
            raise PerfnetInputError(
                "--time-scaling", "sets how a CNN reads a slow bolus: only with --method cnn"
            )
        options += ["--time-scaling", args.time_scaling]
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
        find_adc_maps=args.find_adc,
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


def _draw_options(args: argparse.Namespace) -> DrawOptions:
    """The ``simulate`` options that change how style A draws a study rather than fix a parameter:
    a :class:`~perfnet.phantom.config.DrawOptions` (its fields are the options' ``dest``)."""
    import dataclasses

    from perfnet.phantom.config import DrawOptions

    return DrawOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DrawOptions)})


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
        jobs=args.jobs,
        options=_draw_options(args),
    )
    print(f"wrote {len(rows)} studies to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0
