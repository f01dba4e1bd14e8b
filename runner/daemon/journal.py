"""The inbox's journal file: batches appended with plain writes, whole rewrites, lines read back by position.

The inbox (runner.daemon.inbox) decides what goes in and when; this is only the
file. It has one writer, so an append knows its offset from the file's size, and
a failed append is cut back so no torn line stands before the next batch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Hashable

from runner.datadir import FILE_MODE, fsync_dir, tmp_name

log = logging.getLogger(__name__)
Entries = list[tuple[Hashable, dict[str, Any], "tuple[int, int] | None"]]


class JournalFile:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None
        self._reader: int | None = None  # for reading lines back (spilled bodies, a rewrite's copies)

    def append(self, lines: bytes) -> int:
        """Append with plain writes, so a failed batch leaves nothing buffered to reach the file later.

        Returns the offset the batch starts at.
        """
        fd = self._writer()
        offset = os.fstat(fd).st_size
        try:
            view = memoryview(lines)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            os.ftruncate(fd, offset)  # no torn line in front of the next batch
            raise
        return offset

    def rewrite(self, entries: Entries, line_of: Callable[[Any, dict[str, Any]], bytes]) -> dict[Any, tuple[int, int]]:
        """Replace the file with `entries` (tmp + fsync + rename); where each line now is.

        An entry given with its old position (a spilled one) is copied from the file being
        replaced, one line at a time; the others are written as `line_of(key, entry)`.
        """
        self.close_writer()
        tmp = tmp_name(self.path)
        written: dict[Any, tuple[int, int]] = {}
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                for key, entry, where in entries:
                    line = line_of(key, entry) if where is None else self.read_line(*where)
                    written[key] = (handle.tell(), len(line))
                    handle.write(line)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            try:
                fsync_dir(self.path.parent)
            except OSError as exc:  # either file holds every entry still wanted; the new one is in place
                log.warning("could not fsync %s: %s", self.path.parent, exc, extra={"event": "inbox_fsync_failed"})
        return written

    def open_reader(self) -> None:
        """Keep the current file open for reading (it stays readable after a rewrite replaces it)."""
        if self._reader is None:
            self._reader = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def read_line(self, offset: int, length: int) -> bytes:
        self.open_reader()
        return os.pread(self._reader, length, offset)

    def close_writer(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None

    def _writer(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return self._fd
