"""Peak resident memory of the process during a block (sampled from /proc every 20 ms)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Yields a dict that holds, after the block, ``peak_gb`` (process RSS), ``extra_gb`` (the peak
    above the RSS at the block's start: what the step itself needed) and ``seconds``."""
    result: dict[str, float] = {}
    start_rss = _rss_bytes()
    peak = [start_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak_gb"] = peak[0] / 1e9
        result["extra_gb"] = (peak[0] - start_rss) / 1e9


def measured_analysis(series: Any, options: Any) -> tuple[Any, dict[str, float], str]:
    """``perfnet.conventional.pipeline.analyze`` under :func:`peak_memory`: the result, the
    measurement, and the pipeline's own step times as text ("motion 1.2, aif 0.3, ...")."""
    from perfnet.conventional.pipeline import analyze

    with peak_memory() as m:
        result = analyze(series, options)
    steps = ", ".join(f"{k} {v:.1f}" for k, v in result.provenance["seconds"].items())
    return result, m, steps
