"""A store that keeps everything in memory: the `Store` protocol for engine unit tests.

Events are kept as the very lines the file store writes (the same hash chain,
runner.runs.chain) and snapshots as encoded JSON, so what a reader gets is a
copy, never the engine's live record, and `verify` proves what it proves on
disk. The one writer per run is a flag (RunLocked for a second writer). Step
attempts still need a folder for their scratch files, and a resource's
`resource_path` a file: both live under `scratch` (a temporary directory
unless one is given).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from runner.errors import IntegrityError, NotFound, RunLocked, StoreError
from runner.runs import events as record
from runner.runs.chain import GENESIS, chain, dumps, snapshot_marks, verified
from runner.runs.store import RES_PREFIX, RUN_ID, SHA256, RunFiles, RunLog, Verification, current_record, new_run_id, remove_work, select_runs


@dataclass
class _Run:
    flow_source: str
    log: bytearray = field(default_factory=bytearray)
    snapshot: bytes | None = None
    writer: bool = False  # a MemoryLog holds the run


class MemoryLog:
    """One run's log in memory, open for appending; it holds the run's writer flag until closed."""

    def __init__(self, run_id: str, entry: _Run, guard: threading.Lock) -> None:
        with guard:
            if entry.writer:
                raise RunLocked(f"run {run_id} is being advanced by another writer",
                                hint="wait for it, or stop the daemon that owns it")
            entry.writer = True
        self._entry = entry
        self._open = True
        self.count = 0
        self.last_sha256 = GENESIS
        self.tail: list[dict[str, Any]] = []
        self.size = len(entry.log)

    def resume(self, start: dict[str, Any] | None = None) -> bool:
        offset, resumed = 0, bool(start) and self.size >= start.get("bytes", 0)
        if resumed:
            self.count, self.last_sha256, offset = start["count"], start["last_sha256"], start["bytes"]
        for line in bytes(self._entry.log[offset:]).splitlines(keepends=True):
            self.count += 1
            self.last_sha256 = hashlib.sha256(line[:-1]).hexdigest()
            self.tail.append(json.loads(line))
        return resumed

    def append(self, events: list[dict[str, Any]]) -> None:
        data, self.count, self.last_sha256 = chain(events, self.count, self.last_sha256)
        self._entry.log += data
        self.size += len(data)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._entry.writer = False


class _Held:
    """The daemon lock of a MemoryStore: one holder at a time."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def __enter__(self) -> _Held:
        if self.store._daemon_held:
            raise StoreError("another signoff daemon is already serving this store")
        self.store._daemon_held = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.store._daemon_held = False


