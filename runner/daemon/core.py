"""The daemon's core: owns execution of runs, timers, recovery and notifications.

One asyncio loop runs everything. A run is advanced by one task at a time
(a per-run asyncio lock, on top of the engine's file lock) and is never held
while it waits: a parked run is only an entry in the timer heap, rebuilt from
disk at start-up, where a deadline that passed while the daemon was down
fires at once. Decisions and callbacks are recorded (fsynced) by the engine
before this returns, so the HTTP layer may acknowledge them.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import heapq
import logging
import os
import signal
import sys
import weakref
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from runner import jsonvalue
from runner.releases import changes as liveops
from runner.auth import (LIVE_CHANGE_ROLES, User, Users, flow_approvers, may_change_live,
                         may_see_run)
from runner.config import Config
from runner.runs.engine import SHUTDOWN, Engine
from runner.errors import (Conflict, FlowInvalid, Forbidden, IntegrityError, Invalid, NotFound, RunLocked,
                           SignoffError, StoreError)
from runner.flows.load import check_file, expand_paths
from runner.releases.service import GitOps
from runner.daemon.inbox import INLINE_LIMIT, Inbox, entry_for
from runner.flows.inputs import resolve_inputs
from runner.releases.live import Resolution
from runner.daemon.metrics import Metrics
from runner.notify import Message, Notifier
from runner.status import is_terminal
from runner.steps.base import Receipt, load_kind
from runner.steps.callback import parse_payload
from runner.runs.store import Store
from runner.timeutil import Clock, parse_rfc3339, rfc3339
from runner.daemon.triggers import ScheduleState, next_slot, schedules, verify_signature, webhook_secret_name

log = logging.getLogger(__name__)
STEP_KINDS = ("shell", "ssh", "http", "set", "wait", "approval", "callback", "notify", "end")
LOCKED_RETRY_SECONDS = 0.5


class Daemon:
    def __init__(self, *, config: Config, store: Store, users: Users, gitops: GitOps, work_dir: Path,
                 public_url: str, clock: Clock | None = None) -> None:
        self.config = config
        self.store = store
        self.users = users
        self.gitops = gitops
        gitops.on_change = self._live_changed
        self.repo = work_dir
        self.public_url = public_url.rstrip("/")
        self.clock = clock or Clock()
        self.metrics = Metrics()
        self.notifier = Notifier(config.channels)
        self.schedule_state = ScheduleState(store.data_dir)
        self._deliveries: deque[str] = deque(maxlen=10_000)
        self._stopped: set[tuple[str, str]] = set()  # detached workers already killed (run, step)
        self._targets: dict[str, tuple[str, str, dict]] = {}  # callback token -> (run, step, spec)
        self._open_steps: set[tuple[str, str]] = set()  # (run, callback step) known to take a callback now
        self.inbox = Inbox(store.data_dir / "inbox.jsonl", fsync=store.fsync)
        self.engine = Engine(store, work_dir=work_dir, config=config, clock=self.clock, masker=config.masker,
                             users=users, public_url=self.public_url, listener=self._on_event,
                             accepts_messages=True, mailbox=self.inbox)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()  # gone when unused
        self._tasks: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()
        self._timers: list[tuple[float, str, str]] = []
        self._timer_changed = asyncio.Event()
        self._reminders: dict[tuple[str, str], str] = {}  # (run, step) -> the remind_at its timer is for
        self._side_tasks: set[asyncio.Task] = set()
        self._changed: dict[str, asyncio.Event] = {}
        self._monitor: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self.stopping = False
        self.failed: str | None = None  # the side task that died, if one did

    # ---- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Read the refs, rebuild timers and resume every active run from its files."""
        for kind in STEP_KINDS:  # import now, not on the loop in the middle of a run
            load_kind(kind)
        await self.gitops.reconcile("start")
        kept = self.inbox.load(self._still_expected)
        self.store.sweep_shared()
        self._monitor = self._supervised(self._timer_loop(), "timers")
        self._watcher = self._supervised(self.gitops.watch(), "ref-watcher")
        resumed = parked = 0
        for run in self._runs_at_start():
            self._expect_callbacks(run)
            if run["status"] == "waiting" and self._parked_quietly(run):
                parked += 1  # nothing to do until its timer fires or an answer comes
            else:
                self.schedule(run["id"])
                resumed += 1
        swept = self._sweep_kills()
        # what start-up keeps (timers, callback targets, flows) lives as long as the daemon: left out
        # of the collector's full passes, which would otherwise stall the loop for tens of ms under load
        gc.collect()
        gc.freeze()
        if swept:
            log.info("%d kills of remote jobs left outstanding are under way", swept, extra={"event": "kills_swept"})
        log.info("daemon started; %d runs resumed, %d waiting, %d callbacks accepted and not yet recorded", resumed,
                 parked, kept, extra={"event": "daemon_started"})

    def _runs_at_start(self) -> list[dict[str, Any]]:
        """The active runs, each as its log says: a snapshot a crash left behind its log is rewritten
        first (a run that ended after it was parked must not look parked), and what a dead writer
        left in a run folder (temp files, attempts' work folders) is removed."""
        active = []
        for found in self.store.scan():
            run = found.snapshot
            if found.lags or found.leftovers:
                try:
                    run = self.engine.repair(found.run_id)
                except RunLocked:  # a `run --local` process is advancing it: its record as it stands
                    run = self.store.read_run(found.run_id)
                except NotFound:  # no event at all: a crash before the run was created (nothing acknowledged)
                    self._discard_unborn(found.run_id)
                    continue
                except (IntegrityError, FlowInvalid) as exc:
                    log.warning("run %s cannot be resumed: %s", found.run_id, getattr(exc, "message", exc),
                                extra={"event": "run_unreadable", "run_id": found.run_id})
                    continue
            if run is not None and not is_terminal(run["status"]):
                active.append(run)
        return active

    def _discard_unborn(self, run_id: str) -> None:
        try:
            if self.store.discard_unborn(run_id):
                log.info("removed run folder %s: a crash came before its run was created", run_id,
                         extra={"event": "run_discarded", "run_id": run_id})
        except (RunLocked, NotFound, OSError):
            pass  # its creator is still at work, or it is gone already

    def _still_expected(self, run_id: str, step_id: str) -> bool:
        """Whether an accepted callback is still to be recorded by its run (inbox entries at start-up)."""
        try:
            run = self.store.read_run(run_id)
        except (NotFound, StoreError):
            return False
        return not is_terminal(run["status"]) and step_id not in (run.get("callbacks_received") or {})

    def _parked_quietly(self, run: dict[str, Any]) -> bool:
        """A waiting run whose deadline is ahead and whose answer has not come needs only its timer."""
        step = run.get("current_step")
        state = run["steps"].get(step or "", {})
        if state.get("status") != "waiting" or not state.get("wake_at") or state.get("decision"):
            return False
        if step in (run.get("callbacks_received") or {}):
            return False  # answered before a crash cut the step short: settle it now
        if parse_rfc3339(state["wake_at"]) <= self.clock.now() or self.inbox.get(run["id"], step):
            return False
        self._watch(run)
        return True

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking work, let runs reach a safe point, leave the rest resumable."""
        self.stopping = True
        for task in (self._monitor, self._watcher):
            if task is not None:
                task.cancel()
        running = list(self._tasks.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel(SHUTDOWN)
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for task in list(self._side_tasks):
            task.cancel()
        if "runner.steps.ssh.step" in sys.modules:
            sys.modules["runner.steps.ssh.step"].close_connections()
        self.inbox.close()

    def _supervised(self, coroutine, name: str) -> asyncio.Task:
        """A named side task; if it dies, the daemon says which and stops cleanly (runs stay resumable)."""
        task = asyncio.create_task(coroutine, name=name)

        def died(done: asyncio.Task) -> None:
            if done.cancelled() or self.stopping:
                return
            self.failed = name
            log.error("the %s task died: %r; stopping the daemon", name, done.exception(),
                      extra={"event": "side_task_died", "task": name})
            os.kill(os.getpid(), signal.SIGTERM)

        task.add_done_callback(died)
        return task

    # ---- starting and advancing runs --------------------------------------------

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
        self._expect_callbacks(run)
        self.schedule(run_id)
        return run

    def _may_start(self, run_id: str) -> bool:
        """A queued run starts only while its flow has fewer active runs than its `concurrency`."""
        limit = self.engine.flow_of(run_id).concurrency
        if not limit:
            return True
        run = self.store.read_run(run_id)
        if run["status"] != "queued":
            return True
        active = sum(len(self.store.list_runs(flow=run["flow"], status=s, limit=limit)) for s in ("running", "waiting"))
        return active < limit

    def _start_queued(self, flow: str) -> None:
        queued = self.store.list_runs(flow=flow, status="queued", limit=10_000)
        if queued:
            self.schedule(queued[-1]["id"])  # the oldest first

    def schedule(self, run_id: str) -> None:
        """Advance the run soon; if it is being advanced now, once more after that."""
        if self.stopping:
            return
        if run_id in self._tasks:
            self._again.add(run_id)
            return
        task = asyncio.create_task(self._advance(run_id), name=f"run:{run_id}")
        self._tasks[run_id] = task
        # a task cancelled before it started never runs its body (nor its `finally`): forget it when done too
        task.add_done_callback(lambda done: self._forget_task(run_id, done))

    def _forget_task(self, run_id: str, task: asyncio.Task | None) -> None:
        if task is not None and self._tasks.get(run_id) is task:
            del self._tasks[run_id]

    async def _advance(self, run_id: str) -> None:
        try:
            while True:
                self._again.discard(run_id)
                if not self._may_start(run_id):
                    return  # stays queued; a finishing run of its flow starts it
                async with self._lock(run_id):
                    run = await self.engine.advance(run_id, hold=False)
                self._watch(run)
                if run_id not in self._again or is_terminal(run["status"]):
                    return
        except asyncio.CancelledError:
            pass  # a cancel (the engine recorded it) or the daemon stopping (the run stays resumable)
        except RunLocked:
            # another process (a `run --local`, a CLI repair) has the run's log: try again shortly
            log.info("run %s is held by another process; retrying", run_id,
                     extra={"event": "advance_deferred", "run_id": run_id})
            asyncio.get_running_loop().call_later(LOCKED_RETRY_SECONDS, self.schedule, run_id)
        except Exception:
            log.exception("advancing run %s failed", run_id, extra={"event": "advance_failed", "run_id": run_id})
        finally:
            self._forget_task(run_id, asyncio.current_task())  # at once: a schedule() right after starts anew

    def _lock(self, run_id: str) -> asyncio.Lock:
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    # ---- timers -------------------------------------------------------------------

    def _watch(self, run: dict[str, Any]) -> None:
        """Register the parked step's deadline (and reminder) in the heap."""
        if run["status"] != "waiting" or not run.get("current_step"):
            return
        state = run["steps"][run["current_step"]]
        if state.get("wake_at"):
            self._add_timer(parse_rfc3339(state["wake_at"]).timestamp(), run["id"], "wake")
            self._plan_reminder(run, run["current_step"], state)

    def _plan_reminder(self, run: dict[str, Any], step_id: str, state: dict[str, Any]) -> None:
        """The reminder timer of a wait with `remind_before` (its `remind_at`) not yet reminded, once per wait.

        From every place a parked run is watched, start-up included, so a restart keeps it;
        one whose time passed while the daemon was down fires at once (see `_remind`).
        """
        if not state.get("remind_at") or state.get("reminded_at"):
            return
        if self._reminders.get((run["id"], step_id)) == state["remind_at"]:
            return  # its timer is in the heap already
        self._reminders[(run["id"], step_id)] = state["remind_at"]
        self._add_timer(parse_rfc3339(state["remind_at"]).timestamp(), run["id"], f"remind:{step_id}")

    def _add_timer(self, when: float, run_id: str, what: str) -> None:
        heapq.heappush(self._timers, (when, run_id, what))
        self._timer_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            now = self.clock.now().timestamp()
            while self._timers and self._timers[0][0] <= now:
                _, key, what = heapq.heappop(self._timers)
                if what == "wake":
                    self.schedule(key)
                elif what.startswith("remind:"):
                    self._spawn(self._remind(key, what.split(":", 1)[1]))
                elif what.startswith("schedule:"):
                    self._spawn(self._fire_schedule(key, what))
            delay = self._timers[0][0] - now if self._timers else 3600.0
            self._timer_changed.clear()
            await self.clock.wait(self._timer_changed, min(delay, 60.0))

    # ---- people and systems -------------------------------------------------------

    async def decide(self, run_id: str, step_id: str, user: User, body: dict[str, Any]) -> tuple[Receipt, dict]:
        if not user.can("approve"):
            raise Forbidden(f"{user.name} may not decide approvals (needs the approve role)")
        self.readable_run(run_id, user)
        message = {"type": "decision", "user": user, **{k: body.get(k) for k in
                                                         ("decision", "comment", "inputs", "context_sha256")}}
        # refused at once, whatever the run is doing: never queued behind an earlier step to land on
        # a later wait (the engine checks again under the run's lock)
        self.engine.check_waiting(self.store.read_run(run_id), step_id)
        async with self._lock(run_id):
            receipt, run = self.engine.deliver(run_id, step_id, message)
        if receipt.outcome:
            self.schedule(run_id)
        return receipt, run

    def callback_target(self, token: str) -> tuple[str, str, dict]:
        """(run, step, step spec) of a callback token; NotFound for anything else."""
        found = self._targets.get(token)
        if found is None:
            located = self.store.find_callback(token)
            if not located:
                raise NotFound("no such callback")
            run_id, step_id = located
            found = self._remember_target(token, run_id, step_id, self.engine.flow_of(run_id))
        return found

    def _remember_target(self, token: str, run_id: str, step_id: str, flow: Any) -> tuple[str, str, dict]:
        if len(self._targets) >= 50_000:
            self._targets.pop(next(iter(self._targets)))
        found = self._targets[token] = (run_id, step_id, flow.step(step_id).spec)
        return found

    def _expect_callbacks(self, run: dict[str, Any]) -> None:
        """Note the callback steps of an active run that still take one, so their callbacks need no file read.

        The daemon sees every event of its runs, and `_on_event` forgets a step when it ends.
        """
        tokens = run.get("callbacks") or {}
        if not tokens:
            return
        flow = self.engine.flow_of(run["id"], run.get("flow_sha256"))
        received = run.get("callbacks_received") or {}
        for step_id, token in tokens.items():
            if run["steps"][step_id]["status"] in ("pending", "waiting") and step_id not in received:
                self._remember_target(token, run["id"], step_id, flow)
                self._open_steps.add((run["id"], step_id))

    async def callback(self, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Accept a callback into the inbox (fsynced), then let the run consume it.

        202 when accepted now, 200 for the identical body again (nothing changes), 409 for a
        different body or a step that no longer waits, 422 for a payload the schema refuses.
        The run's writer is not needed, so a run busy with an earlier step answers at once.
        """
        run_id, step_id, spec = self.callback_target(token)
        existing = self.inbox.get(run_id, step_id)
        known_open = (run_id, step_id) in self._open_steps
        if existing is None and not self.inbox.busy(run_id, step_id) and not known_open:
            run = self.store.read_run(run_id)
            existing = (run.get("callbacks_received") or {}).get(step_id)
            if existing is None:
                if is_terminal(run["status"]):
                    raise Conflict(f"run {run_id} already ended {run['status']}")
                status = run["steps"][step_id]["status"]
                if status not in ("pending", "waiting"):
                    raise Conflict(f"step '{step_id}' is {status}; it no longer takes a callback")
        if existing is None:
            parse_payload(body, spec.get("schema"))
            at = rfc3339(self.clock.now())
            if len(body) > INLINE_LIMIT:
                entry = await asyncio.to_thread(entry_for, self.store, run_id, step_id, body, at=at,
                                                masker=self.engine.masker)
            else:
                entry = entry_for(self.store, run_id, step_id, body, at=at, masker=self.engine.masker)
            if known_open and (run_id, step_id) not in self._open_steps and not self.inbox.get(run_id, step_id):
                # the step ended while the body was checked: decided here, with no await before the accept
                raise Conflict(f"step '{step_id}' is no longer waiting for a callback")
            accepted, existing = await self.inbox.accept(run_id, step_id, entry)
            if accepted:
                self.schedule(run_id)
                return 202, self._answer(run_id, step_id, existing, replay=False)
        if existing["sha256"] == hashlib.sha256(body).hexdigest():
            return 200, self._answer(run_id, step_id, existing, replay=True)
        raise Conflict(f"step '{step_id}' already accepted a different callback", hint="a callback is accepted once")

    @staticmethod
    def _answer(run_id: str, step_id: str, entry: dict[str, Any], *, replay: bool) -> dict[str, Any]:
        return {"accepted": True, "replay": replay, "run": run_id, "step": step_id, "sha256": entry["sha256"],
                "at": entry["at"], "bytes": entry.get("bytes")}

    async def cancel(self, run_id: str, user: User) -> dict[str, Any]:
        run = self.readable_run(run_id, user)
        if not (user.can("admin") or (user.can("run") and run.get("started_by") == user.name)):
            raise Forbidden(f"{user.name} may cancel only runs they started (admins: any)")
        if is_terminal(run["status"]):
            raise Conflict(f"run {run_id} already ended {run['status']}")
        reason = f"cancelled by {user.name}"
        for step_id in run.get("callbacks") or {}:  # a callback being committed now is recorded, not dropped
            await self.inbox.close_step(run_id, step_id)
        task = self._tasks.get(run_id)
        if task is not None:
            self._again.discard(run_id)
            task.cancel(reason)
            await asyncio.wait([task], timeout=10)
            if not task.done():
                return self.store.read_run(run_id)  # its step is still being stopped; the cancel is under way
        async with self._lock(run_id):
            run = self.store.read_run(run_id)
            if is_terminal(run["status"]):
                return run  # the advance recorded the cancel (or ended first)
            return self.engine.cancel(run_id, reason)

    def pending_for(self, user: User) -> list[dict[str, Any]]:
        """Approvals waiting that `user` may decide."""
        found = []
        for run in self.store.list_runs(status="waiting", limit=10_000):
            step_id = run.get("current_step")
            state = run["steps"].get(step_id or "", {})
            if not state.get("approvers") or not user.can("approve") or not self.users.allowed(user, state["approvers"]):
                continue
            if run.get("started_by") == user.name and not state.get("allow_self_approval"):
                continue
            if any(a.get("by") == user.name for a in state.get("approvals") or []):
                continue
            found.append({"run": run["id"], "flow": run["flow"], "step": step_id, "started_by": run["started_by"],
                          "context": state.get("context"), "context_sha256": state.get("context_sha256"),
                          "deadline": state.get("deadline"), "approvals": state.get("approvals") or [],
                          "min_approvals": state.get("min_approvals"), "links": state.get("links") or [],
                          "url": self.run_url(run["id"]), **self._decision_form(run, step_id)})
        return found

    # ---- changes of what is live ------------------------------------------------------------

    async def change_live(self, change: str, flow: str, body: dict[str, Any], user: User) -> dict[str, Any]:
        """release, pin, unpin, yank or unyank, by a user who holds the role for it; recorded with who and why."""
        if not may_change_live(user, change):
            raise Forbidden(f"{user.name} may not {change} (needs the {LIVE_CHANGE_ROLES[change]} role)",
                            hint="ask someone with that role, or an admin")
        fields = liveops.request_fields(change, body)
        actor = liveops.Actor(user.name, "daemon", fields.get("reason"))
        document = await self.gitops.change(change, flow, fields, actor)
        log.info("%s of %s by %s", change, flow, user.name, extra={"event": "live_change", "change": change,
                                                                 "flow": flow, "user": user.name})
        return document

    # ---- who may read what (the rule: runner.auth.may_see_run) ----------------------------

    def may_see(self, user: User, run: dict[str, Any]) -> bool:
        try:
            approvers = flow_approvers(self.engine.flow_of(run["id"], run.get("flow_sha256")).steps)
        except (SignoffError, OSError):
            approvers = []  # a run whose flow copy cannot be read: its starter and admins still see it
        return may_see_run(user, run, self.users, approvers)

    def readable_run(self, run_id: str, user: User) -> dict[str, Any]:
        """The run, if `user` may see it; otherwise NotFound, the same answer as for a run that does not exist."""
        try:
            run = self.store.read_run(run_id)
        except NotFound:
            run = None
        if run is None or not self.may_see(user, run):
            raise NotFound(f"no run {run_id}", hint="GET /api/v1/runs (or `signoff runs list`) lists the runs "
                                                    "you may see")
        return run

    def _may_see_id(self, user: User, run_id: str) -> bool:
        try:
            return self.may_see(user, self.store.read_run(run_id))
        except SignoffError:
            return False

    def visible_runs(self, user: User, *, limit: int, before: str | None = None, **filters: Any) -> list[dict]:
        """Up to `limit` runs (newest first, older than `before`) that `user` may see."""
        found: list[dict] = []
        batch = max(limit, 200)
        while len(found) < limit:
            runs = self.store.list_runs(limit=batch, before=before, **filters)
            found += [run for run in runs if self.may_see(user, run)]
            if len(runs) < batch:
                break
            before = runs[-1]["id"]
        return found[:limit]

    def readable_resource(self, ref: str, user: User) -> tuple[Path, dict[str, Any]]:
        """(path, metadata) of a resource that a run `user` may see stored; otherwise NotFound."""
        try:
            path, meta = self.store.resource_path(ref), self.store.resource_meta(ref)
            runs = self.store.resource_runs(ref)
        except NotFound:
            path, meta, runs = None, {}, []
        if path is not None and (user.can("admin") or any(self._may_see_id(user, run_id) for run_id in runs)):
            return path, meta
        raise NotFound(f"no resource {ref.removeprefix('res://')}",
                       hint="a resource is served to those who may see a run that stored it")

    def _decision_form(self, run: dict[str, Any], step_id: str) -> dict[str, Any]:
        """What a reviewer of the step may send: its input fields, when a comment is due, where changes rewind."""
        spec = self.engine.flow_of(run["id"], run.get("flow_sha256")).step(step_id).spec
        return {"reviewer_inputs": spec.get("inputs") or {}, "require_comment": spec.get("require_comment", "never"),
                "rewind_to": spec.get("rewind_to")}

    # ---- triggers -----------------------------------------------------------------------

    def _live_changed(self, resolution: Resolution) -> None:
        self._spawn(self._plan_schedules())

    async def _plan_schedules(self) -> None:
        """Timers for the next slot of every schedule of every live flow (a slot fires once).

        First the claims a crash cut short get their runs (see ScheduleState).
        """
        for name, index, slot, run_id in self.schedule_state.half_done():
            try:
                origin = await self.gitops.origin(name, None)
            except NotFound:
                origin = None
            except Exception:
                continue  # the repository cannot be read now: at the next plan
            self._create_for_slot(name, index, slot, run_id, origin)
        now = self.clock.now()
        planned = []
        for name in self.gitops.live_flows():
            try:
                flow = (await self.gitops.origin(name, None)).flow
            except Exception:
                continue
            for index, spec in schedules(flow):
                slot = self.schedule_state.first_due(name, index, spec, now)
                planned.append((slot.timestamp(), name, f"schedule:{index}:{slot.isoformat()}"))
        # replace every schedule timer at once (no await in between), so replans never pile up
        self._timers = [t for t in self._timers if not t[2].startswith("schedule:")] + planned
        heapq.heapify(self._timers)
        self._timer_changed.set()

    async def _fire_schedule(self, name: str, what: str) -> None:
        _, index, slot_text = what.split(":", 2)
        index, slot = int(index), datetime.fromisoformat(slot_text)
        try:
            origin = await self.gitops.origin(name, None)
        except NotFound:
            return  # no longer live
        specs = dict(schedules(origin.flow))
        if origin.draft or index not in specs:
            return  # drafts never fire; the live version dropped this schedule
        following = next_slot(specs[index], slot)
        self._add_timer(following.timestamp(), name, f"schedule:{index}:{following.isoformat()}")
        run_id = self.store.new_run_id(self.clock.now())
        if not self.schedule_state.claim(name, index, slot, run_id):
            return  # already fired (before a restart, or by an earlier plan)
        self._create_for_slot(name, index, slot, run_id, origin)

    def _create_for_slot(self, name: str, index: int, slot: datetime, run_id: str, origin: Any) -> None:
        """Create the run a claimed slot names, once: a run already there is only resumed."""
        if self.store.run_exists(run_id):
            self.schedule_state.created(name, index)
            self.schedule(run_id)
            return
        try:
            if origin is None or origin.draft or index not in dict(schedules(origin.flow)):
                log.warning("the slot %s of %s is not fired: the flow or its schedule is no longer live",
                            slot.isoformat(), name, extra={"event": "schedule_dropped"})
                return
            values = resolve_inputs(origin.flow, {})
            self.engine.create_run(origin.flow, values, started_by="schedule", draft=False, ref=origin.ref,
                                   version=origin.version, commit=origin.commit, run_id=run_id)
        except Exception:
            log.exception("schedule of %s could not start a run", name, extra={"event": "schedule_failed"})
            return
        finally:
            self.schedule_state.created(name, index)  # done, or reported: never retried into a second run
        self.metrics.runs_started.labels(flow=name, trigger="schedule").inc()
        self.schedule(run_id)

    async def hook(self, name: str, body: bytes, signature: str | None) -> dict[str, Any]:
        """A webhook trigger: only for a live flow that declares one, HMAC-signed with its secret."""
        if not self.gitops.tagged:
            raise NotFound(f"flow {name} is not live (the repository has no release tags)")
        origin = await self.gitops.origin(name, None)
        secret_name = webhook_secret_name(origin.flow)
        if secret_name is None:
            raise NotFound(f"flow {name} has no webhook trigger")
        secret = self.config.secrets.get(secret_name)
        if secret is None:
            raise Forbidden(f"the webhook secret '{secret_name}' is not configured on this daemon")
        verify_signature(secret, body, signature)
        inputs = jsonvalue.loads(body or b"{}", "the webhook body")
        if not isinstance(inputs, dict):
            raise Invalid("the webhook body must be a JSON object of inputs")
        values = resolve_inputs(origin.flow, inputs)
        run_id = self.engine.create_run(origin.flow, values, started_by="webhook", draft=False, ref=origin.ref,
                                        version=origin.version, commit=origin.commit)
        self.metrics.runs_started.labels(flow=name, trigger="webhook").inc()
        self.schedule(run_id)
        return self.store.read_run(run_id)

    def git_webhook(self, body: bytes, signature: str | None, delivery: str | None) -> dict[str, Any]:
        secret_ref = (self.config.data.get("repo") or {}).get("webhook_secret")
        if not secret_ref:
            raise Forbidden("this daemon has no repo.webhook_secret configured, so it takes no push webhooks")
        verify_signature(self.gitops.webhook_secret or "", body, signature)
        if delivery and delivery in self._deliveries:
            return {"accepted": False, "duplicate": True}
        if delivery:
            self._deliveries.append(delivery)
        self.gitops.nudge()
        return {"accepted": True, "duplicate": False}

    def run_url(self, run_id: str) -> str:
        return f"{self.public_url}/ui/runs/{run_id}"

    def flows(self) -> dict[str, Any]:
        """Live versions (with refusals) when the repo has release tags; else the working tree's flows."""
        if self.gitops.tagged:
            return {"tagged": True, "flows": self.gitops.resolution.to_dict()["flows"]}
        folder = self.repo / "flows"
        reports = [check_file(p, config=self.config) for p in expand_paths([folder])] if folder.is_dir() else []
        return {"tagged": False, "flows": [
            {"flow": r.name or Path(r.file).stem, "live": None,
             "working_tree": {"file": Path(r.file).name, "ok": r.ok, "errors": [p.to_dict() for p in r.errors],
                              "description": r.flow.description if r.flow else None,
                              "inputs": r.flow.inputs if r.flow else {}}} for r in reports]}

    # ---- notifications ---------------------------------------------------------------

    async def events_after(self, run_id: str, after: int, wait: float = 0.0) -> list[dict[str, Any]]:
        """Events with seq > after; with `wait`, hold the request until one arrives (long poll)."""
        events = list(self.store.read_events(run_id, after=after))
        if events or wait <= 0 or is_terminal(self.store.read_run(run_id)["status"]):
            return events
        changed = self._changed.setdefault(run_id, asyncio.Event())
        try:
            await asyncio.wait_for(changed.wait(), timeout=wait)
        except TimeoutError:
            pass
        return list(self.store.read_events(run_id, after=after))

    def _on_event(self, run: dict, event: dict) -> None:
        changed = self._changed.pop(run["id"], None)
        if changed is not None:
            changed.set()
        kind = event["type"]
        if kind == "detached_kill_requested":  # recorded with the run's end (or a callback's timeout)
            self._spawn(self._stop_detached(run["id"], bool(run.get("draft")), {**event, "tries": 0}))
        if kind in ("step_finished", "step_skipped"):
            self._open_steps.discard((run["id"], event["step"]))
        if kind == "callback_received":
            self.inbox.consumed(run["id"], event["step"])
        if kind == "run_finished":
            for step_id in run.get("callbacks") or {}:
                self._open_steps.discard((run["id"], step_id))
                self.inbox.consumed(run["id"], step_id)  # answers that came too late are not kept
            self.metrics.runs_finished.labels(flow=run["flow"], status=event["status"]).inc()
            if self.engine.flow_of(run["id"]).concurrency:
                asyncio.get_running_loop().call_soon(self._start_queued, run["flow"])
        elif kind == "step_finished":
            self.metrics.steps_finished.labels(status=event["status"]).inc()
            if event["status"] == "timed_out" and run["steps"][event["step"]].get("deadline"):
                self._spawn(self._announce_timeout(dict(run), event))
        elif kind == "step_waiting":
            self._spawn(self._announce_wait(dict(run), event))

    async def _stop_detached(self, run_id: str, draft: bool, request: dict[str, Any]) -> None:
        """Carry out a recorded kill request (runner.steps.ssh.jobs): a worker left behind by a run that ended badly."""
        from runner.steps.ssh import jobs as sshjobs

        key = (run_id, request["job"])
        if key in self._stopped:
            return  # already under way (the start-up sweep and a new request)
        self._stopped.add(key)
        try:
            killed = await sshjobs.kill(self.config, request, draft=draft)
            async with self._lock(run_id):
                try:
                    run = self.engine.note(run_id, "detached_killed", **killed)
                except Exception:
                    log.exception("could not record detached_killed for run %s", run_id, extra={"run_id": run_id})
                    return
                if not sshjobs.outstanding(run):
                    self.store.kills_settled(run_id)
        finally:
            self._stopped.discard(key)

    def _sweep_kills(self) -> int:
        """At start-up: carry out the kill requests a crash or a stop left outstanding (each run's record says)."""
        from runner.steps.ssh import jobs as sshjobs

        swept = 0
        for run_id in self.store.runs_with_kills():
            try:
                run = self.store.read_run(run_id)
            except (NotFound, StoreError):
                self.store.kills_settled(run_id)
                continue
            requests = sshjobs.outstanding(run)
            if not requests:
                self.store.kills_settled(run_id)  # noted just before a crash that came before the requests
            for request in requests:
                self._spawn(self._stop_detached(run_id, bool(run.get("draft")), request))
                swept += 1
        return swept

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _step_spec(self, run_id: str, step_id: str) -> dict[str, Any]:
        return self.engine.flow_of(run_id).step(step_id).spec

    async def _announce_wait(self, run: dict, event: dict) -> None:
        step_id = event["step"]
        spec = self._step_spec(run["id"], step_id)
        state = event.get("state") or {}  # its reminder timer (remind_at) is set by _watch
        if spec["kind"] == "approval":
            text = (f"Run {run['id']} of {run['flow']} waits for approval of '{step_id}' by "
                    f"{', '.join(state.get('approvers', []))} until {event['wake_at']}.\n\n{state.get('context', '')}")
        elif spec["kind"] == "callback":
            text = f"Run {run['id']} of {run['flow']} waits for a callback at '{step_id}' until {event['wake_at']}."
        else:
            return
        await self._notify(run, step_id, spec.get("notify") or [], f"{run['flow']}: waiting at {step_id}", text)

    async def _announce_timeout(self, run: dict, event: dict) -> None:
        step_id = event["step"]
        spec = self._step_spec(run["id"], step_id)
        follow = spec.get("on_timeout", "fail")
        what = {"fail": "the run ends timed_out", "reject": "treated as a rejection"}.get(follow, f"going on at '{follow}'")
        await self._notify(run, step_id, spec.get("notify") or [], f"{run['flow']}: {step_id} timed out",
                           f"Run {run['id']} of {run['flow']}: nobody answered '{step_id}' in time "
                           f"({event.get('error')}); {what}.")

    async def _remind(self, run_id: str, step_id: str) -> None:
        """Send a wait's reminder once: recorded as notifications with `reminder: true` (the step's
        `reminded_at`), so a restart does not send it again. One due while the daemon was down goes
        out at start-up if the deadline is still ahead; after the deadline the timeout is the news."""
        run = self.store.read_run(run_id)
        state = run["steps"].get(step_id, {})
        if (state.get("status") != "waiting" or state.get("reminded_at") or not state.get("remind_at")
                or not state.get("wake_at")):
            self._reminders.pop((run_id, step_id), None)
            return
        spec = self._step_spec(run_id, step_id)
        deadline, now = parse_rfc3339(state["wake_at"]), self.clock.now()
        if now < parse_rfc3339(state["remind_at"]):
            return  # the timer of an earlier wait of this step: the current one has its own
        try:
            if now < deadline:
                await self._notify(run, step_id, spec.get("notify") or [], f"{run['flow']}: reminder for {step_id}",
                                   f"Run {run_id} still waits at '{step_id}'; the deadline is {state['wake_at']}.",
                                   reminder=True)
        finally:
            self._reminders.pop((run_id, step_id), None)

    async def _notify(self, run: dict, step_id: str, channels: list[str], subject: str, text: str,
                      **marks: Any) -> None:
        links = [*self._shown_links(run, step_id), {"title": "run", "url": self.run_url(run["id"])}]
        for channel in channels:
            message = Message(subject, text, links, run_id=run["id"], flow=run["flow"], step=step_id)
            delivery = await self.notifier.send(channel, message)
            self.metrics.notifications.labels(channel=channel, ok=str(delivery.ok).lower()).inc()
            await self._note(run["id"], "notification", step=step_id, **delivery.to_dict(), **marks)

    def _shown_links(self, run: dict, step_id: str) -> list[dict[str, str]]:
        """The links the waiting step shows its reviewer; a res:// one also gets its address in the API."""
        links = []
        for link in (run["steps"].get(step_id) or {}).get("links") or []:
            link = dict(link)
            if link["url"].startswith("res://"):
                link["href"] = f"{self.public_url}/api/v1/resources/{link['url'][len('res://'):]}"
            links.append(link)
        return links

    async def _note(self, run_id: str, kind: str, **fields: Any) -> None:
        async with self._lock(run_id):
            try:
                self.engine.note(run_id, kind, **fields)
            except Exception:
                log.exception("could not record %s for run %s", kind, run_id, extra={"run_id": run_id})
