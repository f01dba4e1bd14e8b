"""The file store's start-up upkeep: what is on disk after a crash, and what a dead writer left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from runner.datadir import fsync_dir, is_leftover
from runner.errors import IntegrityError, NotFound
from runner.runs.filelog import EventLog
from runner.runs.store import RUN_ID, RunFiles, remove_work


class FileUpkeep:
    """A part of `runner.runs.files.FileStore`: it sets the directories and `fsync`, and has `run_dir` and
    `read_snapshot`, which this part uses."""

    data_dir: Path
    runs_dir: Path
    resources_dir: Path
    fsync: bool

    def scan(self) -> Iterator[RunFiles]:
        """Every run folder as it is on disk, for start-up: the snapshot, whether the log has events it
        does not reflect, and whether a dead writer left something behind. One pass, no log read."""
        if not self.runs_dir.is_dir():
            return
        for name in sorted(os.listdir(self.runs_dir)):
            if not RUN_ID.match(name):
                continue
            try:
                snapshot: dict[str, Any] | None = self.read_snapshot(name)
            except (NotFound, IntegrityError):
                snapshot = None
            log_size, leftovers = 0, False
            with os.scandir(self.runs_dir / name) as entries:
                for entry in entries:
                    if entry.name == "events.jsonl":
                        log_size = entry.stat().st_size
                    elif entry.name == "work" or is_leftover(entry.name):
                        leftovers = True
            lags = snapshot is None or (snapshot.get("events") or {}).get("bytes", 0) != log_size
            yield RunFiles(name, snapshot, log_size, lags, leftovers)

    def sweep(self, run_id: str) -> list[str]:
        """Remove what a dead writer of this run left: temp files, and cut-short attempts' work folders.

        Only for a run whose writer lock the caller holds. The work folders hold an attempt's
        raw, unmasked output, so they must not outlive the attempt.
        """
        folder = self.run_dir(run_id)
        removed = []
        for entry in os.scandir(folder):
            if entry.is_file() and is_leftover(entry.name):
                os.unlink(entry.path)
                removed.append(entry.name)
        return removed + remove_work(folder)

    def discard_unborn(self, run_id: str) -> bool:
        """Remove a run folder whose log holds no event (a crash before `run_created` was fsynced).

        Nothing of it was acknowledged: its start answered no 201. Not while its creator still
        holds its log (RunLocked).
        """
        folder = self.run_dir(run_id)
        log = EventLog(folder / "events.jsonl", fsync=self.fsync)
        try:
            if log.size:
                return False
            shutil.rmtree(folder)
        finally:
            log.close()
        if self.fsync:
            fsync_dir(self.runs_dir)
        return True

    def sweep_shared(self) -> list[str]:
        """Temp files of dead writers outside the run folders (resources, callback index, release state)."""
        removed = []
        for folder in (self.resources_dir, self.data_dir / "callbacks", self.data_dir / "releases",
                       self.data_dir / "kills", self.data_dir):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.is_file() and is_leftover(entry.name):
                    os.unlink(entry.path)
                    removed.append(f"{folder.name}/{entry.name}")
        return removed

