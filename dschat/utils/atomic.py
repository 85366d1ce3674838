"""Write-to-temp-then-rename, the one way dschat writes a file or directory a later run trusts.

A reader sees either the previous complete version or the new complete one, never a torn file: data goes to
a temporary name in the same directory, is flushed to disk (fsync), then renamed over the target, and the
directory entry is synced too. Temporary names start with ``TEMP_PREFIX`` and carry the writer's pid, so
``sweep`` can remove what a killed writer left without touching a live writer's files. Stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"


def temp_sibling(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path`` that names this process (``.tmp-<name>-<pid>``)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: the directory entry is data too (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PendingFile:
    """A file being written under a temporary name: ``commit`` publishes it whole, ``abort`` drops it."""

    def __init__(self, path: str | os.PathLike, mode: str = "w", **kwargs: Any):
        self.path = Path(path)
        self.temp = temp_sibling(self.path)
        self.handle: IO = open(self.temp, mode, **kwargs)

    def commit(self) -> None:
        """Flush to disk, rename over the target, persist the rename."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temp, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            self.handle.close()
        self.temp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """A handle to a temporary file that replaces ``path`` when the block ends without an exception."""
    with disk_space_guard(path, "file"):
        pending = PendingFile(path, mode, **kwargs)
        try:
            yield pending.handle
            pending.commit()
        except BaseException:
            pending.abort()
            raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open_atomic(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with open_atomic(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, payload: Any, **dump_kwargs: Any) -> None:
    write_text(path, json.dumps(payload, **dump_kwargs) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Atomically publish a file that a library writes by name (np.save, safetensors' save_file, ...).

    ``writer`` gets a temporary path that keeps ``path``'s suffix (some writers append one otherwise).
    """
    target = Path(path)
    temp = temp_sibling(target).with_suffix(target.suffix + ".part" + target.suffix)
    try:
        with disk_space_guard(path, "file"):
            writer(str(temp))
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def publish_dir(temp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Rename a completely written directory into place; an older one is moved aside first, deleted after.

    A directory cannot be replaced by one rename, so between the two renames the target is briefly absent,
    never half-written.
    """
    temp_dir, final_dir = Path(temp_dir), Path(final_dir)
    old = None
    if final_dir.exists():
        old = temp_sibling(final_dir.with_name(final_dir.name + "-old"))
        os.replace(final_dir, old)
    os.replace(temp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside ``final_dir``, published there when the block ends without an exception."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep(final_dir.parent)
    temp_dir = temp_sibling(final_dir)
    temp_dir.mkdir()
    try:
        yield temp_dir
        publish_dir(temp_dir, final_dir)
    finally:
        if temp_dir.exists():
            shutil.rmtree(temp_dir, ignore_errors=True)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 16 << 20  # bytes: less than this left after a failed write means the write filled the disk
DISK_FULL_TEXT = (
    "No space left on device",
    "Disk quota exceeded",
    "file write failed",
)  # the last: torch.save


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it: libraries wrap OSError) is a full disk or an exhausted quota."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(err) for text in DISK_FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def _megabytes(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


@contextlib.contextmanager
def disk_space_guard(path: str | os.PathLike, what: str, needed: int | None = None) -> Iterator[None]:
    """A full disk while writing ``what`` at ``path`` becomes one DschatError naming the path and the space.

    Whatever the block wrote under a temporary name is already gone (the writers here clean up after
    themselves); the message says so, and what still stands.
    """
    try:
        yield
    except Exception as err:
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        # torch.save reports a full disk as a bare stream error: then the free space itself tells
        if not (is_disk_full(err) or (isinstance(err, (OSError, RuntimeError)) and free < NEARLY_FULL)):
            raise
        from dschat.errors import DschatError  # atomic stays importable on its own

        need = f", about {_megabytes(needed)} needed" if needed else ""
        raise DschatError(
            f"the disk is full writing {what} {str(path)!r}: {_megabytes(free)} free there{need}. Nothing "
            "half-written was kept; free space (or write elsewhere) and run again (with --resume where the "
            "run has checkpoints)"
        ) from None


def default_permissions(directory: str | os.PathLike) -> None:
    """Give the files in ``directory`` the mode any new file gets (0644 under the usual umask).

    Libraries that write through a private temp file (transformers' weight files) leave them 0600, so a
    model saved for a team could not be read by the team.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def _owner_alive(name: str) -> bool:
    """Whether the pid at the end of a temporary name is a running process (a live writer)."""
    pid = name.rsplit("-", 1)[-1].split(".")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(directory: str | os.PathLike, prefix: str = TEMP_PREFIX) -> list[Path]:
    """Remove temporary files and directories that killed writers left in ``directory``; return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for leftover in directory.glob(f"{prefix}*"):
        if _owner_alive(leftover.name):
            continue
        logger.warning("removing %s, left by an interrupted write", leftover)
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
