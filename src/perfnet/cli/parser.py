"""The ``perfnet`` command's arguments: one parser, its value types and one-line usage errors."""

from __future__ import annotations

import argparse
from pathlib import Path

from perfnet import __version__
from perfnet.cli.cohort_commands import cmd_cohort, cmd_simulate, cmd_train
from perfnet.cli.options import (
    OneLineParser,
    add_input_overrides,
    add_overwrite,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    positive_range,
    ranged,
    unit_range,
)
from perfnet.cli.study_commands import cmd_analyze, cmd_convert, cmd_demo, cmd_evaluate, cmd_info
from perfnet.inference.timescale import MODES as TIME_SCALING_MODES
from perfnet.registry import DEFAULT_METHOD, method_names


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="perfnet",
        description="Perfusion maps (CBF, CBV, MTT, TTP, Tmax) and core/penumbra from CT perfusion "
        "and DSC-MRI.",
    )
    parser.add_argument("--version", action="version", version=f"perfnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    p = sub.add_parser("info", help="describe a 4D series (NIfTI file or DICOM folder) as JSON")
    p.add_argument("path", type=Path, help="NIfTI file or DICOM folder")
    add_input_overrides(p)
    p.add_argument("--compact", action="store_true", help="one-line JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a DICOM series (or NIfTI) to 4D NIfTI + JSON sidecar")
    p.add_argument("input", type=Path, help="DICOM folder or NIfTI file")
    p.add_argument("output", type=Path, help="output .nii.gz (the sidecar is written beside it)")
    add_input_overrides(p)
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
        "--weights",
        type=Path,
        action="append",
        metavar="FILE",
        help="CNN weights (default: the bundled ones of the modality); repeated: an ensemble (maps averaged)",
    )
    p.add_argument(
        "--cross-check",
        choices=method_names("conventional"),
        metavar="METHOD",
        help="--method cnn: run this conventional method (e.g. osvd) on the same preprocessed series and"
        " flag a core it calls inside the CNN's hypoperfused region that the CNN misses"
        " (cnn_core_disagrees), or a CNN core it does not support (cnn_core_unsupported;"
        " provenance cross_check)",
    )
    p.add_argument(
        "--time-scaling",
        choices=TIME_SCALING_MODES,
        metavar="MODE",
        help="--method cnn: how a bolus slower than the network trained on is read (flagged"
        " outside_training_domain either way). gated (the default): as acquired, and again on a"
        " compressed time axis, its maps mapped back, where the reading as acquired puts the healthy"
        " tissue's Tmax late (provenance time_scale_gate, time_scale); always:"
        " compressed whatever the reading; off: as acquired (docs/cnn.md 'A slow bolus')",
    )
    p.add_argument("--no-motion-correction", action="store_true", help="skip rigid motion correction")
    p.add_argument("--no-filter", action="store_true", help="skip the guided bilateral filter")
    p.add_argument(
        "--skip-frames",
        type=non_negative_int,
        metavar="N",
        help="drop the first N frames (non-steady state; default: detected; 0: keep all)",
    )
    p.add_argument(
        "--temporal-smoothing",
        type=ranged("temporal_smoothing_s", "temporal smoothing σ (s)"),
        default=0.0,
        metavar="S",
        help="Gaussian σ in s (0: off)",
    )
    p.add_argument("--brain-mask", type=Path, metavar="FILE", help="NIfTI brain mask on the series grid")
    p.add_argument(
        "--adc",
        type=Path,
        metavar="FILE",
        help="ADC map (NIfTI or DICOM, same session, any grid; units read from its values): the core from"
        " diffusion, ADC < 620e-6 mm2/s, instead of rCBF",
    )
    p.add_argument("--aif-mask", type=Path, metavar="FILE", help="NIfTI mask of arterial voxels")
    p.add_argument("--vof-mask", type=Path, metavar="FILE", help="NIfTI mask of venous (sinus) voxels")
    p.add_argument(
        "--hematocrit-factor",
        type=ranged("hematocrit_factor", "hematocrit factor"),
        default=0.73,
        metavar="KH",
    )
    p.add_argument(
        "--tissue-density",
        type=ranged("tissue_density", "tissue density (g/mL)"),
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
    g.add_argument("--tmax-threshold", type=positive_float, metavar="S", help="hypoperfusion Tmax threshold")
    g.add_argument(
        "--core-threshold",
        type=fraction,
        metavar="F",
        help="core relative CBF (0.3; CNN weights may carry a calibration factor applied on top:"
        " lesions.json core_rule)",
    )
    g.add_argument(
        "--reference",
        choices=["contralateral", "brain", "tmax4"],
        default="contralateral",
        help="healthy CBF reference: contralateral hemisphere, whole brain, or Tmax < 4 s tissue",
    )
    add_input_overrides(p)
    add_overwrite(p, "--out")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("train", help="train a perfusion CNN on a cohort with k-fold cross-validation")
    p.add_argument("cohort", type=Path, help="BIDS-like cohort folder (as perfnet simulate writes)")
    p.add_argument("--out", type=Path, required=True, help="run folder (plan, checkpoints, weights)")
    p.add_argument(
        "--model", default="unet", help="network of perfnet.models.NETWORKS (unet, temporal, shiftnet)"
    )
    p.add_argument("--maps", default="cbf,cbv,mtt,tmax,ttp", help="comma-separated maps to regress")
    p.add_argument(
        "--targets",
        default="truth",
        help="truth | reference | a conventional method: " + " | ".join(method_names("conventional")),
    )
    p.add_argument("--folds", type=positive_int, default=3, help="cross-validation folds (by patient)")
    p.add_argument("--fold", type=int, help="train only this fold (default: all)")
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=5, help="unet: epochs at --pretrain-size²")
    p.add_argument("--pretrain-size", type=positive_int, default=128)
    p.add_argument("--crop", type=positive_int, help="fine-tuning window (unet 256, temporal 32)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--lr", type=positive_float, default=5e-4)
    p.add_argument("--lr-step", type=positive_int, default=4, help="halve the learning rate every N epochs")
    p.add_argument("--width", type=positive_int, default=16, help="channels of the first stage")
    p.add_argument("--frame-interval", type=positive_float, default=1.0, help="model time grid step (s)")
    p.add_argument("--frames", type=positive_int, default=80, help="model time grid length")
    p.add_argument("--pixel-mm", type=positive_float, help="model in-plane pixel size (default: native)")
    p.add_argument(
        "--align-lead",
        type=float,
        default=6.0,
        metavar="S",
        help="start the time grid S s before the detected bolus arrival (negative: at the first frame)",
    )
    p.add_argument("--shift", default="-5,30", metavar="MIN,MAX", help="temporal shift augmentation (frames)")
    p.add_argument(
        "--shift-pad",
        choices=("reflect", "edge"),
        default="reflect",
        help="padding of shifted series: time mirrored at the ends (the bundled weights') or the first /"
        " last frame repeated (no mirrored bolus in the padded start)",
    )
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
    p.add_argument(
        "--freeze-norm",
        action="store_true",
        help="keep the batch-norm running statistics of --init (fine-tuning on a small cohort)",
    )
    p.add_argument(
        "--noise-max",
        type=float,
        default=0.5,
        metavar="F",
        help="noise augmentation: with probability 1/2 a sample gets Gaussian noise of SD drawn up to F"
        " times the input scale (another dose or SNR; default 0.5, about 4 HU on the CT network's"
        " input, where 40 against 320 mAs adds about 9–14 HU)",
    )
    p.add_argument(
        "--low-flow-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="MSE weight 1 + W on voxels whose target CBF is below 40 %% of their slice's median"
        " (the core and its margin; default 0: every voxel weighs the same)",
    )
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a constructor argument of --model (repeatable; VALUE read as JSON, else as text), e.g."
        " --model-option jitter=4 for shiftnet; recorded in the weights' model_kwargs",
    )
    p.add_argument(
        "--regional-delay",
        default="0,0",
        metavar="LO,HI",
        help="augmentation: with probability 1/2 delay a smooth region of each training slice by d frames,"
        " d drawn from the non-zero integers in [LO, HI] (negative: advanced, no further than the"
        " tissue's Tmax), moving its Tmax and TTP targets and not its CBF, CBV or MTT (a delay is not a"
        " flow drop; default 0,0: off)",
    )
    p.add_argument(
        "--truncate",
        default="0,0",
        metavar="LO,HI",
        help="augmentation: with probability 1/2 cut each training input LO..HI s after the detected bolus"
        " arrival and reflect-pad it there, as inference pads a short acquisition; the targets stay the"
        " truth (a delayed lesion's bolus peaking after the cut; default 0,0: off)",
    )
    p.add_argument(
        "--nll-beta",
        type=float,
        default=0.0,
        metavar="B",
        help="Laplace loss (temporal): each voxel's NLL times its detached scale^B (beta-NLL,"
        " Seitzer et al. 2022); 0 (default) Hess's NLL, where hard voxels (large scale) barely"
        " train their value; 1: values train as under an L1 loss, scales as before",
    )
    p.add_argument(
        "--bolus-rule",
        choices=("early-peak", "arterial"),  # perfnet.inference.inputs.BOLUS_RULES (tested)
        default="early-peak",
        help="where the temporal network's arterial bolus patch is placed: early-peak (the highest"
        " early peak, mostly the venous sinus) or arterial (the highest peak among the voxels that"
        " arrive first)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", default="auto", help="Lightning devices (a count or auto)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy (e.g. ddp)")
    p.add_argument("--num-nodes", type=positive_int, default=1)
    p.add_argument("--max-minutes", type=positive_float, help="stop each fold after this long")
    p.add_argument("--val-every", type=positive_int, default=1, help="validate every N epochs")
    p.add_argument(
        "--keep",
        choices=("last", "best"),
        default="last",
        help="each fold's weights: the last epoch's, or the validated epoch's with the lowest --select"
        " error (early stopping without stopping: every epoch still runs and is logged)",
    )
    p.add_argument(
        "--select",
        metavar="METRIC",
        help="the validation error --keep best minimises: val_tmax_maec (default when tmax is trained),"
        " val_loss (default otherwise) or val_mae_<map>",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="studies prepared at a time (worker processes): the slices, and conventional --targets"
        " (the cohort runner's local pool)",
    )
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="conventional --targets: compute them on this Dask scheduler"
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        metavar="N",
        help="DataLoader worker processes per rank (default: 0 up to 256 training slices, else ≤ 2)",
    )
    p.add_argument(
        "--reuse-slices",
        action="append",
        default=[],
        metavar="RUN",
        help="another run's folder on the same cohort: its prepared studies are taken (hard-linked) where"
        " their arrays are this run's (same series, grid, frames, targets; the log transform may differ)"
        " instead of being prepared again; repeatable",
    )
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out (no resume)")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="prepare the cohort's targets and slices in --out and stop; a later run with the same"
        " --out and input settings trains without preparing again (e.g. on another node)",
    )
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
    add_overwrite(p, "--out")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cohort", help="analyse every study of a dataset into BIDS derivatives (resumable)")
    p.add_argument("root", type=Path, help="BIDS-like dataset (or a folder of DICOM series folders)")
    p.add_argument(
        "--out", type=Path, required=True, help="derivatives folder (e.g. ROOT/derivatives/perfnet)"
    )
    p.add_argument("--method", choices=method_names(), default=DEFAULT_METHOD)
    p.add_argument(
        "--weights",
        type=Path,
        action="append",
        metavar="FILE",
        help="CNN weights (--method cnn; repeated: ensemble)",
    )
    p.add_argument(
        "--cross-check",
        choices=method_names("conventional"),
        metavar="METHOD",
        help="--method cnn: each study's CNN core cross-checked against this conventional method"
        " (analyze --cross-check)",
    )
    p.add_argument(
        "--time-scaling",
        choices=TIME_SCALING_MODES,
        metavar="MODE",
        help="--method cnn: how a slow bolus is read (analyze --time-scaling; default gated)",
    )
    p.add_argument(
        "--find-adc",
        action="store_true",
        help="the core from each study's ADC map: the one *adc*.nii[.gz] file in its session folder, "
        "or for a DICOM study folder its one series named ADC",
    )
    p.add_argument("--jobs", type=positive_int, default=1, help="studies analysed at once on this machine")
    p.add_argument("--threads", type=positive_int, help="threads per study (default: cores / jobs)")
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
    p.add_argument("--cases", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=0, help="case i uses seed + i")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="studies simulated at a time (worker processes; the cohort is the same for any count)",
    )
    p.add_argument(
        "--style",
        choices=["geometric", "mni"],
        default="geometric",
        help="phantom style: geometric head (A) or the MNI152 template (B, an independent simulator)",
    )
    g = p.add_argument_group("overrides of the randomised parameters")
    g.add_argument("--size", type=positive_int, help="in-plane matrix (64–512)")
    g.add_argument("--slices", type=positive_int, help="number of slices (4–32)")
    g.add_argument("--frames", type=positive_int, help="number of frames (30–90)")
    g.add_argument(
        "--frame-interval", type=positive_float, metavar="S", help="uniform frame interval (0.5–2 s)"
    )
    g.add_argument(
        "--dose", type=positive_float, metavar="MAS", help="CT tube current-time product (50–400 mAs)"
    )
    g.add_argument("--noise-sd", type=float, metavar="HU", help="CT noise SD, overriding --dose")
    g.add_argument("--snr", type=positive_float, help="MR baseline grey-matter SNR (15–150)")
    g.add_argument("--no-noise", action="store_true", help="noise-free signal")
    g.add_argument("--motion", action=argparse.BooleanOptionalAction, default=None, help="rigid head motion")
    g.add_argument("--lesion", choices=["none", "oligaemia", "penumbra", "core"])
    g.add_argument("--territory", choices=["MCA", "ACA", "PCA"], type=str.upper)
    g.add_argument("--hemisphere", choices=["left", "right"], type=str.lower)
    g.add_argument("--residue", choices=["exponential", "box", "gamma", "lognormal"])
    g.add_argument("--arrival", type=float, metavar="S", help="bolus arrival time (2–15 s)")
    g.add_argument(
        "--delay-power",
        type=positive_range,
        metavar="LO,HI",
        help="style A: each lesion's delay exponent γ drawn log-uniformly in LO–HI"
        " (delay = δ₀ + D·((1 − m)·w^γ + m·w₂); default γ = 1, the delay tied to the CBF drop)",
    )
    g.add_argument(
        "--delay-mix",
        type=unit_range,
        metavar="LO,HI",
        help="style A: the delay's share m of a second lesion weight w₂ (its own centre) drawn in LO–HI"
        " (0–1; default 0)",
    )
    g.add_argument(
        "--wide-bolus",
        action="store_true",
        help="style A: the arterial first pass drawn from a wider family (FWHM 4–16 s, gamma-variate"
        " shape 2–16: slow, near-symmetric boluses beside sharp ones; default 4–10 s, shape 2–5)",
    )
    g.add_argument(
        "--wide-dispersion",
        action="store_true",
        help="style A: the tissue dispersion kernel a gamma density of shape 1–6 (log-uniform) at the"
        " drawn mean instead of the exponential one (shape 1); the true Tmax moves with the shape",
    )
    g.add_argument(
        "--wide-residue",
        action="store_true",
        help="style A: the gamma residue's shape drawn in 1.5–16 (log-uniform) and the log-normal"
        " residue's sigma in 0.15–0.8, narrow transit-time distributions beside broad ones (default"
        " 1.5–4 and 0.3–0.8)",
    )
    add_overwrite(p, "OUT")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="simulate a stroke study and summarise it")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument(
        "--weights", type=Path, metavar="FILE", help="CT CNN weights compared with oSVD (default: bundled)"
    )
    p.set_defaults(func=cmd_demo)
    return parser
