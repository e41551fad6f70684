"""`perfnet train`: k-fold cross-validated training of a perfusion CNN on a cohort (PyTorch Lightning).

Layout of a run folder::

    RUN/plan.json                 every setting, the data split, the package version
    RUN/targets/<method>/         --targets osvd …: the cohort runner's derivatives tree of targets
    RUN/slices/<study>/           each study prepared on the model grid (input made as inference
                                  makes it, targets, brain; .npy arrays read one slice at a time)
    RUN/fold-K/metrics.csv        per-epoch training and validation metrics (appended on resume)
    RUN/fold-K/augmentations.csv  every training sample's random augmentation draw
    RUN/fold-K/last.ckpt          Lightning checkpoint of the last epoch (resume after interruption)
    RUN/fold-K/weights.pt         the trained model (perfnet-weights-1, weights_only loadable)
    RUN/weights.pt                the first fold's weights (or the all-data model of --folds 1)

Schedules: ``unet`` (Gava et al. 2022) pre-trains on slices shrunk to ``pretrain_size``² for
``pretrain_epochs`` and then fine-tunes at the full (model-pixel) resolution on random ``crop``²
windows; ``temporal`` (Hess et al. 2018) trains on 1 × ``crop`` × ``crop`` patches with the
Laplace likelihood. Both: Adam (lr 5e-4) halved every 4 epochs, brain-masked loss.

Several GPUs or nodes: ``--accelerator gpu --devices 4 --strategy ddp`` (Lightning launches one
process per device; on a cluster, start one ``perfnet train`` per node with Lightning's
``--num-nodes``-style environment, see docs/cnn.md "Training at scale"). The CPU path is what the
tests run. Rank 0 prepares the cohort (:mod:`perfnet.training.prepare`) before any rank reads it;
every rank then reads single slices from ``RUN/slices`` (``loader_workers`` DataLoader processes each), its
share of every global batch (:class:`GlobalBatchSampler`) and its shard of the validation set.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from perfnet import __version__
from perfnet.errors import PerfnetInputError
from perfnet.inference.inputs import FRAME_INTERVAL_S, FRAMES
from perfnet.inference.targets import LOG_OFFSETS, log_offsets_for
from perfnet.inference.weights import load_weights, save_weights
from perfnet.io.output import FolderLock, check_writable_destination
from perfnet.models import NETWORKS
from perfnet.training.checkpoints import (
    BestEpoch,
    EpochCheckpoint,
    is_rank_zero,
    read_best,
    remove_checkpoints,
    resume_point,
    truncate_logs,
    validation_scalars,
)
from perfnet.training.data import CohortStudy, discover, kfold_split, phantom_styles
from perfnet.training.dataset import Augmentation, Normalisation, SliceDataset
from perfnet.training.prepare import PreparedStudy, SliceRecipe, prepare_cohort
from perfnet.training.sampler import GlobalBatchSampler, ValidationShard
from perfnet.training.task import PerfusionTask

log = logging.getLogger("perfnet.train")

ALL_MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp")
#: Settings a resumed run may change (more epochs, another machine); any other change needs a new --out.
RESUMABLE = {
    "epochs",
    "max_minutes",
    "val_every",
    "progress",
    "fold",
    "accelerator",
    "devices",
    "strategy",
    "num_nodes",
    "jobs",
    "scheduler",
    "loader_workers",
    "reuse_slices",
    "keep",
    "select",  # a changed metric starts the best-epoch record again
}


@dataclass
class TrainConfig:
    """Every setting of a training run (written to plan.json)."""

    model: str = "unet"
    maps: list[str] = field(default_factory=lambda: list(ALL_MAPS))
    targets: str = "truth"
    folds: int = 3
    fold: int | None = None  # None: every fold
    epochs: int = 20
    pretrain_epochs: int = 5  # unet: epochs at pretrain_size² before fine-tuning
    pretrain_size: int = 128
    crop: int | None = None  # fine-tuning window (unet: 256; temporal: 32)
    batch_size: int = 8
    lr: float = 5e-4
    lr_step_epochs: int = 4
    lr_gamma: float = 0.5
    width: int = 16
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None  # mse (unet) | laplace (temporal)
    log_maps: list[str] = field(default_factory=lambda: ["cbf", "cbv"])  # regressed as log(v + offset)
    init: str | None = None  # start from this weights file (fine-tuning; skips pre-training)
    frame_interval: float = FRAME_INTERVAL_S
    frames: int = FRAMES
    pixel_mm: float | None = None
    align_lead_s: float | None = 6.0
    # how the temporal network's bolus patch is placed (perfnet.inference.inputs.BOLUS_RULES)
    bolus_rule: str = "early-peak"
    shift: tuple[int, int] = (-5, 30)
    shift_pad: str = "reflect"  # padding of shifted series: reflect | edge (training.dataset.Augmentation)
    flips: bool = True
    rotation_deg: float = 10.0
    noise: float = 0.5
    thin: list[int] = field(default_factory=lambda: [1])  # frame-thinning factors (fewer-frames training)
    freeze_norm: bool = False  # batch-norm running statistics kept from --init (fine-tuning)
    # extra loss weight of low-flow voxels (target CBF < LOW_FLOW_FRACTION of the slice's median)
    low_flow_weight: float = 0.0
    # delays (lo, hi frames) of the regional-delay augmentation (training.dataset; (0, 0): off)
    regional_delay: tuple[int, int] = (0, 0)
    # truncated acquisitions (lo, hi s after the detected bolus arrival; (0, 0): off): with
    # probability 1/2 the training input is cut there and reflect-padded (training.dataset)
    truncate: tuple[float, float] = (0.0, 0.0)
    # β-NLL for the Laplace loss (models.losses.laplace_nll_parts): 0 Hess's NLL, 1 values train as under L1
    nll_beta: float = 0.0
    seed: int = 0
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    max_minutes: float | None = None
    val_every: int = 1  # validate every N epochs (full-slice validation of `temporal` is slow on a CPU)
    # the fold's weights: the last epoch's, or the validated epoch's with the lowest `select` error
    keep: str = "last"
    select: str | None = None  # val_tmax_maec when tmax is trained, else val_loss; or val_mae_<map>
    limit_train_batches: int | float | None = None
    progress: bool = True
    jobs: int = 1  # studies prepared at a time: slices (worker processes), conventional targets (runner)
    scheduler: str | None = None  # … or on this Dask scheduler
    loader_workers: int | None = None  # DataLoader processes per rank (None: auto_loader_workers)
    # other runs on the same cohort whose prepared slices are adopted where the arrays match
    reuse_slices: list[str] = field(default_factory=list)

    def resolved(self) -> TrainConfig:
        c = TrainConfig(**asdict(self))
        unknown = [m for m in c.maps if m not in ALL_MAPS]
        if unknown:
            raise PerfnetInputError("--maps", f"unknown map(s) {', '.join(unknown)} (choose from {ALL_MAPS})")
        if c.model not in NETWORKS:
            raise PerfnetInputError("--model", f"unknown model {c.model!r} ({' or '.join(NETWORKS)})")
        spec = NETWORKS[c.model]
        if c.loss is None:
            c.loss = spec.loss
        if c.crop is None:
            c.crop = spec.crop
        if not spec.pretrain or c.init:
            c.pretrain_epochs = 0
        bad = [m for m in c.log_maps if m not in c.maps or m not in LOG_OFFSETS]
        if bad:
            raise PerfnetInputError(
                "--log-maps",
                f"{', '.join(bad)}: not a trained map with a log transform ({', '.join(LOG_OFFSETS)})",
            )
        c.shift = (int(c.shift[0]), int(c.shift[1]))
        if c.shift_pad not in ("reflect", "edge"):
            raise PerfnetInputError("--shift-pad", f"must be reflect or edge, got {c.shift_pad!r}")
        if not c.thin or any(int(k) < 1 for k in c.thin):
            raise PerfnetInputError("--thin", "frame-thinning factors must be integers ≥ 1")
        c.thin = [int(k) for k in c.thin]
        lo, hi = (int(v) for v in c.regional_delay)
        if not -30 <= lo <= hi <= 30:
            raise PerfnetInputError("--regional-delay", f"must be -30 <= LO <= HI <= 30, got {lo},{hi}")
        c.regional_delay = (lo, hi)
        cut_lo, cut_hi = (float(v) for v in c.truncate)
        if cut_hi > 0:
            if not 0 < cut_lo <= cut_hi:
                raise PerfnetInputError(
                    "--truncate", f"must be 0 < LO <= HI seconds, got {cut_lo:g},{cut_hi:g}"
                )
            if c.align_lead_s is None:
                raise PerfnetInputError(
                    "--truncate", "needs the grid aligned to the bolus arrival (--align-lead)"
                )
            if (c.align_lead_s + cut_lo) / c.frame_interval >= c.frames - 1:
                raise PerfnetInputError(
                    "--truncate", f"LO {cut_lo:g} s is past the end of the {c.frames}-frame grid"
                )
        c.truncate = (cut_lo, cut_hi)
        if not 0.0 <= c.noise <= 10.0:
            raise PerfnetInputError(
                "--noise-max", f"must be in [0, 10] (a fraction of the input scale), got {c.noise:g}"
            )
        if c.loader_workers is not None and c.loader_workers < 0:
            raise PerfnetInputError("--loader-workers", "must be 0 or more")
        if c.jobs < 1:
            raise PerfnetInputError("--jobs", "must be at least 1")
        if not 0.0 <= c.nll_beta <= 1.0:
            raise PerfnetInputError("--nll-beta", f"must be in [0, 1], got {c.nll_beta}")
        if c.keep not in ("last", "best"):
            raise PerfnetInputError("--keep", f"must be last or best, got {c.keep!r}")
        if c.select is None:
            c.select = "val_tmax_maec" if "tmax" in c.maps else "val_loss"
        errors = [n for n in validation_metric_names(c.maps) if not n.startswith("val_dice_")]
        if c.select not in errors:
            raise PerfnetInputError(
                "--select", f"{c.select!r} is not a validation error here ({', '.join(errors)})"
            )
        return c

    def build_kwargs(self) -> dict[str, Any]:
        spec = NETWORKS[self.model]
        by_maps = spec.map_kwargs(list(self.maps)) if spec.map_kwargs else {}
        return spec.kwargs(self.frames, len(self.maps), self.width) | by_maps | dict(self.model_kwargs)


def validation_metric_names(maps: list[str]) -> list[str]:
    """The validation metrics a run logs (:meth:`PerfusionTask.on_validation_epoch_end`): the loss, each
    map's MAE, with Tmax its MAEC and the Tmax > 6 s Dice, with CBF the Dice of the slice-wise
    rCBF < 30 % core (the Dice scores the only higher-is-better ones)."""
    names = ["val_loss", *(f"val_mae_{m}" for m in maps)]
    names += ["val_tmax_maec", "val_dice_hypoperfused"] if "tmax" in maps else []
    return names + (["val_dice_core"] if "cbf" in maps else [])


def auto_loader_workers(slices: int, world: int) -> int:
    """DataLoader worker processes per rank: none for a small set (≤ 256 training slices: worker
    start-up would cost more than it saves), else up to 2, leaving a core per rank for the model."""
    if slices <= 256:
        return 0
    return max(0, min(2, (os.cpu_count() or 1) // max(world, 1) - 1))


def _loader_worker_init(worker: int) -> None:
    """A DataLoader worker leaves SIGTERM to the main process. A scheduler or ``kill`` that
    signals the whole process group would otherwise end the workers first, and the main process
    would die of "DataLoader worker killed" (an internal error) instead of stopping cleanly with
    its checkpoints; the main process shuts its workers down on the way out, and a worker whose
    main process is gone exits by itself (PyTorch's watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _keep_interrupt(trainer: L.Trainer, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``trainer.fit`` / ``trainer.validate`` with Ctrl-C kept a KeyboardInterrupt. Lightning
    turns it into ``sys.exit(1)`` after its own teardown (the command then ended with status 1
    and no message instead of "interrupted", 130) and leaves SIGINT ignored for the rest of the
    process (a later Ctrl-C in the same Python session did nothing); both undone here."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return call(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        main = threading.current_thread() is threading.main_thread()
        if main and handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)