class MemoryStore:
    def __init__(self, scratch: str | Path | None = None) -> None:
        if scratch is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="signoff-memory-")
            scratch = self._tmp.name
        self.scratch = Path(scratch)
        self._runs: dict[str, _Run] = {}
        self._guard = threading.Lock()
        self._callbacks: dict[str, tuple[str, str]] = {}
        self._kills: set[str] = set()
        self._resources: dict[str, tuple[bytes, dict[str, Any], list[str]]] = {}  # sha -> bytes, meta, runs
        self._daemon_held = False

    def _entry(self, run_id: str) -> _Run:
        if not RUN_ID.match(run_id or ""):
            raise NotFound(f"{run_id!r} is not a run id", hint="run ids look like 20261124t190812z-3f9a2c1b")
        try:
            return self._runs[run_id]
        except KeyError:
            raise NotFound(f"no run {run_id} in memory", hint="list runs with `signoff runs list`") from None

    # ---- runs -------------------------------------------------------------

    def new_run_id(self, now: datetime) -> str:
        return new_run_id(now)

    def create_run(self, now: datetime, flow_source: str, run_id: str | None = None) -> str:
        with self._guard:
            if run_id is not None:
                if not RUN_ID.match(run_id):
                    raise StoreError(f"{run_id!r} is not a run id")
                if self.run_exists(run_id):
                    raise StoreError(f"run {run_id} exists already")
            else:
                for _ in range(100):
                    run_id = self.new_run_id(now)
                    if run_id not in self._runs:
                        break
                else:
                    raise StoreError("could not allocate a run id")
            self._runs[run_id] = _Run(flow_source)
            return run_id

    def run_exists(self, run_id: str) -> bool:
        entry = self._runs.get(run_id)
        return entry is not None and b"\n" in entry.log

    def run_dir(self, run_id: str) -> Path:
        self._entry(run_id)
        path = self.scratch / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def flow_source(self, run_id: str) -> str:
        return self._entry(run_id).flow_source

    def open_log(self, run_id: str) -> MemoryLog:
        return MemoryLog(run_id, self._entry(run_id), self._guard)

    def read_snapshot(self, run_id: str) -> dict[str, Any]:
        data = self._entry(run_id).snapshot
        if data is None:
            raise NotFound(f"run {run_id} has no snapshot yet")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise IntegrityError(f"the snapshot of run {run_id} is not valid JSON: {exc}") from None

    def write_snapshot(self, run: dict[str, Any], log: RunLog) -> None:
        run["events"] = snapshot_marks(log.count, log.last_sha256, log.size)  # type: ignore[attr-defined]
        self._entry(run["id"]).snapshot = (dumps(run) + "\n").encode()

    # ---- reading ------------------------------------------------------------

    def _events_from(self, run_id: str, offset: int) -> Iterator[dict[str, Any]]:
        for line in bytes(self._entry(run_id).log[offset:]).splitlines(keepends=True):
            if line.endswith(b"\n"):
                yield json.loads(line)

    def read_run(self, run_id: str) -> dict[str, Any]:
        return current_record(self, run_id, lambda run: self._events_from(run_id, run.get("events", {}).get("bytes", 0)))

    def read_events(self, run_id: str, *, after: int = -1) -> Iterator[dict[str, Any]]:
        for event in self._events_from(run_id, 0):
            if event.get("seq", 0) > after:
                yield event

    def list_runs(self, *, flow: str | None = None, status: str | None = None, draft: bool | None = None,
                  limit: int = 50, before: str | None = None, active_only: bool = False) -> list[dict[str, Any]]:
        return select_runs(sorted(self._runs, reverse=True), self._listed, flow=flow, status=status, draft=draft,
                           limit=limit, before=before, active_only=active_only)

    def _listed(self, run_id: str) -> dict[str, Any] | None:
        try:
            return self.read_snapshot(run_id)
        except (NotFound, IntegrityError):
            return record.fold(list(self.read_events(run_id))) or None

    def verify(self, run_id: str, *, grace: float = 1.0) -> Verification:
        return verified(self, run_id, bytes(self._entry(run_id).log))

    # ---- start-up -------------------------------------------------------------

    def daemon_lock(self) -> _Held:
        return _Held(self)

    def scan(self) -> Iterator[RunFiles]:
        for run_id in sorted(self._runs):
            entry = self._runs[run_id]
            try:
                snapshot: dict[str, Any] | None = self.read_snapshot(run_id)
            except (NotFound, IntegrityError):
                snapshot = None
            size = len(entry.log)
            lags = snapshot is None or (snapshot.get("events") or {}).get("bytes", 0) != size
            yield RunFiles(run_id, snapshot, size, lags, (self.scratch / "runs" / run_id / "work").is_dir())

    def sweep(self, run_id: str) -> list[str]:
        return remove_work(self.run_dir(run_id))

    def discard_unborn(self, run_id: str) -> bool:
        log = self.open_log(run_id)
        try:
            if log.size:
                return False
            del self._runs[run_id]
        finally:
            log.close()
        return True

    def sweep_shared(self) -> list[str]:
        return []

    # ---- the callback index ---------------------------------------------------

    def index_callbacks(self, run_id: str, tokens: dict[str, str]) -> None:
        for step_id, token in tokens.items():
            self._callbacks[hashlib.sha256(token.encode()).hexdigest()] = (run_id, step_id)

    def find_callback(self, token: str) -> tuple[str, str] | None:
        return self._callbacks.get(hashlib.sha256(token.encode()).hexdigest())

    # ---- kills ------------------------------------------------------------------

    def note_kills(self, run_id: str) -> None:
        self._kills.add(run_id)

    def runs_with_kills(self) -> list[str]:
        return sorted(self._kills)

    def kills_settled(self, run_id: str) -> None:
        self._kills.discard(run_id)

    # ---- resources ----------------------------------------------------------

    def put_resource(self, data: bytes | Path, *, media_type: str = "application/octet-stream",
                     name: str | None = None, run_id: str | None = None, step: str | None = None,
                     created_at: str | None = None) -> str:
        content = data.read_bytes() if isinstance(data, Path) else bytes(data)
        sha = hashlib.sha256(content).hexdigest()
        with self._guard:
            known = self._resources.get(sha)
            if known is None:
                meta = {"sha256": sha, "size": len(content), "media_type": media_type, "name": name, "run": run_id,
                        "step": step, "created_at": created_at}
                self._resources[sha] = (content, meta, [])
            elif run_id and run_id not in self.resource_runs(sha):
                known[2].append(run_id)
        return RES_PREFIX + sha

    def _resource(self, ref: str) -> tuple[bytes, dict[str, Any], list[str]]:
        sha = ref[len(RES_PREFIX):] if ref.startswith(RES_PREFIX) else ref
        if not SHA256.match(sha):
            raise NotFound(f"{ref!r} is not a resource reference", hint="resources look like res://<64 hex digits>")
        try:
            return self._resources[sha]
        except KeyError:
            raise NotFound(f"no resource {sha} in memory") from None

    def resource_runs(self, ref: str) -> list[str]:
        _, meta, others = self._resource(ref)
        return list(dict.fromkeys(r for r in [meta.get("run"), *others] if r))

    def resource_path(self, ref: str) -> Path:
        content, meta, _ = self._resource(ref)
        path = self.scratch / "resources" / meta["sha256"]
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return path

    def resource_meta(self, ref: str) -> dict[str, Any]:
        return dict(self._resource(ref)[1])

    def copy_resource(self, ref: str, out: BinaryIO) -> int:
        content = self._resource(ref)[0]
        out.write(content)
        return len(content)
