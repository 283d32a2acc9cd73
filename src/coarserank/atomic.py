"""Atomic file writes: write a temporary file beside the target, fsync, rename over it.

A reader sees either the old file or the complete new one, never a half-written file, and a
failure while writing leaves what was there before untouched. :func:`file_lock` holds an advisory
``flock`` on a lock file: exclusive for writers, shared for readers that load several files which
must belong together (an index and the manifest that vouches for it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "file_lock", "LockBusy"]


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(target))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def _mode_for(target: Path) -> int:
    """Keep the mode of the file being replaced; a new file gets 0666 less the umask (mkstemp's 0600
    would make artifacts unreadable to the rankers that serve them)."""
    if target.exists():
        return target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path | str, writer: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``writer(tmp_path)`` and publish the result atomically (e.g. parquet, torch.save)."""
    with atomic_path(path, suffix) as tmp:
        writer(tmp)
    return Path(path)


__all__.append("atomic_write_with")


class LockBusy(OSError):
    """Another process holds the lock (raised by :func:`file_lock` when it may not wait)."""


@contextlib.contextmanager
def file_lock(path: Path | str, *, exclusive: bool = True, wait: bool = False,
              required: bool = True) -> Iterator[bool]:
    """Hold an advisory ``flock`` on ``path`` (created if missing) for the block.

    Yields ``True`` while locked. A lock that is not ``required`` (a reader's) yields ``False``
    when the file can neither be created nor opened (a read-only directory: nobody can publish
    there either). Raises :class:`LockBusy` when another process holds a conflicting lock and
    ``wait`` is false, and ``OSError`` (``PermissionError``) when a required lock file cannot be
    created. The lock is taken again if the file was replaced (a renamed directory) meanwhile.
    """
    target = Path(path)
    while True:
        fd = _open_lock_file(target, required)
        if fd is None:
            yield False
            return
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockBusy(exc.errno, f"{target} is locked by another process") from None
                raise
            try:
                same = os.stat(target).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield True
                return
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _open_lock_file(target: Path, required: bool) -> int | None:
    try:
        return os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if required or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            raise
    try:
        return os.open(target, os.O_RDONLY)
    except OSError:
        return None
