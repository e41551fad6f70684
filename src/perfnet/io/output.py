"""All-or-nothing output: files appear in the destination only when every one was written."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(destination: str | Path) -> Iterator[Path]:
    """Yield a private staging folder; on success move its contents into ``destination``.

    If the body raises, the staging folder is removed and ``destination`` is left exactly as it
    was (not even created), so a failed run never leaves partial outputs behind.
    """
    destination = Path(destination)
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        destination.mkdir(parents=True, exist_ok=True)
        for item in sorted(staging.iterdir()):
            target = destination / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