class Schedule(Callback):
    """Sets the dataset's epoch (the resolution follows the samples' epochs: Gava's pre-train →
    fine-tune switch), seeds the epoch's own random stream (dropout: a resumed epoch draws what
    an uninterrupted one draws), and on rank 0 appends the epoch's metrics and every augmentation
    draw of the global batches to the CSVs (drawn again here from their seeds: the draws of
    loader worker processes are the same)."""

    def __init__(
        self, dataset: SliceDataset, sampler: GlobalBatchSampler, cfg: TrainConfig, fold_dir: Path, seed: int
    ) -> None:
        self.dataset, self.sampler, self.cfg, self.fold_dir, self.seed = dataset, sampler, cfg, fold_dir, seed
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self.started = time.perf_counter()
        epoch = trainer.current_epoch
        self.dataset.epoch = epoch
        torch.manual_seed(int(np.random.default_rng([self.seed, epoch, trainer.global_rank]).integers(2**62)))

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        epoch = trainer.current_epoch
        validated = (epoch + 1) % max(1, self.cfg.val_every) == 0
        logged = trainer.callback_metrics  # on every rank: reading it reduces the synced metrics
        if not trainer.is_global_zero:
            return
        metrics = {
            k: float(v)
            for k, v in logged.items()
            if torch.is_tensor(v) and v.numel() == 1 and (validated or not k.startswith("val_"))
        }
        row = {
            "epoch": epoch,
            "step": trainer.global_step,
            "seconds": round(time.perf_counter() - self.started, 2),
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan"),
            "resolution": "pretrain" if epoch < self.cfg.pretrain_epochs else "fine-tune",
        } | {k: round(v, 6) for k, v in sorted(metrics.items())}
        names = ["train_loss", *validation_metric_names(self.cfg.maps)]
        fields = [*list(row)[:5], *names]  # fixed: epochs without validation leave those empty
        _append_csv(self.fold_dir / "metrics.csv", [row], fields, restval="")
        if self.dataset.augment.enabled:
            batches = self.sampler.global_batches(epoch, trainer.world_size)
            rows = [self.dataset.log_row(int(i), epoch) for batch in batches for i in batch]
            if rows:
                _append_csv(self.fold_dir / "augmentations.csv", rows, list(rows[0]))


