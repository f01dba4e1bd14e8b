"""A run's events.jsonl, open for appending: the file store's `RunLog`.

DESIGN section 9: one writer per run, an fcntl lock on a file in the run
directory; the log itself is that file, so taking the lock costs no extra
open. Readers never lock.

A flock belongs to the open file, and a child forked by any thread of this
process (git, a step's command) holds a copy of every descriptor until its
exec closes them (they are all close-on-exec): for those microseconds the log
looks locked. So a refused lock is asked again for a moment (LOCK_GRACE)
before the run is reported held by another process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

from runner.datadir import open_append
from runner.errors import RunLocked
from runner.runs.chain import GENESIS, chain

LOCK_GRACE = 0.05  # seconds: far longer than a fork takes to exec, far shorter than any real writer holds a run


class EventLog:
    """The append-only, hash-chained history of one run. Opening it takes the run's writer lock."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self.count = 0
        self.last_sha256 = GENESIS
        self.tail: list[dict[str, Any]] = []  # the events read by resume()
        # appends go to the end; resume() reads from a position. A new log's name is fsynced in its directory.
        self._handle: BinaryIO = open_append(path, fsync=fsync)
        if not _lock(self._handle.fileno()):
            self._handle.close()
            raise RunLocked(f"run {path.parent.name} is being advanced by another process",
                            hint="wait for it, or stop the daemon that owns it")
        self.size = os.fstat(self._handle.fileno()).st_size

    def resume(self, start: dict[str, Any] | None = None) -> bool:
        """Read the events after `start` (a snapshot's `events`), or all of them; True if `start` was used.

        A torn last line left by a crash mid-write was never acknowledged: it is cut off.
        """
        offset, resumed = 0, bool(start) and self.size >= start.get("bytes", 0)
        if resumed:
            self.count, self.last_sha256, offset = start["count"], start["last_sha256"], start["bytes"]
        if self.size > offset:
            self._recover_tail(offset, self.size)
        return resumed

    def _recover_tail(self, offset: int, size: int) -> None:
        good = offset
        self._handle.seek(offset)
        for line in self._handle:
            if not line.endswith(b"\n"):
                break
            good += len(line)
            self.count += 1
            self.last_sha256 = hashlib.sha256(line[:-1]).hexdigest()
            self.tail.append(json.loads(line))
        if good != size:
            self._handle.truncate(good)
        self.size = good

    def append(self, events: list[dict[str, Any]]) -> None:
        """Chain, write and (by default) fsync a batch of events in one write."""
        data, self.count, self.last_sha256 = chain(events, self.count, self.last_sha256)
        self._handle.write(data)
        self._handle.flush()
        self.size += len(data)
        if self.fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def _lock(fd: int) -> bool:
    """Take the writer lock on `fd`; False if another holder keeps it for longer than LOCK_GRACE."""
    deadline = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            deadline = deadline or now + LOCK_GRACE
            if now >= deadline:
                return False
            time.sleep(0.001)
