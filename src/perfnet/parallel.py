"""Worker processes for per-study work on one machine (``perfnet simulate --jobs``, ``perfnet train
--jobs``): spawned, not forked (no copy of a parent's torch thread pool or open files), each limited
to one compute thread so that N workers use N cores."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from perfnet.errors import PerfnetError

T = TypeVar("T")

#: Thread-count variables of the numerical libraries, set to 1 in each worker before they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _one_thread() -> None:
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of ``jobs`` spawned worker processes with one compute thread each."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_one_thread)


def result(future: Future[T]) -> T:
    """The task's result, its own error re-raised as is; a worker that died (killed, out of memory)
    becomes one line that says what to do instead of a pool traceback."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise PerfnetError(
            "a worker process ended abruptly (out of memory?): run again with fewer --jobs"
        ) from None