def _append_csv(path: Path, rows: list[dict[str, Any]], fields: list[str], restval: str = "") -> None:
    """``rows`` appended under the file's own header (a run resumed by a newer perfnet that logs
    more metrics keeps its columns aligned), or under ``fields`` in a new file."""
    new = not path.is_file()
    if not new:
        with path.open(newline="") as f:
            fields = next(csv.reader(f), None) or fields
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval=restval)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def _prepare(
    studies: list[CohortStudy], cohort: str | Path, out: Path, cfg: TrainConfig, writer: bool
) -> list[PreparedStudy]:
    """Targets and slices of every study, prepared by rank 0 (see :mod:`perfnet.training.prepare`)."""
    recipe = SliceRecipe(
        list(cfg.maps),
        cfg.targets,
        cfg.frame_interval,
        cfg.frames,
        cfg.pixel_mm,
        cfg.align_lead_s,
        log_offsets_for(cfg.log_maps),
        cfg.bolus_rule,
    )
    return prepare_cohort(
        studies,
        Path(cohort),
        out,
        recipe,
        writer,
        cfg.jobs,
        cfg.scheduler,
        progress=cfg.progress,
        reuse=[Path(r) for r in cfg.reuse_slices],
    )


def train(
    cohort: str | Path, out: str | Path, cfg: TrainConfig, resume: bool = True, prepare_only: bool = False
) -> dict[str, Any]:
    """Train (and cross-validate) a model; returns the plan with every fold's validation metrics.

    Started again with the same ``out`` (``resume``), a run continues where it stopped: finished
    folds are kept as they are, an interrupted fold continues after its last completed epoch.
    Under DDP only rank 0 writes files and holds the run folder's lock. ``prepare_only``: the
    cohort's targets and slices are prepared in ``out`` and nothing else is written (no plan, no
    fold); a later run with the same ``out`` and input settings trains on them without preparing
    again (their keys do not depend on the schedule or ``init``). Returns ``{"prepared": n, "out": …}``."""
    cfg = cfg.resolved()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    out = Path(out).absolute()
    writer = is_rank_zero()
    studies = discover(cohort)
    subjects = [s.subject for s in studies]
    splits = kfold_split(subjects, cfg.folds, cfg.seed)
    folds = list(range(len(splits))) if cfg.fold is None else [cfg.fold]
    if any(k < 0 or k >= len(splits) for k in folds):
        raise PerfnetInputError("--fold", f"fold must be in 0…{len(splits) - 1}")
    start = InitialWeights.read(cfg) if cfg.init else None  # before anything is written
    lock = FolderLock(out)
    if writer:
        check_writable_destination(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        if prepare_only:
            return {"prepared": len(_prepare(studies, cohort, out, cfg, writer)), "out": str(out)}
        return _train(cohort, out, cfg, resume, studies, subjects, splits, folds, start, writer)
    finally:
        lock.release()


def _train(
    cohort: str | Path,
    out: Path,
    cfg: TrainConfig,
    resume: bool,
    studies: list[CohortStudy],
    subjects: list[str],
    splits: list[list[str]],
    folds: list[int],
    start: InitialWeights | None,
    writer: bool,
) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "perfnet_version": __version__,
        "cohort": str(Path(cohort).resolve()),
        "config": asdict(cfg),
        "studies": [s.name for s in studies],
        "splits": [
            {
                "fold": k,
                "validation_subjects": val,
                "training_subjects": sorted(set(subjects) - set(val)),
            }
            for k, val in enumerate(splits)
        ],
        "folds": {},
    }
    previous = out / "plan.json"
    if resume and previous.is_file():
        old = json.loads(previous.read_text())
        mine = json.loads(json.dumps(asdict(cfg), default=str))
        # a setting added after the run was planned counts as its default (an interrupted run
        # resumes after an upgrade unless the setting was changed)
        defaults = json.loads(json.dumps(asdict(TrainConfig()), default=str))
        planned = defaults | old.get("config", {})
        same = {k: v for k, v in mine.items() if k not in RESUMABLE}
        if {k: v for k, v in planned.items() if k not in RESUMABLE} != same:
            raise PerfnetInputError(previous, "a run with other settings exists here; choose another --out")
        plan["folds"] = old.get("folds", {})
        for key in ("cross_validation", "load_seconds"):
            if key in old:
                plan[key] = old[key]
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(previous, plan)

    def finished(k: int) -> bool:
        entry = plan["folds"].get(str(k), {})
        return (
            resume and entry.get("epochs", -1) >= cfg.epochs and (out / f"fold-{k}" / "weights.pt").is_file()
        )

    todo = [k for k in folds if not finished(k)]
    for k in folds:
        if k not in todo:
            log.info("fold %d is complete (%s); kept as it is", k, plan["folds"][str(k)]["weights"])
    data: list[PreparedStudy] = []
    load_seconds = 0.0
    if todo:
        started = time.perf_counter()
        data = _prepare(studies, cohort, out, cfg, writer)
        load_seconds = time.perf_counter() - started
        log.info("prepared %d studies in %.1f s", len(data), load_seconds)

    for k in todo:
        fold_dir = out / f"fold-{k}"
        if writer:
            fold_dir.mkdir(exist_ok=True)
        plan["folds"][str(k)] = _train_fold(
            k, cohort, out, fold_dir, cfg, resume, data, splits, start, writer, studies
        )
        if writer:
            _write_json(out / "plan.json", plan)
            if k == folds[0]:
                shutil.copyfile(fold_dir / "weights.pt", out / "weights.pt")
    summary = {
        key: float(np.mean([f["validation"][key] for f in plan["folds"].values() if key in f["validation"]]))
        for key in sorted({m for f in plan["folds"].values() for m in f["validation"]})
    }
    plan["cross_validation"] = summary
    if todo:
        plan["load_seconds"] = round(load_seconds, 1)
    if writer:
        _write_json(out / "plan.json", plan)
    return plan


