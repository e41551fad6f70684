"""Checkpoints of a training fold: written atomically every epoch, read back with care.

``fold-K/last.ckpt`` is replaced at the end of every epoch (written to a temporary file, then
renamed; the checkpoint it replaces stays as ``previous.ckpt``), so at every instant the fold
folder holds a complete checkpoint of a completed epoch. On a restart :func:`resume_point` takes
the newest one that loads (``weights_only=True``; a corrupt file is reported by name and the
previous one is used), and :func:`truncate_logs` drops the per-epoch rows written after it, so
``metrics.csv`` and ``augmentations.csv`` list every epoch once.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"
BEST = "best.pt"
LOGS = ("metrics.csv", "augmentations.csv")


def is_rank_zero() -> bool:
    """True in the process that writes files: rank 0 of a DDP run (from the launcher's
    environment, so it is known before Lightning starts), or a plain single process."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


class EpochCheckpoint(Callback):
    """Saves ``last.ckpt`` atomically at the end of every training epoch (after the epoch's
    metrics rows), keeping the one before as ``previous.ckpt``. Only rank 0 writes."""

    def __init__(self, fold_dir: Path) -> None:
        self.fold_dir = fold_dir

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        last, previous = self.fold_dir / LAST, self.fold_dir / PREVIOUS
        tmp = self.fold_dir / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp)  # every rank takes part; the strategy writes on rank 0 only
        if trainer.is_global_zero:
            if last.is_file():
                aside = self.fold_dir / f".{PREVIOUS}.tmp"
                with contextlib.suppress(FileNotFoundError):
                    aside.unlink()
                os.link(last, aside)
                os.replace(aside, previous)
            _fsync(tmp)
            os.replace(tmp, last)
        trainer.strategy.barrier("perfnet-epoch-checkpoint")


class BestEpoch(Callback):
    """Keeps the weights of the validated epoch with the lowest ``metric`` (a validation error:
    ``val_tmax_maec``, ``val_loss``, ``val_mae_<map>``) as ``best.pt``: the model's state dict, the
    epoch and its validation metrics, replaced atomically, before the epoch's ``last.ckpt`` is
    written (so a run killed in between keeps it). A resumed fold starts from the saved best: the
    epochs it runs again are deterministic and give the same weights. Only rank 0 writes."""

    def __init__(self, fold_dir: Path, metric: str, val_every: int) -> None:
        self.fold_dir, self.metric, self.val_every = fold_dir, metric, max(1, val_every)
        best = read_best(fold_dir)
        self.value = float("inf") if best is None or best.get("metric") != metric else float(best["value"])

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.val_every:
            return
        logged = trainer.callback_metrics
        value = logged.get(self.metric)
        if value is None or not torch.is_tensor(value) or not torch.isfinite(value).all():
            return
        value = float(value)
        if value >= self.value:
            return
        self.value = value
        if not trainer.is_global_zero:
            return
        metrics = validation_scalars(logged)
        state = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}
        blob = {
            "epoch": epoch,
            "metric": self.metric,
            "value": value,
            "validation": metrics,
            "state_dict": state,
        }
        tmp = self.fold_dir / f".{BEST}.tmp"
        torch.save(blob, tmp)
        _fsync(tmp)
        os.replace(tmp, self.fold_dir / BEST)


def validation_scalars(logged: dict[str, Any]) -> dict[str, float]:
    """The finite scalar ``val_*`` metrics of a trainer's ``callback_metrics``."""
    return {
        k: float(v)
        for k, v in logged.items()
        if k.startswith("val_") and torch.is_tensor(v) and v.numel() == 1 and torch.isfinite(v).all()
    }


def read_best(fold_dir: Path) -> dict[str, Any] | None:
    """The fold's ``best.pt`` (weights-only load), or None when there is none or it is unreadable."""
    path = fold_dir / BEST
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob.get("state_dict"), dict):
            raise TypeError("no state_dict")
        return blob
    except Exception as exc:
        print(
            f"perfnet: warning: {path}: unreadable best-epoch weights ({type(exc).__name__}); ignored",
            file=sys.stderr,
        )
        return None


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def resume_point(fold_dir: Path, warn: bool = True) -> tuple[Path | None, int]:
    """The newest loadable checkpoint of a fold and its (completed) epoch; (None, −1) for none."""
    for name in (LAST, PREVIOUS):
        path = fold_dir / name
        if not path.is_file():
            continue
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            epoch = int(blob["epoch"])
            if not isinstance(blob["state_dict"], dict):
                raise TypeError("no state_dict")
        except Exception as exc:
            if warn:
                print(
                    f"perfnet: warning: {path}: unreadable checkpoint ({type(exc).__name__}); "
                    + ("trying previous.ckpt" if name == LAST else "restarting the fold"),
                    file=sys.stderr,
                )
            continue
        return path, epoch
    return None, -1


def truncate_logs(fold_dir: Path, last_epoch: int) -> None:
    """Keep the rows of epochs ≤ ``last_epoch`` in the fold's per-epoch CSVs (all go for −1)."""
    for name in LOGS:
        path = fold_dir / name
        if not path.is_file():
            continue
        if last_epoch < 0:
            path.unlink()
            continue
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = [r for r in reader if r.get("epoch", "").isdigit() and int(r["epoch"]) <= last_epoch]
        tmp = path.with_name(f".{name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)


def remove_checkpoints(fold_dir: Path) -> None:
    for name in (LAST, PREVIOUS, BEST):
        with contextlib.suppress(FileNotFoundError):
            (fold_dir / name).unlink()
