"""Batches that are the same on one process and on N (data-parallel) processes, epoch by epoch.

Each epoch's order is a permutation drawn from ``default_rng([seed, epoch])`` (so a run resumed at
epoch e sees exactly the batches an uninterrupted run sees), cut into *global* batches of
``batch_size`` samples; under DDP rank r of W takes the samples r, r + W, … of every global batch.
With the loss normalised by the global batch's weight (:class:`perfnet.training.task.PerfusionTask`)
the averaged gradient of W processes equals the single-process gradient, so the runs differ only
by floating-point summation order (and by per-rank BatchNorm statistics, which CPU DDP cannot
synchronise). Items are ``(epoch, index)`` pairs so the dataset draws that epoch's augmentation
whatever the loader prefetches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochOrder(Sampler[int]):
    """Every sample once per epoch, in an order drawn from ``default_rng([seed, epoch])``.
    Lightning calls :meth:`set_epoch` (on a batch sampler's ``sampler``) before each epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[int]:
        return iter(int(i) for i in self.order(self.epoch))

    def __len__(self) -> int:
        return self.n


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for ``n`` samples (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.sampler = EpochOrder(n, seed, shuffle)
        self.batch_size = batch_size

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def global_batches(self, epoch: int, world: int = 1) -> list[np.ndarray]:
        """The epoch's batches over all ranks (a last batch smaller than the world is dropped:
        every rank must take part in every step)."""
        order = self.sampler.order(epoch)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [b for b in batches if len(b) >= world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rank, world = _rank_and_world()
        epoch = self.epoch
        for batch in self.global_batches(epoch, world):
            yield [(epoch, int(i)) for i in batch[rank::world]]

    def __len__(self) -> int:
        _, world = _rank_and_world()
        return len(self.global_batches(self.epoch, world))


class ValidationShard(Sampler[int]):
    """Validation split across data-parallel ranks: rank r of W takes samples r, r + W, …,
    padded with −1 (a sample that counts nothing, see
    :class:`~perfnet.training.dataset.SliceDataset`) to ⌈n / W⌉ so that every rank runs the same
    steps. The task sums its metrics over the ranks (:class:`perfnet.training.task.PerfusionTask`),
    so sharded validation gives the single-process numbers."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        mine = list(range(rank, self.n, world))
        return iter(mine + [-1] * (len(self) - len(mine)))

    def __len__(self) -> int:
        _, world = _rank_and_world()
        return -(-self.n // world)
