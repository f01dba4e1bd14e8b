"""What the engine and the daemon need from a store of runs: the `Store` protocol.

A store keeps, for each run, its append-only hash-chained events, a snapshot
(the fold of a prefix of them, run.json in the file store) and the flow source
it runs; beside the runs, content-addressed resources, the callback index
(token sha256 -> run, step) and the short list of runs with kills of remote
jobs still to carry out.

One writer per run (DESIGN §9): `open_log` takes the run's writer lock and
holding the returned `RunLog` open is holding it; readers never lock.

`runner.runs.files.FileStore` is the store on disk (the embedded default);
`runner.runs.memory.MemoryStore` keeps everything in memory, for engine unit
tests. A PostgreSQL store implements the same protocol beside them.
"""

from __future__ import annotations

import re
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, ContextManager, Iterable, Iterator, Protocol

from runner.errors import IntegrityError, NotFound
from runner.runs import events as record
from runner.status import ACTIVE_RUN

RUN_ID = re.compile(r"^[0-9]{8}t[0-9]{6}z-[0-9a-f]{8}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
RES_PREFIX = "res://"


def new_run_id(now: datetime) -> str:
    """`20261124t190812z-3f9a2c1b`: sorts by creation time to the microsecond."""
    stamp = now.strftime("%Y%m%dt%H%M%Sz")
    return f"{stamp}-{now.microsecond:05x}{secrets.randbelow(16 ** 3):03x}"


def current_record(store: "Store", run_id: str,
                   tail: Callable[[dict[str, Any]], Iterable[dict[str, Any]]]) -> dict[str, Any]:
    """`read_run` for any store: the snapshot plus the events after it (`tail(snapshot)`), or the fold
    of every event when there is no readable snapshot (its NotFound / IntegrityError when no event either)."""
    try:
        run = store.read_snapshot(run_id)
    except (NotFound, IntegrityError):
        run = record.fold(list(store.read_events(run_id)))
        if not run:
            raise
        return run
    for event in tail(run):
        record.apply(run, event)
    return run


def remove_work(run_dir: Path) -> list[str]:
    """Remove the work folder of cut-short attempts (it holds raw, unmasked output); what went."""
    if (run_dir / "work").is_dir():
        shutil.rmtree(run_dir / "work", ignore_errors=True)
        return ["work/"]
    return []


def select_runs(newest_first: Iterable[str], read: Callable[[str], dict[str, Any] | None], *,
                flow: str | None = None, status: str | None = None, draft: bool | None = None, limit: int = 50,
                before: str | None = None, active_only: bool = False) -> list[dict[str, Any]]:
    """`list_runs` for any store: the runs of `newest_first` (ids older than `before`, for paging) that
    pass the filters, read by `read` (None: no such run), at most `limit`."""
    found = []
    for run_id in newest_first:
        if before and run_id >= before:
            continue
        run = read(run_id)
        if run is None:
            continue
        if flow and run.get("flow") != flow or status and run.get("status") != status:
            continue
        if active_only and run.get("status") not in ACTIVE_RUN:
            continue
        if draft is not None and bool(run.get("draft")) != draft:
            continue
        found.append(run)
        if len(found) >= limit:
            break
    return found


@dataclass
class Verification:
    run_id: str
    events: int = 0
    problems: list[str] = field(default_factory=list)
    lagging: bool = False  # the snapshot of an ended run is behind its log

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run_id, "ok": self.ok, "events": self.events, "problems": self.problems}


@dataclass
class RunFiles:
    """One run as `Store.scan` found it at start-up."""

    run_id: str
    snapshot: dict[str, Any] | None
    log_size: int
    lags: bool          # no snapshot, or events after it: the record is the fold, not the snapshot
    leftovers: bool     # temp files or work folders of a writer that died

    @property
    def status(self) -> str | None:
        return self.snapshot.get("status") if self.snapshot else None