def _train_fold(
    k: int,
    cohort: str | Path,
    out: Path,
    fold_dir: Path,
    cfg: TrainConfig,
    resume: bool,
    data: list[PreparedStudy],
    splits: list[list[str]],
    start: InitialWeights | None,
    writer: bool,
    studies: list[CohortStudy],
) -> dict[str, Any]:
    """One fold: train (continuing from its newest good checkpoint), validate, write weights.pt;
    returns the fold's plan entry. ``studies``: the cohort's (``data`` is their prepared slices)."""
    val_subjects = set(splits[k])
    train_set = [s for s in data if s.subject not in val_subjects]
    val_set = [s for s in data if s.subject in val_subjects]
    if not train_set:
        raise PerfnetInputError(cohort, "no training studies left after the split")
    L.seed_everything(cfg.seed + k, workers=True, verbose=False)
    norm = Normalisation.from_moments([s.moments for s in train_set], cfg.maps, log_offsets_for(cfg.log_maps))
    if start is not None:
        start.adopt_normalisation(norm)
    augment = Augmentation(
        cfg.shift,
        cfg.flips,
        cfg.rotation_deg,
        cfg.noise,
        enabled=True,
        thin=tuple(cfg.thin),
        shift_pad=cfg.shift_pad,
        regional_delay=cfg.regional_delay,
        truncate=truncate_frames(cfg),
    )
    train_ds = SliceDataset(
        train_set,
        cfg.maps,
        norm,
        cfg.frame_interval,
        crop=cfg.crop,
        augment=augment,
        seed=cfg.seed + 1000 * k,
        pretrain_epochs=cfg.pretrain_epochs,
        pretrain_size=cfg.pretrain_size,
    )
    val_ds = SliceDataset(val_set, cfg.maps, norm, cfg.frame_interval)
    model_kwargs = cfg.build_kwargs()
    task = PerfusionTask(
        cfg.model,
        model_kwargs,
        cfg.maps,
        norm.target_mean,
        norm.target_sd,
        [float(t) for t in train_set[0].grid],
        loss=str(cfg.loss),
        lr=cfg.lr,
        lr_step_epochs=cfg.lr_step_epochs,
        lr_gamma=cfg.lr_gamma,
        log_offsets=norm.log_offsets,
        freeze_norm=cfg.freeze_norm,
        low_flow_weight=cfg.low_flow_weight,
        nll_beta=cfg.nll_beta,
    )
    if start is not None:
        task.model.load_state_dict(start.state_dict)
    sampler = GlobalBatchSampler(len(train_ds), cfg.batch_size, seed=cfg.seed + 1000 * k)
    world = _world_size(cfg)
    workers = auto_loader_workers(len(train_ds), world) if cfg.loader_workers is None else cfg.loader_workers
    loading: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    if workers:
        loading["worker_init_fn"] = _loader_worker_init
    train_loader = DataLoader(train_ds, batch_sampler=sampler, **loading)
    val_loader = (
        DataLoader(val_ds, sampler=ValidationShard(len(val_ds)), batch_size=1, **loading) if val_set else None
    )

    checkpoint, last_epoch = resume_point(fold_dir, warn=writer) if resume else (None, -1)
    # Lightning starts the loader's iterator before it sets the resumed epoch on the sampler;
    # DataLoader workers prefetch at once, so without this the first resumed epoch was drawn as
    # epoch 0 (its order, pre-train resolution and augmentations) whenever workers were used.
    sampler.set_epoch(last_epoch + 1)
    if writer:
        if not resume:
            remove_checkpoints(fold_dir)
        truncate_logs(fold_dir, last_epoch)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        logger=False,
        enable_checkpointing=False,
        callbacks=[
            Schedule(train_ds, sampler, cfg, fold_dir, cfg.seed + 1000 * k),
            BestEpoch(fold_dir, str(cfg.select), cfg.val_every),  # before last.ckpt: see BestEpoch
            EpochCheckpoint(fold_dir),
        ],
        use_distributed_sampler=False,  # GlobalBatchSampler splits batches across ranks itself
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        deterministic=False,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=1.0 if val_loader is not None else 0,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=cfg.val_every,
        log_every_n_steps=1,
    )
    fold_start = time.perf_counter()
    _keep_interrupt(
        trainer,
        trainer.fit,
        task,
        train_loader,
        val_loader,
        ckpt_path=None if checkpoint is None else str(checkpoint),
        weights_only=True,
    )
    seconds = time.perf_counter() - fold_start

    def validation() -> dict[str, float]:
        return validation_scalars(trainer.callback_metrics)

    val_metrics = validation()
    last_validated = trainer.current_epoch % max(1, cfg.val_every) == 0
    best = read_best(fold_dir) if cfg.keep == "best" else None
    if best is not None and best.get("metric") == cfg.select:
        task.model.load_state_dict(best["state_dict"])  # the best validated epoch's weights and metrics
        val_metrics = {k2: float(v) for k2, v in best["validation"].items()}
        kept = {
            "rule": "best",
            "epoch": int(best["epoch"]),
            "metric": cfg.select,
            "value": float(best["value"]),
        }
    else:
        if val_loader is not None and (not val_metrics or not last_validated or cfg.max_minutes):
            _keep_interrupt(trainer, trainer.validate, task, val_loader, verbose=False)  # the final weights
            val_metrics = validation()
        kept = {"rule": "last", "epoch": trainer.current_epoch - 1}
    weights_config = {
        "model": cfg.model,
        "model_kwargs": model_kwargs,
        "maps": cfg.maps,
        "modality": _modality(studies[0]),
        "frame_interval": cfg.frame_interval,
        "frames": cfg.frames,
        "pixel_mm": cfg.pixel_mm,
        "align_lead_s": cfg.align_lead_s,
        "bolus_rule": cfg.bolus_rule,
        "input_scale": norm.input_scale,
        "target_mean": norm.target_mean,
        "target_sd": norm.target_sd,
        "log_offsets": norm.log_offsets,
        # what the training studies looked like (inference flags studies outside it)
        "domain": training_domain(
            train_set, start, cfg.thin, cfg.frame_interval, cfg.truncate[0] if cfg.truncate[1] > 0 else None
        ),
        "training": {
            "targets": cfg.targets,
            "fold": k,
            "folds": cfg.folds,
            "epochs": trainer.current_epoch,
            "seconds": round(seconds, 1),
            "training_studies": len(train_set),
            "validation_studies": len(val_set),
            # the phantom styles trained on (benchmarks/generalisation.py's cross-style gap)
            "phantom_styles": phantom_styles(studies, {s.name for s in train_set}),
            "validation": val_metrics,
            "kept": kept,
            "seed": cfg.seed,
            "perfnet_version": __version__,
            "init": None if start is None else start.provenance,
        },
    }
    weights = fold_dir / "weights.pt"
    if writer:
        save_weights(weights, task.model, weights_config)
    trainer.strategy.barrier("perfnet-weights")
    return {
        "weights": str(weights.relative_to(out)),
        "epochs": trainer.current_epoch,
        "seconds": round(seconds, 1),
        "validation": val_metrics,
        "kept": kept,
        "training_slices": len(train_ds),
        "loader_workers": workers,
        "samples_per_second": round(trainer.current_epoch * len(train_ds) / max(seconds, 1e-9), 2),
    }


