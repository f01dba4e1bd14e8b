"""The store on disk (DESIGN §4): run directories, event logs, the callback index, resources.

    <data>/runs/<run-id>/run.json      snapshot, replaced atomically (tmp + fsync + rename)
    <data>/runs/<run-id>/events.jsonl  append-only, fsynced, each line chained to the last
    <data>/runs/<run-id>/flow.yaml     the exact flow source the run executes
    <data>/resources/<sha256>          content-addressed blobs, with <sha256>.json metadata
    <data>/callbacks/<sha256>.json     callback token sha256 -> {run, step} (runner.runs.file_indexes)
    <data>/kills/<run-id>              empty: the run has kills of remote jobs still to carry out

Readers never lock; the one writer of a run holds an fcntl lock on its `events.jsonl`
(runner.runs.filelog).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from runner.datadir import FileLock, fsync_dir, make_dir, make_private, write_atomic
from runner.errors import IntegrityError, NotFound, StoreError
from runner.runs import events as record
from runner.runs.chain import dumps, snapshot_marks, verified
from runner.runs.file_indexes import FileIndexes
from runner.runs.file_resources import FileResources
from runner.runs.file_upkeep import FileUpkeep
from runner.runs.filelog import EventLog
from runner.runs.store import RUN_ID, RunLog, Verification, current_record, new_run_id, select_runs


class FileStore(FileResources, FileIndexes, FileUpkeep):
    """Runs on disk; resources, the small indexes and start-up upkeep are its parts in their own modules."""

    def __init__(self, data_dir: str | Path, *, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.runs_dir = self.data_dir / "runs"
        self.resources_dir = self.data_dir / "resources"
        self.fsync = fsync

    # ---- runs -------------------------------------------------------------

    def new_run_id(self, now: datetime) -> str:
        return new_run_id(now)

    def create_run(self, now: datetime, flow_source: str, run_id: str | None = None) -> str:
        """A new run directory holding the flow source; `run_id` when the id was chosen (and recorded) first."""
        try:
            make_dir(self.runs_dir, fsync=self.fsync)
        except OSError as exc:
            raise StoreError(f"cannot create {self.runs_dir}: {exc.strerror}",
                             hint="check the data directory (--data / SIGNOFF_DATA) is writable") from None
        if run_id is not None:
            return self._claim_run_dir(run_id, flow_source)
        for _ in range(100):
            run_id = self.new_run_id(now)
            try:
                os.mkdir(self.runs_dir / run_id, 0o700)
            except FileExistsError:
                continue
            # flow.yaml's rename fsyncs the run directory; that fsync of runs/ makes the directory itself durable
            write_atomic(self.runs_dir / run_id / "flow.yaml", flow_source.encode(), fsync=self.fsync)
            if self.fsync:
                fsync_dir(self.runs_dir)
            return run_id
        raise StoreError("could not allocate a run id")

    create_run_dir = create_run  # the name it had before the Store protocol

    def _claim_run_dir(self, run_id: str, flow_source: str) -> str:
        """The directory of a run whose id was chosen earlier; one a crash left without `run_created` is reused."""
        if not RUN_ID.match(run_id):
            raise StoreError(f"{run_id!r} is not a run id")
        if self.run_exists(run_id):
            raise StoreError(f"run {run_id} exists already")
        try:
            os.mkdir(self.runs_dir / run_id, 0o700)
        except FileExistsError:
            pass
        (self.runs_dir / run_id / "events.jsonl").unlink(missing_ok=True)  # a torn first line, never acknowledged
        write_atomic(self.runs_dir / run_id / "flow.yaml", flow_source.encode(), fsync=self.fsync)
        if self.fsync:
            fsync_dir(self.runs_dir)
        return run_id

    def run_exists(self, run_id: str) -> bool:
        """Whether the run's log holds its first event (`run_created`) whole."""
        try:
            with open(self.runs_dir / run_id / "events.jsonl", "rb") as handle:
                return handle.readline().endswith(b"\n")
        except (FileNotFoundError, NotADirectoryError):
            return False

    def run_dir(self, run_id: str) -> Path:
        if not RUN_ID.match(run_id or ""):
            raise NotFound(f"{run_id!r} is not a run id", hint="run ids look like 20261124t190812z-3f9a2c1b")
        path = self.runs_dir / run_id
        if not path.is_dir():
            raise NotFound(f"no run {run_id} in {self.data_dir}", hint="list runs with `signoff runs list`")
        return path

    def open_log(self, run_id: str) -> EventLog:
        """The run's log, to append to: holding it open is holding the run's writer lock."""
        return EventLog(self.run_dir(run_id) / "events.jsonl", fsync=self.fsync)

    def daemon_lock(self) -> FileLock:
        """Held by the daemon serving this data dir: a second one would interleave the callback inbox."""
        make_dir(self.data_dir, fsync=self.fsync)
        make_private(self.data_dir)
        return FileLock(self.data_dir / "daemon.lock", StoreError(
            f"another signoff daemon is already serving the data dir {self.data_dir}",
            hint="stop it first, or give this daemon its own data dir (--data)"))

    def flow_source(self, run_id: str) -> str:
        return (self.run_dir(run_id) / "flow.yaml").read_text()

    def write_snapshot(self, run: dict[str, Any], log: RunLog) -> None:
        """Replace run.json. Its directory is not fsynced: the log is the truth, and a rename lost to a
        power loss leaves an older snapshot (or none), which every writer and start-up repair from the log."""
        run["events"] = snapshot_marks(log.count, log.last_sha256, log.size)  # type: ignore[attr-defined]
        # the writer holds the run's log open, so its folder is there: no stat to check it again
        write_atomic(self.runs_dir / run["id"] / "run.json", (dumps(run) + "\n").encode(), fsync=self.fsync,
                     durable_name=False)

    def read_snapshot(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / "run.json"
        try:
            with open(path, "rb") as handle:
                return json.loads(handle.read())
        except FileNotFoundError:
            raise NotFound(f"run {run_id} has no run.json yet") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{path} is not valid JSON: {exc}",
                                 hint=f"`signoff runs verify {run_id}` rebuilds it from events") from None

    # ---- reading ------------------------------------------------------------

    def read_run(self, run_id: str) -> dict[str, Any]:
        """The current record: the snapshot plus any events written after it."""
        return current_record(self, run_id, lambda run: self._events_from(run_id, run.get("events", {}).get("bytes", 0)))

    def _fold_log(self, run_id: str) -> dict[str, Any] | None:
        try:
            return record.fold(list(self.read_events(run_id))) or None
        except (OSError, ValueError, KeyError):
            return None

    def _events_from(self, run_id: str, offset: int) -> Iterator[dict[str, Any]]:
        path = self.run_dir(run_id) / "events.jsonl"
        try:
            if os.stat(path).st_size <= offset:
                return  # the snapshot is current (the common case): no need to open the log
            handle = open(path, "rb")
        except FileNotFoundError:
            return
        with handle:
            handle.seek(offset)
            for line in handle:
                if line.endswith(b"\n"):
                    yield json.loads(line)

    def read_events(self, run_id: str, *, after: int = -1) -> Iterator[dict[str, Any]]:
        for event in self._events_from(run_id, 0):
            if event.get("seq", 0) > after:
                yield event

    def list_runs(self, *, flow: str | None = None, status: str | None = None, draft: bool | None = None,
                  limit: int = 50, before: str | None = None, active_only: bool = False) -> list[dict[str, Any]]:
        """Newest first (ids older than `before`, for paging), reading snapshots only, never event logs."""
        if not self.runs_dir.is_dir():
            return []
        names = (name for name in sorted(os.listdir(self.runs_dir), reverse=True) if RUN_ID.match(name))
        return select_runs(names, self._listed, flow=flow, status=status, draft=draft, limit=limit, before=before,
                           active_only=active_only)

    def _listed(self, run_id: str) -> dict[str, Any] | None:
        try:
            return self.read_snapshot(run_id)
        except (NotFound, IntegrityError):
            return self._fold_log(run_id)  # a run whose log exists is a run, even before its first snapshot

    def verify(self, run_id: str, *, grace: float = 1.0) -> Verification:
        """Check the event chain, and that run.json is exactly the fold of the events it claims.

        A run that has just ended has its last events on disk a moment before its snapshot: a
        lagging snapshot is looked at again for up to `grace` seconds before it is reported.
        """
        deadline = time.monotonic() + grace
        while True:
            result = self._verify_once(run_id)
            if not result.lagging or time.monotonic() >= deadline:
                return result
            time.sleep(0.05)

    def _verify_once(self, run_id: str) -> Verification:
        path = self.run_dir(run_id) / "events.jsonl"
        return verified(self, run_id, path.read_bytes() if path.exists() else b"")