class RunLog(Protocol):
    """One run's event log, open for appending; holding it is holding the run's writer lock."""

    count: int                      # events in the log
    last_sha256: str                # the chain's head: sha256 of the last line
    tail: list[dict[str, Any]]      # the events `resume` read

    def resume(self, start: dict[str, Any] | None = None) -> bool:
        """Read the events after `start` (a snapshot's `events`) into `tail`, or all; True if `start` was used."""
        ...

    def append(self, events: list[dict[str, Any]]) -> None:
        """Chain (`seq`, `prev`) and durably write a batch of events, all or none."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    # ---- runs: creation, the writer, reading --------------------------------------------

    def new_run_id(self, now: datetime) -> str: ...

    def create_run(self, now: datetime, flow_source: str, run_id: str | None = None) -> str:
        """A new run holding the flow source; `run_id` when the id was chosen (and recorded) first."""
        ...

    def run_exists(self, run_id: str) -> bool:
        """Whether the run's first event (`run_created`) is durable."""
        ...

    def run_dir(self, run_id: str) -> Path:
        """A local folder of the run: its steps' attempts keep their scratch files (`work/`) there."""
        ...

    def flow_source(self, run_id: str) -> str: ...

    def open_log(self, run_id: str) -> RunLog:
        """The run's log, to append to; RunLocked if another process writes the run."""
        ...

    def read_snapshot(self, run_id: str) -> dict[str, Any]:
        """The last snapshot; NotFound if there is none yet, IntegrityError if it does not read."""
        ...

    def write_snapshot(self, run: dict[str, Any], log: RunLog) -> None:
        """Replace the snapshot with `run`, as of `log`'s last event (kept in its `events`)."""
        ...

    def read_run(self, run_id: str) -> dict[str, Any]:
        """The current record: the snapshot plus any events written after it."""
        ...

    def read_events(self, run_id: str, *, after: int = -1) -> Iterator[dict[str, Any]]: ...

    def list_runs(self, *, flow: str | None = None, status: str | None = None, draft: bool | None = None,
                  limit: int = 50, before: str | None = None, active_only: bool = False) -> list[dict[str, Any]]:
        """Newest first (ids older than `before`, for paging)."""
        ...

    def verify(self, run_id: str, *, grace: float = 1.0) -> Verification:
        """Check the event chain, and that the snapshot is exactly the fold of the events it claims."""
        ...

    # ---- start-up -----------------------------------------------------------------------

    def daemon_lock(self) -> ContextManager[Any]:
        """Held by the one daemon serving this store."""
        ...

    def scan(self) -> Iterator[RunFiles]: ...

    def sweep(self, run_id: str) -> list[str]:
        """Remove what a dead writer of this run left (the caller holds its writer lock)."""
        ...

    def discard_unborn(self, run_id: str) -> bool:
        """Remove a run whose log holds no event (a crash before `run_created` was durable)."""
        ...

    def sweep_shared(self) -> list[str]: ...

    # ---- the callback index -------------------------------------------------------------

    def index_callbacks(self, run_id: str, tokens: dict[str, str]) -> None:
        """token sha256 -> (run, step), durable before the run that hands the URLs out is created."""
        ...

    def find_callback(self, token: str) -> tuple[str, str] | None: ...

    # ---- runs with kills of remote jobs still to carry out ------------------------------

    def note_kills(self, run_id: str) -> None: ...

    def runs_with_kills(self) -> list[str]: ...

    def kills_settled(self, run_id: str) -> None: ...

    # ---- resources ----------------------------------------------------------------------

    def put_resource(self, data: bytes | Path, *, media_type: str = "application/octet-stream",
                     name: str | None = None, run_id: str | None = None, step: str | None = None,
                     created_at: str | None = None) -> str:
        """Store bytes (or a file's bytes) by content; return `res://<sha256>`."""
        ...

    def resource_runs(self, ref: str) -> list[str]: ...

    def resource_path(self, ref: str) -> Path: ...

    def resource_meta(self, ref: str) -> dict[str, Any]: ...

    def copy_resource(self, ref: str, out: BinaryIO) -> int: ...