def training_domain(
    train_set: list[PreparedStudy],
    start: InitialWeights | None,
    thin: list[int] | tuple[int, ...] = (1,),
    grid_s: float = FRAME_INTERVAL_S,
    cut_after_s: float | None = None,
) -> dict[str, Any] | None:
    """The weights' ``domain`` (:mod:`perfnet.inference.domain`): the envelope of the training
    studies' descriptors (their frame intervals widened by ``--thin`` on the ``grid_s`` input
    grid, their acquisition after the arrival by ``--truncate``'s shortest cut ``cut_after_s``),
    joined with the initial weights' domain when fine-tuning."""
    from perfnet.inference.domain import envelope, thinned, truncated, union

    described = [s.descriptors for s in train_set if s.descriptors]
    mine = envelope(described, f"{len(described)} training studies") if described else None
    mine = truncated(thinned(mine, thin, grid_s), cut_after_s)
    return union(None if start is None else start.config.get("domain"), mine)


def truncate_frames(cfg: TrainConfig) -> tuple[int, int]:
    """``--truncate``'s cut (seconds after the bolus arrival) as grid frames ((0, 0): off)."""
    if cfg.truncate[1] <= 0 or cfg.align_lead_s is None:
        return (0, 0)
    last = cfg.frames - 2
    lo, hi = (min(last, round((cfg.align_lead_s + s) / cfg.frame_interval)) for s in cfg.truncate)
    return (int(lo), int(hi))


