"""Durable, private files under the data directory: one helper for each way a file is made.

Everything signoff keeps in `<data>` holds callback tokens, payloads or decisions, so it is
private whatever the umask: directories 0700, files 0600. And "durable" means the bytes and
the directory entry: a new or renamed file is followed by an fsync of its directory, so a
power loss cannot take back a file that was acknowledged (ext4's ordered mode hides the
difference; other filesystems do not).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from runner.errors import SignoffError

DIR_MODE = 0o700
FILE_MODE = 0o600
TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path, *, fsync: bool = True) -> bool:
    """Create `path` (and missing parents) private; True if it was created.

    Each directory created is made durable in its parent, so a file made inside it next
    cannot outlive it on power loss.
    """
    path = Path(path)
    if path.is_dir():
        return False
    parent = path.parent
    if parent != path and not parent.is_dir():
        make_dir(parent, fsync=fsync)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return False
    if fsync:
        fsync_dir(parent)
    return True


def make_private(path: Path) -> None:
    """A data directory made by an older version (or with a loose umask) becomes 0700."""
    path = Path(path)
    if path.is_dir() and path.stat().st_mode & 0o077:
        os.chmod(path, DIR_MODE)


def tmp_name(path: Path) -> Path:
    """Where a replacement of `path` is written first; `sweep` knows the pattern."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def write_atomic(path: Path, data: bytes, *, fsync: bool = True, durable_name: bool = True) -> None:
    """Replace `path` with `data`: write a private temp file, fsync it, rename it over `path`.

    `durable_name` also fsyncs the directory, so the new name survives a power loss. A file
    whose content can be rebuilt from a durable log (run.json from events.jsonl) may skip it:
    a lost rename leaves the previous version, which start-up repairs.
    """
    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync and durable_name:
        fsync_dir(path.parent)


def open_append(path: Path, *, fsync: bool = True):
    """A private file opened for reading and appending; a new file's name is made durable first.

    "New" is read off the open file (empty), not asked before with a stat: an empty file that
    already existed only costs one more directory fsync.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    if fsync and os.fstat(fd).st_size == 0:
        fsync_dir(path.parent)
    return os.fdopen(fd, "a+b")


def publish(tmp: Path, path: Path, *, fsync: bool = True) -> bool:
    """Move a finished, fsynced temp file to `path` unless `path` exists (content-addressed files)."""
    if path.exists():
        os.unlink(tmp)
        return False
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)
    return True


def is_leftover(name: str) -> bool:
    """A temp file of a writer that died before its rename (`.<name>.<pid>.tmp`) whose pid is gone."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return False
    pid = name[: -len(TMP_SUFFIX)].rsplit(".", 1)[-1]
    return not (pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """An exclusive fcntl lock on a file, never waited for: `busy` is raised when another process has it."""

    def __init__(self, path: Path, busy: SignoffError) -> None:
        self.path = path
        self.busy = busy
        self._fd: int | None = None

    def __enter__(self) -> "FileLock":
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise self.busy from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
