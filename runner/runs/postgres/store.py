"""The store in PostgreSQL: the `Store` protocol, as the file store keeps it on disk.

    runs            one row per run: its flow source, snapshot (json), listing columns, the log's head,
                    and the writer's lease (runner.runs.postgres.log)
    events          (run, seq) -> the line the file store would write, chained by sha256 (runner.runs.chain)
    callbacks       token sha256 -> (run, step), first wins
    kills           the runs with kills of remote jobs still to carry out
    resources       content-addressed, in chunks (runner.runs.postgres.resources)

The SQL is in runner.runs.postgres.queries, the schema in its migrations; a
store opens only on a database at this build's schema version. What must be a
local file (a run's scratch folder for its steps' attempts, a resource given
as a path) lives under `cache_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import psycopg
from psycopg_pool import ConnectionPool

from runner.errors import IntegrityError, NotFound, RunLocked, StoreError
from runner.runs import events as record
from runner.runs.chain import dumps, snapshot_marks, verified
from runner.runs.postgres import queries as q
from runner.runs.postgres.indexes import PostgresIndexes
from runner.runs.postgres.log import PostgresLog
from runner.runs.postgres.resources import CHUNK_SIZE, PostgresResources
from runner.runs.postgres.shared import PostgresShared
from runner.runs.postgres.schema import _reason, check_schema
from runner.runs.store import RUN_ID, RunFiles, RunLog, Verification, current_record, new_run_id, remove_work, select_runs
from runner.status import ACTIVE_RUN, RunStatus
from runner.timeutil import parse_rfc3339

LEASE_SECONDS = 5.0


class PostgresStore(PostgresResources, PostgresIndexes, PostgresShared):
    """Runs in a PostgreSQL database; `close()` closes its connection pool."""

    shared = True  # several daemons may serve it at once

    def __init__(self, dsn: str, cache_dir: str | Path, *, lease: float = LEASE_SECONDS, pool_size: int = 8,
                 chunk_size: int = CHUNK_SIZE) -> None:
        self.dsn = dsn
        self.cache_dir = Path(cache_dir)
        self.data_dir = self.cache_dir  # the local folder (the runs' scratch files, the CLI's token)
        self.lease = lease
        self.chunk_size = chunk_size
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                self.schema_version = check_schema(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the database: {_reason(exc)}",
                             hint="check the store's dsn in the config, and that the server is up") from None
        self.pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True,
                                   name="signoff-store")

    def close(self) -> None:
        self.pool.close()

    @staticmethod
    def _check_id(run_id: str) -> None:
        if not RUN_ID.match(run_id or ""):
            raise NotFound(f"{run_id!r} is not a run id", hint="run ids look like 20261124t190812z-3f9a2c1b")

    def _no_run(self, run_id: str) -> NotFound:
        return NotFound(f"no run {run_id} in the database", hint="list runs with `signoff runs list`")

    # ---- runs -------------------------------------------------------------------

    def new_run_id(self, now: datetime) -> str:
        return new_run_id(now)

    def create_run(self, now: datetime, flow_source: str, run_id: str | None = None) -> str:
        """A new run row holding the flow source; `run_id` when the id was chosen (and recorded) first."""
        if run_id is not None:
            if not RUN_ID.match(run_id):
                raise StoreError(f"{run_id!r} is not a run id")
            if not self._count(q.CLAIM_RUN, {"run": run_id, "source": flow_source}):
                raise StoreError(f"run {run_id} exists already")
            return run_id
        for _ in range(100):
            run_id = self.new_run_id(now)
            if self._count(q.INSERT_RUN, {"run": run_id, "source": flow_source}):
                return run_id
        raise StoreError("could not allocate a run id")

    def run_exists(self, run_id: str) -> bool:
        found = self._one(q.RUN_EXISTS, {"run": run_id})
        return bool(found and found[0])

    def run_dir(self, run_id: str) -> Path:
        self._check_id(run_id)
        path = self.cache_dir / "runs" / run_id
        if not path.is_dir():
            if self._one(q.FLOW_SOURCE, {"run": run_id}) is None:
                raise self._no_run(run_id)
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def flow_source(self, run_id: str) -> str:
        self._check_id(run_id)
        found = self._one(q.FLOW_SOURCE, {"run": run_id})
        if found is None:
            raise self._no_run(run_id)
        return found[0]

    def open_log(self, run_id: str) -> PostgresLog:
        """The run's log, to append to: holding it open is holding the run's lease."""
        self._check_id(run_id)
        try:
            return PostgresLog(self.pool, run_id, self.holder, self.lease)
        except RunLocked:
            if self._one(q.FLOW_SOURCE, {"run": run_id}) is None:
                raise self._no_run(run_id) from None
            raise

    def write_snapshot(self, run: dict[str, Any], log: RunLog) -> None:
        """Replace the snapshot, fenced by the writer's lease (RunLocked if another writer took the run)."""
        run["events"] = snapshot_marks(log.count, log.last_sha256, log.size)  # type: ignore[attr-defined]
        params = {"run": run["id"], "epoch": log.epoch, "snapshot": dumps(run), "flow": run.get("flow"),  # type: ignore[attr-defined]
                  "status": run.get("status"), "draft": bool(run.get("draft")), "wake_at": next_wake(run)}
        if not self._count(q.WRITE_SNAPSHOT, params):
            log.lost = True  # type: ignore[attr-defined]
            raise RunLocked(f"run {run['id']} was taken over by another writer; its snapshot was not written")

    def read_snapshot(self, run_id: str) -> dict[str, Any]:
        self._check_id(run_id)
        found = self._one(q.SNAPSHOT, {"run": run_id})
        if found is None:
            raise self._no_run(run_id)
        if found[0] is None:
            raise NotFound(f"run {run_id} has no snapshot yet")
        try:
            return json.loads(found[0])
        except ValueError as exc:
            raise IntegrityError(f"the snapshot of run {run_id} is not valid JSON: {exc}",
                                 hint=f"`signoff runs verify {run_id}` rebuilds it from events") from None

    # ---- reading --------------------------------------------------------------------

    def _lines(self, run_id: str, after: int = -1) -> list[bytes]:
        with self.pool.connection() as conn:
            return [line for (line,) in conn.execute(q.EVENTS_AFTER, {"run": run_id, "after": after}).fetchall()]

    def read_events(self, run_id: str, *, after: int = -1) -> Iterator[dict[str, Any]]:
        self._check_id(run_id)
        for line in self._lines(run_id, after):
            yield json.loads(line)

    def read_run(self, run_id: str) -> dict[str, Any]:
        """The current record: the snapshot plus any events written after it."""
        return current_record(self, run_id,
                              lambda run: self.read_events(run_id, after=run.get("events", {}).get("count", 0) - 1))

    def list_runs(self, *, flow: str | None = None, status: str | None = None, draft: bool | None = None,
                  limit: int = 50, before: str | None = None, active_only: bool = False) -> list[dict[str, Any]]:
        """Newest first (ids older than `before`, for paging): filtered in SQL, streamed, read from snapshots."""
        params = {"before": before, "flow": flow, "status": status, "draft": draft, "active_only": active_only,
                  "active": sorted(str(s) for s in ACTIVE_RUN)}
        found: dict[str, dict[str, Any] | None] = {}

        def newest_first() -> Iterator[str]:
            with self.pool.connection() as conn, conn.transaction():
                with conn.cursor(name="list_runs") as cursor:
                    cursor.itersize = max(limit, 10)
                    for run_id, snapshot in cursor.execute(q.LIST_RUNS, params):
                        found[run_id] = json.loads(snapshot) if snapshot else self._folded(run_id)
                        yield run_id

        names = newest_first()
        try:
            return select_runs(names, found.get, flow=flow, status=status, draft=draft, limit=limit,
                               before=before, active_only=active_only)
        finally:
            names.close()  # the cursor and its connection go back at once

    def _folded(self, run_id: str) -> dict[str, Any] | None:
        try:
            return record.fold(list(self.read_events(run_id))) or None
        except (ValueError, KeyError):
            return None

    def verify(self, run_id: str, *, grace: float = 1.0) -> Verification:
        """Check the event chain, and that the snapshot is exactly the fold of the events it claims
        (a lagging snapshot of a run that has just ended is looked at again for up to `grace` seconds)."""
        self.flow_source(run_id)  # NotFound for no such run
        deadline = time.monotonic() + grace
        while True:
            result = verified(self, run_id, b"".join(line + b"\n" for line in self._lines(run_id)))
            if not result.lagging or time.monotonic() >= deadline:
                return result
            time.sleep(0.05)

    # ---- start-up ---------------------------------------------------------------------

    @contextmanager
    def daemon_lock(self) -> Iterator[None]:
        """Several daemons serve one database, none special: each is listed in `daemons` while it runs
        (what it advances, it holds by the runs' leases, not by this)."""
        self._count(q.REGISTER_DAEMON, {"holder": self.holder})
        self.forget_the_dead()
        try:
            yield
        finally:
            try:
                self._count(q.DAEMON_GONE, {"holder": self.holder})
            except psycopg.Error:
                pass  # the database is away: the row ages out of `live_daemons`

    def live_daemons(self, within: float = 30.0) -> list[dict[str, Any]]:
        """The daemons that said they were alive within `within` seconds."""
        with self.pool.connection() as conn:
            rows = conn.execute(q.LIVE_DAEMONS, {"within": within}).fetchall()
        return [{"holder": holder, "started_at": started.isoformat(), "seen_at": seen.isoformat()}
                for holder, started, seen in rows]

    def scan(self) -> Iterator[RunFiles]:
        """Every run as the database has it, for start-up: its snapshot and whether events follow it."""
        with self.pool.connection() as conn:
            rows = conn.execute(q.SCAN).fetchall()
        for run_id, text, log_bytes in rows:
            snapshot = json.loads(text) if text else None
            lags = snapshot is None or (snapshot.get("events") or {}).get("bytes", 0) != log_bytes
            yield RunFiles(run_id, snapshot, log_bytes, lags, (self.cache_dir / "runs" / run_id / "work").is_dir())

    def sweep(self, run_id: str) -> list[str]:
        """Remove the work folders of cut-short attempts (they hold raw, unmasked output)."""
        return remove_work(self.run_dir(run_id))

    def discard_unborn(self, run_id: str) -> bool:
        """Remove a run with no event (a crash before `run_created` committed); not while its creator writes."""
        self._check_id(run_id)
        if self._count(q.DISCARD_UNBORN, {"run": run_id}):
            shutil.rmtree(self.cache_dir / "runs" / run_id, ignore_errors=True)
            return True
        if not self.run_exists(run_id) and self._one(q.FLOW_SOURCE, {"run": run_id}) is not None:
            raise RunLocked(f"run {run_id} is being created by another writer")
        return False

    def sweep_shared(self) -> list[str]:
        """Temp files of dead writers in the cache (resources being materialised)."""
        removed = []
        folder = self.cache_dir / "resources"
        for entry in os.scandir(folder) if folder.is_dir() else ():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                os.unlink(entry.path)
                removed.append(f"resources/{entry.name}")
        return removed


def next_wake(run: dict[str, Any]) -> datetime | None:
    """When a waiting run is next due: its wait's deadline, or its reminder if that comes first and is unsent."""
    if run.get("status") != RunStatus.WAITING:
        return None
    state = (run.get("steps") or {}).get(run.get("current_step") or "", {})
    times = [state.get("wake_at")]
    if not state.get("reminded_at"):
        times.append(state.get("remind_at"))
    found = [parse_rfc3339(t) for t in times if t]
    return min(found) if found else None