@dataclass
class InitialWeights:
    """``--init``: a weights file checked to fit the run (read before any output is written)."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    provenance: dict[str, Any]

    @classmethod
    def read(cls, cfg: TrainConfig) -> InitialWeights:
        path = Path(str(cfg.init))
        model, config = load_weights(path)
        mine = {
            "model": cfg.model,
            "model_kwargs": cfg.build_kwargs(),
            "maps": list(cfg.maps),
            "frames": cfg.frames,
            "frame_interval": cfg.frame_interval,
            "pixel_mm": cfg.pixel_mm,
            "align_lead_s": cfg.align_lead_s,
        }
        differ = [f"{k} {config.get(k)!r} ≠ {v!r}" for k, v in mine.items() if config.get(k) != v]
        if differ:
            raise PerfnetInputError(path, "weights do not fit this run: " + "; ".join(differ))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        provenance = {"file": path.name, "sha256": digest, "training": config.get("training", {})}
        return cls(model.state_dict(), config, provenance)

    def adopt_normalisation(self, norm: Normalisation) -> None:
        """The input scale is taken over (the features were learnt at it), and so is the target
        standardisation of every map regressed in the same domain; a map whose transform changed
        keeps this cohort's statistics and its output layer re-learns."""
        old_logs = self.config.get("log_offsets", {})
        norm.input_scale = float(self.config["input_scale"])
        for m in norm.target_mean:
            if old_logs.get(m) == norm.log_offsets.get(m):
                norm.target_mean[m] = float(self.config["target_mean"][m])
                norm.target_sd[m] = float(self.config["target_sd"][m])


def _world_size(cfg: TrainConfig) -> int:
    """Data-parallel processes of the run as far as known before Lightning starts (for the
    default number of loader workers)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    devices = cfg.devices if isinstance(cfg.devices, int) else 1
    return max(1, devices) * max(1, cfg.num_nodes)


def _modality(study: CohortStudy) -> str:
    return "MR" if study.series_path.name.split(".nii")[0].endswith("_dsc") else "CT"
