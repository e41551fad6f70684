"""Output folders that are replaced whole or not at all, by one run at a time.

An :class:`OutputFolder` is checked before any computation starts (not a file, not under a file,
writable, on the same filesystem as its parent, and either empty, absent, or a complete earlier
perfnet output holding only the files perfnet wrote — else ``overwrite`` is needed). While it is
open it holds a lock file beside the destination (``.<name>.lock``, ``flock``: released by the
kernel when the process dies, so a killed run never leaves a stale lock; a run finding it held
waits up to :data:`LOCK_WAIT_S` for it before refusing) and a private staging
folder beside it (``.<name>.partial-<pid>-<random>``: same filesystem, so the swap is a rename).
:meth:`OutputFolder.commit` writes the manifest (``.perfnet-output.json``: the run id and every
file of the set), flushes every file to disk and swaps the staging folder in with one atomic
``renameat2(RENAME_EXCHANGE)`` (or, where the filesystem lacks it, two renames whose middle state
the next run repairs); the previous set, now in the staging path, is removed after the swap.

A crash at any instant therefore leaves the destination holding either the complete old set or
the complete new one; staging and aside folders of a killed run are removed by the next run that
takes the lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from perfnet.errors import PerfnetInputError

#: How long a run waits for a held lock before refusing. A killed holder keeps its lock until it has
#: finished dying, which a process killed inside ``fsync`` of a busy disk does only when the call
#: returns (seconds): a cohort killed and restarted at once found the study it had been writing
#: "being written by another run". Short beside any real run, which is then refused.
LOCK_WAIT_S = 10.0
MANIFEST = ".perfnet-output.json"
MANIFEST_FORMAT = "perfnet-output-1"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_path(path: Path, directory: bool = False) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder), directory=True)


def _relative_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != MANIFEST
    )


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a perfnet output folder, or None when there is none (or it is unreadable)."""
    path = Path(folder) / MANIFEST
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != MANIFEST_FORMAT:
        return None
    return content


