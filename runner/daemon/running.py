"""Running runs: start them, advance each in one task at a time, queue them by `concurrency`, cancel them.

A run is advanced by one task at a time (a per-run asyncio lock, on top of the engine's
file lock) and is never held while it waits: once parked it is only a timer. A run
another process holds (a `run --local`) is tried again shortly.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Callable

from runner.auth import User
from runner.errors import Conflict, Forbidden, Invalid, RunLocked
from runner.flows.inputs import resolve_inputs
from runner.runs.engine import SHUTDOWN, Engine
from runner.runs.store import Store
from runner.status import EventType, RunStatus, is_terminal

log = logging.getLogger(__name__)
LOCKED_RETRY_SECONDS = 0.5
CANCEL_WAIT_SECONDS = 10
WRITER_POLL_SECONDS = 0.02


class RunTasks:
    def __init__(self, *, engine: Engine, store: Store, gitops: Any, metrics: Any, timers: Any,
                 callbacks: Any, inbox: Any, visibility: Any, stopping: Callable[[], bool],
                 shared: bool = False, writer_wait: float = 0.0) -> None:
        self.engine, self.store, self.gitops, self.metrics = engine, store, gitops, metrics
        self.timers, self.callbacks, self.inbox, self.visibility = timers, callbacks, inbox, visibility
        self._stopping = stopping
        # several daemons on one database: a run held by another is that daemon's to advance (it is
        # woken for what arrives, and the sweep takes up what a dead one held), so no retry here
        self.shared = shared
        self.writer_wait = writer_wait  # how long a decision or a note waits for another daemon's writer
        self.tasks: dict[str, asyncio.Task] = {}  # run id -> the task advancing it now
        self._again: set[str] = set()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()  # gone when unused

    async def start_run(self, name: str, inputs: dict[str, Any], user: User, *, ref: str | None = None,
                        trigger: str = "manual") -> dict[str, Any]:
        """Start the live version of a flow (or a draft at `ref`), queued if its concurrency is reached."""
        if not user.can("run"):
            raise Forbidden(f"{user.name} may not start runs (needs the run role)")
        if ref is not None and not isinstance(ref, str):
            raise Invalid("ref must be a string (a branch, tag or commit)")
        origin = await self.gitops.origin(name, ref)
        values = resolve_inputs(origin.flow, inputs)
        run_id = self.engine.create_run(origin.flow, values, started_by=user.name, draft=origin.draft,
                                        ref=origin.ref, version=origin.version, commit=origin.commit,
                                        dirty=origin.dirty)
        self.metrics.runs_started.labels(flow=origin.flow.name, trigger=trigger).inc()
        run = self.store.read_run(run_id)
        self.callbacks.expect(run)
        self.schedule(run_id)
        return run

    # ---- advancing ---------------------------------------------------------------------

    def schedule(self, run_id: str) -> None:
        """Advance the run soon; if it is being advanced now, once more after that."""
        if self._stopping():
            return
        if run_id in self.tasks:
            self._again.add(run_id)
            return
        task = asyncio.create_task(self._advance(run_id), name=f"run:{run_id}")
        self.tasks[run_id] = task
        # a task cancelled before it started never runs its body (nor its `finally`): forget it when done too
        task.add_done_callback(lambda done: self._forget_task(run_id, done))

    def _forget_task(self, run_id: str, task: asyncio.Task | None) -> None:
        if task is not None and self.tasks.get(run_id) is task:
            del self.tasks[run_id]

    async def _advance(self, run_id: str) -> None:
        try:
            while True:
                self._again.discard(run_id)
                if not self._may_start(run_id):
                    return  # stays queued; a finishing run of its flow starts it
                async with self.lock(run_id):
                    run = await self.engine.advance(run_id, hold=False)
                self.timers.watch(run)
                if run_id not in self._again or is_terminal(run["status"]):
                    return
        except asyncio.CancelledError:
            pass  # a cancel (the engine recorded it) or the daemon stopping (the run stays resumable)
        except RunLocked:
            if self.shared:
                log.debug("run %s is advanced by another daemon", run_id,
                          extra={"event": "advance_elsewhere", "run_id": run_id})
                return
            # another process (a `run --local`, a CLI repair) has the run's log: try again shortly
            log.info("run %s is held by another process; retrying", run_id,
                     extra={"event": "advance_deferred", "run_id": run_id})
            asyncio.get_running_loop().call_later(LOCKED_RETRY_SECONDS, self.schedule, run_id)
        except Exception:
            log.exception("advancing run %s failed", run_id, extra={"event": "advance_failed", "run_id": run_id})
        finally:
            self._forget_task(run_id, asyncio.current_task())  # at once: a schedule() right after starts anew

    async def write(self, run_id: str, record: Callable[[], Any]) -> Any:
        """`record()` (an engine call that writes into the run) under the run's writer lock; with several
        daemons, waiting up to `writer_wait` for another daemon that holds the run to let go of it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.writer_wait
        while True:
            async with self.lock(run_id):
                try:
                    return record()
                except RunLocked:
                    if not self.shared or loop.time() >= deadline:
                        raise
            await asyncio.sleep(WRITER_POLL_SECONDS)

    def lock(self, run_id: str) -> asyncio.Lock:
        """The run's writer lock in this daemon: whoever records into the run holds it."""
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    async def stop(self, grace: float) -> None:
        """Let the runs being advanced reach a safe point within `grace`, then cancel the rest (resumable)."""
        running = list(self.tasks.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel(SHUTDOWN)
            if pending:
                await asyncio.wait(pending, timeout=grace)

    # ---- the concurrency queue ---------------------------------------------------------------

    def _may_start(self, run_id: str) -> bool:
        """A queued run starts only while its flow has fewer active runs than its `concurrency`."""
        limit = self.engine.flow_of(run_id).concurrency
        if not limit:
            return True
        run = self.store.read_run(run_id)
        if run["status"] != RunStatus.QUEUED:
            return True
        if self.shared:  # several daemons: a slot is claimed in the database, so two cannot both start one
            return self.store.take_flow_slot(run["flow"], limit, run_id)
        active = sum(len(self.store.list_runs(flow=run["flow"], status=s, limit=limit)) for s in ("running", "waiting"))
        return active < limit

    def start_queued(self, flow: str) -> None:
        queued = self.store.list_runs(flow=flow, status="queued", limit=10_000)
        if queued:
            self.schedule(queued[-1]["id"])  # the oldest first

    def on_event(self, run: dict[str, Any], event: dict[str, Any]) -> None:
        """Listener: a run of a flow with `concurrency` ended, so the oldest queued one may start."""
        if event["type"] == EventType.RUN_FINISHED and self.engine.flow_of(run["id"]).concurrency:
            asyncio.get_running_loop().call_soon(self.start_queued, run["flow"])

    # ---- cancelling ------------------------------------------------------------------------

    async def cancel(self, run_id: str, user: User) -> dict[str, Any]:
        run = self.visibility.readable_run(run_id, user)
        if not (user.can("admin") or (user.can("run") and run.get("started_by") == user.name)):
            raise Forbidden(f"{user.name} may cancel only runs they started (admins: any)")
        if is_terminal(run["status"]):
            raise Conflict(f"run {run_id} already ended {run['status']}")
        reason = f"cancelled by {user.name}"
        for step_id in run.get("callbacks") or {}:  # a callback being committed now is recorded, not dropped
            await self.inbox.close_step(run_id, step_id)
        task = self.tasks.get(run_id)
        if task is not None:
            self._again.discard(run_id)
            task.cancel(reason)
            await asyncio.wait([task], timeout=CANCEL_WAIT_SECONDS)
            if not task.done():
                return self.store.read_run(run_id)  # its step is still being stopped; the cancel is under way
        async with self.lock(run_id):
            run = self.store.read_run(run_id)
            if is_terminal(run["status"]):
                return run  # the advance recorded the cancel (or ended first)
            return self.engine.cancel(run_id, reason)