class FolderLock:
    """An exclusive lock on ``path`` held through ``<parent>/.<name>.lock`` (a bounded wait, then a refusal).

    A second holder waits up to :data:`LOCK_WAIT_S` (polling), then is refused with a one-line
    input error; the lock dies with its process. The lock file is removed on release (after which
    a waiter that opened the old file notices the inode changed and takes the lock on a fresh
    file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = self.path.parent / f".{self.path.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise PerfnetInputError(self.path.parent, f"cannot write here ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise PerfnetInputError(
                    self.path, "another perfnet run is writing this output now; wait for it or choose another"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)  # the file was removed by the previous holder between open and lock

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.file)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _prepare_parent(destination: Path) -> list[Path]:
    """Refuse a destination under a file or in a folder that cannot be written; returns the
    missing parent folders, outermost last (the caller creates them)."""
    missing: list[Path] = []
    ancestor = destination.parent
    while not ancestor.exists():
        if ancestor.is_symlink():  # a dangling link
            raise PerfnetInputError(ancestor, "is a broken link")
        missing.append(ancestor)
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PerfnetInputError(destination, f"lies under {ancestor}, which is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PerfnetInputError(ancestor, "is not writable")
    return missing


def check_writable_destination(destination: Path) -> list[Path]:
    """Refuse an output folder that is a file or a link, lies under a file, is a mount point or
    cannot be written; returns the missing parent folders (to be created)."""
    if destination.is_symlink():
        raise PerfnetInputError(destination, "is a symbolic link; give the folder it points to")
    if destination.exists() and not destination.is_dir():
        raise PerfnetInputError(destination, "exists and is not a folder")
    missing = _prepare_parent(destination)
    if destination.is_dir() and os.path.ismount(destination):
        raise PerfnetInputError(
            destination, "is a mount point: a folder cannot be replaced there; choose a folder inside it"
        )
    return missing


def _make_folders(missing: list[Path]) -> list[Path]:
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise PerfnetInputError(folder, f"cannot create the folder ({exc.strerror})") from None
        created.insert(0, folder)  # innermost first
    return created


def _remove_folders(created: list[Path]) -> None:
    for folder in created:  # innermost first; only while still empty
        with contextlib.suppress(OSError):
            folder.rmdir()


def _staging_folder(destination: Path) -> Path:
    try:
        return Path(
            tempfile.mkdtemp(prefix=f".{destination.name}.partial-{os.getpid()}-", dir=destination.parent)
        )
    except OSError as exc:
        raise PerfnetInputError(destination.parent, f"cannot write here ({exc.strerror})") from None


def _remove_leftovers(destination: Path, kind: str = "partial") -> None:
    for path in destination.parent.glob(f".{destination.name}.{kind}-*"):
        shutil.rmtree(path, ignore_errors=True)


class OutputFolder:
    """A destination folder written as a whole (see the module docstring).

    Use as a context manager: the body writes into :attr:`staging`; leaving it normally commits
    (swaps the new set in), leaving it with an exception discards the staging folder and leaves
    the destination as it was. :attr:`run_id` identifies the run in its manifest (and in
    whatever the caller writes, e.g. provenance.json)."""

    def __init__(
        self,
        destination: str | Path,
        *,
        overwrite: bool = False,
        command: str = "",
        protect: list[str | Path | None] | tuple[str | Path | None, ...] = (),
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        """``protect``: inputs of the run, refused when they lie inside the destination (which
        is replaced as a whole). ``keep``: files of the previous set (listed in its manifest) that
        this run does not replace, e.g. another method's files in a BIDS session folder; they are
        carried into the new set (hard links) before the swap."""
        self.destination = Path(destination).absolute()
        self.keep = keep
        self.protect = [Path(p) for p in protect if p is not None]
        self.overwrite = overwrite
        self.command = command
        self.run_id = uuid.uuid4().hex
        self.staging: Path = self.destination  # set by open()
        self._lock = FolderLock(self.destination)
        self._created: list[Path] = []
        self._open = False

    # -- life cycle ---------------------------------------------------------------------------
    def open(self) -> Path:
        """Check the destination, take the lock, clean up leftovers and create the staging folder."""
        missing = check_writable_destination(self.destination)
        dest = self.destination.resolve()
        for path in self.protect:
            if path.exists() and (path.resolve() == dest or dest in path.resolve().parents):
                raise PerfnetInputError(
                    path, f"lies inside the output folder {self.destination}, which is replaced as a whole"
                )
        self._created = _make_folders(missing)
        try:
            self._lock.acquire()
        except BaseException:
            _remove_folders(self._created)
            raise
        try:
            self._recover()
            self._check_contents()
            self.staging = _staging_folder(self.destination)
        except BaseException:
            self._lock.release()
            _remove_folders(self._created)
            raise
        self._open = True
        return self.staging

    def commit(self) -> Path:
        """Write the manifest, flush, and swap the staged set in. Returns the destination."""
        if not self._open:
            raise RuntimeError("output folder is not open")
        self._carry_over()
        manifest = {
            "format": MANIFEST_FORMAT,
            "command": self.command,
            "run_id": self.run_id,
            "files": _relative_files(self.staging),
        }
        from perfnet import __version__

        manifest["perfnet_version"] = __version__
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(self.staging)
        dest = self.destination
        if dest.exists():
            if not _exchange(self.staging, dest):
                aside = dest.with_name(f".{dest.name}.old-{os.getpid()}")
                os.rename(dest, aside)
                try:
                    os.rename(self.staging, dest)
                except BaseException:
                    os.rename(aside, dest)
                    raise
                self.staging = aside
            # self.staging now holds the previous set
            _fsync_path(dest.parent, directory=True)
            shutil.rmtree(self.staging, ignore_errors=True)
        else:
            os.rename(self.staging, dest)
            _fsync_path(dest.parent, directory=True)
        self._open = False
        return dest

    def discard(self) -> None:
        """Remove the staging folder (the destination stays as it was)."""
        if self._open:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._open = False

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> OutputFolder:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        committed = False
        try:
            if exc_type is None:
                self.commit()
                committed = True
        finally:
            if not committed:
                self.discard()
            self.close()
            if not committed:  # after the lock file is gone: folders this run created, if empty
                _remove_folders(self._created)

    # -- helpers ------------------------------------------------------------------------------
    def _carry_over(self) -> None:
        if self.keep is None or not self.destination.is_dir():
            return
        manifest = read_manifest(self.destination) or {}
        for name in manifest.get("files", []):
            source, target = self.destination / name, self.staging / name
            if not self.keep(name) or target.exists() or not source.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)

    def _recover(self) -> None:
        """Under the lock: an aside of a run killed between its two renames is the complete old
        set (restored when the destination is missing); staging folders of killed runs go."""
        dest = self.destination
        asides = sorted(dest.parent.glob(f".{dest.name}.old-*"))
        if asides and not dest.exists():
            os.rename(asides[-1], dest)
        _remove_leftovers(dest, "old")
        _remove_leftovers(dest, "partial")

    def _check_contents(self) -> None:
        dest = self.destination
        if not dest.is_dir() or self.overwrite:
            return
        entries = list(dest.iterdir())
        if not entries:
            return
        manifest = read_manifest(dest)
        if manifest is None:
            raise PerfnetInputError(
                dest,
                "is not empty and not a perfnet output folder; choose another or pass --overwrite "
                "to replace it (everything in it is deleted)",
            )
        listed = set(manifest.get("files", []))
        foreign = [f for f in _relative_files(dest) if f not in listed]
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise PerfnetInputError(
                dest,
                f"holds files perfnet did not write ({foreign[0]}{more}); move them away or pass "
                "--overwrite to replace the folder",
            )


@contextlib.contextmanager
def atomic_output_dir(
    destination: str | Path, *, overwrite: bool = False, command: str = ""
) -> Iterator[Path]:
    """Yield a private staging folder that replaces ``destination`` as a whole on success
    (:class:`OutputFolder`); on failure ``destination`` is left exactly as it was."""
    with OutputFolder(destination, overwrite=overwrite, command=command) as folder:
        yield folder.staging


@contextlib.contextmanager
def staged_files(*targets: str | Path) -> Iterator[Path]:
    """Single-file outputs (``perfnet convert``: a NIfTI and its sidecar): yield a staging folder
    beside the first target; on success each staged file (named like its target) replaces its
    target with one rename, after all were flushed. A target that is a folder is refused, never
    deleted; the lock keeps two runs apart; nothing is left behind on failure."""
    paths = [Path(t).absolute() for t in targets]
    for path in paths:
        if path.is_dir():
            raise PerfnetInputError(path, "is a folder; give the output file's name")
    first = paths[0]
    created = _make_folders(_prepare_parent(first))
    lock = FolderLock(first)
    try:
        lock.acquire()
    except BaseException:
        _remove_folders(created)
        raise
    staging: Path | None = None
    done = False
    try:
        _remove_leftovers(first)
        staging = _staging_folder(first)
        yield staging
        for path in paths:
            _fsync_path(staging / path.name)
        for path in paths:
            os.replace(staging / path.name, path)
        _fsync_path(first.parent, directory=True)
        done = True
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        if not done:
            _remove_folders(created)
