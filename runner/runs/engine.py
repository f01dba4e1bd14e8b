"""The run state machine: pick the next step, run it, record the transition.

Every change to a run is an event appended to its log (fsynced) and applied
to the in-memory record by `runner.runs.events`; the snapshot (run.json) is
rewritten when the run's status changes and at most every 200 ms in between,
so one transition costs O(1) however long the run gets. No HTTP, git or CLI
here: callers hand in a Store, a Clock, the config and the users.

`advance(hold=True)` runs to the end in this process, sleeping through waits
(`signoff run --local`); `hold=False` returns as soon as the run parks, for
the daemon, which comes back when a timer fires or `deliver` ends a wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets as random_tokens
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from runner import jsonvalue
from runner.runs import events as record
from runner.errors import Conflict, ExpressionError, FlowInvalid, IntegrityError, NotFound, StepFailed
from runner.flows.expressions import Evaluator
from runner.flows.load import load_flow_bytes
from runner.flows.model import Flow, Step
from runner.secrets import Masker
from runner.status import RunStatus, StepStatus, TERMINAL_STEP, is_terminal
from runner.steps.base import Done, Expired, Mailbox, Park, Receipt, StepContext, load_kind
from runner.steps.callback import received_event
from runner.runs.store import EventLog, Store
from runner.timeutil import Clock, format_duration, parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

OUTPUT_THRESHOLD = 64 * 1024
OUTPUT_BATCH_SECONDS = 0.25          # live output: at most ~4 appends a second per run
OUTPUT_BATCH_BYTES = 16 * 1024
OUTPUT_EVENT_LIMIT = 64 * 1024       # per step visit; the full output is in the step's outputs
SNAPSHOT_INTERVAL = 0.2
CONTROL_FIELDS = frozenset({"id", "kind", "name", "if", "retry", "timeout", "on_error", "on_timeout", "on_reject",
                            "rewind_to", "context"})
Listener = Callable[[dict, dict], None]
PARKED = "parked"
SHUTDOWN = "daemon shutting down"  # a cancel with this reason leaves the run resumable, not cancelled


class Engine:
    """Creates runs and advances them. Holds no run state between calls."""

    def __init__(self, store: Store, *, work_dir: str | Path = ".", config: Any = None, clock: Clock | None = None,
                 masker: Masker | None = None, output_threshold: int = OUTPUT_THRESHOLD,
                 listener: Listener | None = None,
                 rng: random.Random | None = None, users: Any = None, public_url: str | None = None,
                 accepts_messages: bool = False, mailbox: Mailbox | None = None) -> None:
        self.store = store
        self.work_dir = Path(work_dir)
        self.config = config
        self.clock = clock or Clock()
        self.masker = masker or Masker()
        self.output_threshold = output_threshold
        self.listener = listener
        self.rng = rng or random.Random()
        self.users = users
        self.public_url = public_url.rstrip("/") if public_url else None
        self.accepts_messages = accepts_messages  # a daemon is there to take decisions and callbacks
        self.mailbox = mailbox  # callbacks accepted for runs but not yet recorded by them (the daemon's inbox)
        self.evaluator = Evaluator()
        self._flows: dict[str, Flow] = {}  # validated flow copies by sha256: each is checked once
        self._run_flows: dict[str, Flow] = {}  # run id -> its flow (a run never changes flow)

    def callback_url(self, token: str) -> str | None:
        return f"{self.public_url}/callbacks/{token}" if self.public_url else None

    def create_run(self, flow: Flow, inputs: dict[str, Any], *, started_by: str, draft: bool = True,
                   ref: str | None = None, version: str | None = None, commit: str | None = None,
                   dirty: bool = False, run_id: str | None = None) -> str:
        """Make the run directory, keep the flow source, mint callback tokens, record `run_created`.

        `dirty`: the flow source differs from `commit` (a working tree with uncommitted changes).
        `run_id`: an id chosen (and recorded) beforehand, as a schedule's claim does.
        """
        run_id = self.store.create_run_dir(self.clock.now(), flow.source, run_id)
        self._remember(flow)
        tokens = {s.id: random_tokens.token_urlsafe(32) for s in flow.steps if s.kind == "callback"}
        self.store.index_callbacks(run_id, tokens)
        driver = _Driver(self, run_id, {}, flow, self.store.open_log(run_id))
        try:
            driver.record("run_created", run={
                "id": run_id, "flow": flow.name, "draft": draft, "ref": ref, "version": version,
                "commit": commit, "dirty": bool(dirty), "inputs": inputs, "started_by": started_by,
                "flow_sha256": flow.sha256,
                "step_ids": [s.id for s in flow.steps], "callbacks": tokens}, force=True)
        finally:
            driver.log.close()
        return run_id

    async def advance(self, run_id: str, *, hold: bool = True) -> dict[str, Any]:
        """Advance `run_id` until it ends (or, with hold=False, until it parks). Returns the record.

        Cancelling the calling task cancels the run: the running step's process is
        killed and the run is recorded `cancelled` before the cancellation propagates.
        """
        with self._driver(run_id) as driver:
            await driver.drive(hold=hold)
            return driver.run

    def deliver(self, run_id: str, step_id: str, message: dict[str, Any]) -> tuple[Receipt, dict[str, Any]]:
        """Hand a decision to a waiting step's kind.

        The kind checks it (raising Forbidden, Conflict, Invalid...); what it accepts is
        recorded and fsynced before this returns, so the caller may acknowledge it.
        """
        with self._driver(run_id) as driver:
            receipt = driver.deliver(step_id, message)
            return receipt, driver.run

    def cancel(self, run_id: str, reason: str) -> dict[str, Any]:
        """Cancel a run nobody is advancing (queued or waiting)."""
        with self._driver(run_id) as driver:
            if is_terminal(driver.run["status"]):
                raise Conflict(f"run {run_id} already ended {driver.run['status']}")
            driver.cancel(reason)
            return driver.run

    def check_waiting(self, run: dict[str, Any], step_id: str) -> None:
        """Conflict unless the step waits for an answer right now, before its deadline.

        Checked before a decision waits for the run's lock and again under it: a decision is
        for the wait it was made on, and a timeout never loses to a late answer.
        """
        if is_terminal(run["status"]):
            raise Conflict(f"run {run['id']} already ended {run['status']}")
        state = run["steps"].get(step_id)
        if state is None:
            raise NotFound(f"run {run['id']} has no step '{step_id}'")
        if state["status"] != StepStatus.WAITING.value:
            raise Conflict(f"step '{step_id}' is not waiting for a decision (it is {state['status']})")
        if state.get("wake_at") and self.clock.now() >= parse_rfc3339(state["wake_at"]):
            raise Conflict(f"step '{step_id}' passed its deadline ({state['wake_at']}); a timeout never loses "
                           "to a late answer")

    def repair(self, run_id: str) -> dict[str, Any]:
        """The run as its log says, with run.json rewritten if it lagged and a dead writer's leftovers removed.

        For start-up: a run nobody is advancing. Raises RunLocked if another process holds it.
        """
        with self._driver(run_id) as driver:
            removed = self.store.sweep(run_id)
            if removed or driver.behind:
                log.info("run %s repaired: %s", run_id, ", ".join(
                    (["run.json rewritten from its log"] if driver.behind else []) + [f"removed {r}" for r in removed]),
                    extra={"event": "run_repaired", "run_id": run_id})
            return driver.run

    def note(self, run_id: str, kind: str, **fields: Any) -> dict[str, Any]:
        """Append a history-only event (a notification's delivery, say); the record after it."""
        with self._driver(run_id) as driver:
            driver.record(kind, **self.masker.mask(fields))
        return driver.run

    def _driver(self, run_id: str) -> "_Driver":
        """The run's writer (its log open, so its lock held) with the record as of the last event."""
        log_file = self.store.open_log(run_id)
        try:
            try:
                snapshot: dict[str, Any] | None = self.store.read_snapshot(run_id)
            except (NotFound, IntegrityError):
                snapshot = None
            if snapshot is not None and log_file.resume(snapshot.get("events")):
                run = snapshot
                for event in log_file.tail:  # written after the snapshot
                    record.apply(run, event)
            else:  # no usable snapshot: resume() read the whole log, and the record is its fold
                if snapshot is None:
                    log_file.resume()
                run = record.fold(log_file.tail)
                if not run:
                    raise NotFound(f"run {run_id} has no events")
            driver = _Driver(self, run_id, run, self.flow_of(run_id, run.get("flow_sha256")), log_file)
            # events the snapshot does not show (a crash came between them): whoever opens the run
            # next rewrites run.json as it closes it, whether or not it writes an event itself
            driver.behind = bool(log_file.tail)
            return driver
        except BaseException:
            log_file.close()
            raise

    def flow_of(self, run_id: str, sha256: str | None = None) -> Flow:
        """The run's own flow copy, validated (once per content) and cached.

        With the `flow_sha256` its record keeps, a copy already validated is found without a read.
        """
        flow = self._run_flows.get(run_id)
        if flow is not None:
            return flow
        flow = (self._flows.get(sha256) if sha256 else None) or self._load_flow_copy(run_id)
        if len(self._run_flows) >= 20_000:
            self._run_flows.pop(next(iter(self._run_flows)))
        self._run_flows[run_id] = flow
        return flow

    def _load_flow_copy(self, run_id: str) -> Flow:
        source = self.store.flow_source(run_id).encode()
        digest = hashlib.sha256(source).hexdigest()
        flow = self._flows.get(digest)
        if flow is not None:
            return flow
        try:
            flow = load_flow_bytes(source, f"runs/{run_id}/flow.yaml", limit=None)
        except FlowInvalid as exc:  # the copy was valid when the run started: someone edited it
            raise FlowInvalid(f"the flow copy kept with run {run_id} no longer validates", exc.problems) from None
        self._remember(flow)
        return flow

    def _remember(self, flow: Flow) -> None:
        if len(self._flows) >= 256:
            self._flows.pop(next(iter(self._flows)))
        self._flows[flow.sha256] = flow


class _Driver:
    """Advances one run; owns the bookkeeping every step kind goes through."""

    def __init__(self, engine: Engine, run_id: str, run: dict, flow: Flow, log_file: EventLog) -> None:
        self.engine = engine
        self.run_id = run_id
        self.run = run
        self.flow = flow
        self.log = log_file
        self.pending: list[dict] = []
        self.last_snapshot = engine.clock.monotonic() if run else float("-inf")  # a loaded snapshot is fresh
        self.behind = False  # events on disk that run.json does not reflect yet
        self.snapshot_interval = SNAPSHOT_INTERVAL
        self.outputs: dict[tuple[str, str], list[str]] = {}
        self.output_sent: dict[str, int] = {}
        self.output_flushed = float("-inf")
        self.hold = True
        self.cleaners: list[Any] | None = None  # the flow's kinds that may leave work behind (request_kills)

    def __enter__(self) -> "_Driver":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.flush(force=True)
        finally:
            self.log.close()

    # ---- bookkeeping ----------------------------------------------------------

    def record(self, kind: str, *, flush: bool = True, force: bool = False, **fields: Any) -> dict:
        event = {"type": kind, "at": rfc3339(self.engine.clock.now()), **fields}
        record.apply(self.run, event)
        self.pending.append(event)
        self.request_kills(event)
        if flush:
            self.flush(force=force)
        return event

    def request_kills(self, event: dict) -> None:
        """What `event` leaves running on hosts (runner.steps.ssh.jobs) becomes kill requests in the same batch.

        The run goes on the store's list of outstanding kills first, so the daemon's start-up finds them.
        """
        if self.cleaners is None:
            kinds = {id(kind): kind for kind in map(load_kind, {s.kind for s in self.flow.steps}) if kind}
            self.cleaners = [kind for kind in kinds.values() if hasattr(kind, "leftovers")]
        requests = [request for kind in self.cleaners for request in kind.leftovers(self.run, self.flow, event)]
        if requests:
            self.engine.store.note_kills(self.run_id)
        for request in requests:
            fields = dict(request)
            self.record(fields.pop("type"), flush=False, **fields)

    def flush(self, *, force: bool = False) -> None:
        """Append pending events (one write, one fsync); snapshot if forced or due."""
        batch, self.pending = self.pending, []
        snapshot = self._snapshot_due(batch, force)
        self._write(batch, snapshot)
        self._written(batch, snapshot)

    async def flush_off_loop(self) -> None:
        """flush(force=True), with the file work in a worker thread so the event loop serves others meanwhile.

        Only as drive() returns: nothing else touches this run until then (its locks are held).
        A cancellation waits for the thread, so the log is never closed under a write.
        """
        batch, self.pending = self.pending, []
        snapshot = self._snapshot_due(batch, True)
        if not batch and not snapshot:
            return
        writing = asyncio.get_running_loop().run_in_executor(None, self._write, batch, snapshot)
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            while not writing.done():
                try:
                    await asyncio.wait([writing])
                except asyncio.CancelledError:
                    continue
            if writing.exception() is None:
                self._written(batch, snapshot)  # written: the listener hears of it all the same
            raise
        self._written(batch, snapshot)

    def _snapshot_due(self, batch: list[dict], force: bool) -> bool:
        if batch:
            self.behind = True
        return self.behind and (force or self.engine.clock.monotonic() - self.last_snapshot >= self.snapshot_interval)

    def _write(self, batch: list[dict], snapshot: bool) -> None:
        if batch:
            self.log.append(batch)
        if snapshot:
            started = time.perf_counter()
            self.engine.store.write_snapshot(self.run, self.log)
            # a big snapshot is rewritten less often, so it never costs more than ~5% of the loop
            self.snapshot_interval = max(SNAPSHOT_INTERVAL, 20 * (time.perf_counter() - started))

    def _written(self, batch: list[dict], snapshot: bool) -> None:
        if snapshot:
            self.last_snapshot, self.behind = self.engine.clock.monotonic(), False
        if self.engine.listener:
            for event in batch:
                self.engine.listener(self.run, event)

    def output(self, step_id: str, stream: str, text: str) -> None:
        """Live output of a step, as `step_output` events (batched, capped) that --follow shows."""
        buffer = self.outputs.setdefault((step_id, stream), [])
        buffer.append(text)
        now = self.engine.clock.monotonic()
        if now - self.output_flushed >= OUTPUT_BATCH_SECONDS or sum(map(len, buffer)) >= OUTPUT_BATCH_BYTES:
            self.flush_output()

    def flush_output(self) -> None:
        self.output_flushed = self.engine.clock.monotonic()
        for (step_id, stream), parts in list(self.outputs.items()):
            text, room = "".join(parts), OUTPUT_EVENT_LIMIT - self.output_sent.get(step_id, 0)
            if text and room > 0:
                self.output_sent[step_id] = self.output_sent.get(step_id, 0) + len(text)
                self.record("step_output", step=step_id, stream=stream, text=self.engine.masker.mask(text[:room]),
                            truncated=len(text) > room)
        self.outputs.clear()

    def context(self) -> dict[str, Any]:
        run = self.run
        callbacks = {step_id: {"url": self.engine.callback_url(token)}
                     for step_id, token in (run.get("callbacks") or {}).items()}
        return {"inputs": run["inputs"], "steps": run["steps"], "callbacks": callbacks,
                "run": {k: run.get(k) for k in ("id", "flow", "version", "ref", "commit", "started_by", "draft")}}

    # ---- the state machine ----------------------------------------------------

    async def drive(self, *, hold: bool) -> None:
        if is_terminal(self.run["status"]):
            return
        self.hold = hold
        try:
            await self.run_steps()
            if is_terminal(self.run["status"]):
                await self.close_mailbox()
            # the end or the park of the run (events, snapshot) is written here, off the event loop
            await self.flush_off_loop()
        except asyncio.CancelledError as exc:
            # also while the park is being written: the park is on disk by then, and the cancel follows it
            reason = str(exc.args[0]) if exc.args and exc.args[0] else "cancelled"
            if reason != SHUTDOWN and not is_terminal(self.run["status"]):
                self.cancel(reason)
            self.flush(force=True)
            raise
        except BaseException:
            self.flush(force=True)
            raise

    async def close_mailbox(self) -> None:
        """As the run ends: callbacks accepted for steps it never reached are recorded, not dropped."""
        mailbox = self.engine.mailbox
        if mailbox is None:
            return
        for step_id in self.run.get("callbacks") or {}:
            if step_id in (self.run.get("callbacks_received") or {}):
                continue
            entry = await mailbox.close_step(self.run_id, step_id)
            self.record_unused(step_id, entry)

    def record_unused(self, step_id: str, entry: dict[str, Any] | None) -> None:
        if entry is not None and step_id not in (self.run.get("callbacks_received") or {}):
            event = received_event(entry, started=self.run["steps"][step_id].get("started_at"), unused=True)
            self.record(event.pop("type"), step=step_id, flush=False, **self.engine.masker.mask(event))

    async def run_steps(self) -> None:
        if self.run["status"] == RunStatus.QUEUED.value:
            self.record("run_started", force=True)
        index = await self.recover()
        while index is not None and index != PARKED:
            if index >= len(self.flow.steps):
                self.finish_path()
                return
            step = self.flow.steps[index]
            if self.run["steps_executed"] >= self.flow.max_steps:
                self.finish(RunStatus.FAILED, f"the run executed {self.run['steps_executed']} steps, the "
                            f"limit (max_steps: {self.flow.max_steps}); is a jump looping?")
                return
            index = self.after(step, await self.run_step(step, attempt=1))

    async def recover(self) -> int | str | None:
        """Where to go on from: the start, a step interrupted by a crash, or a wait in progress."""
        current = self.run.get("current_step")
        if current is None:
            return 0
        step = self.flow.step(current)
        state = self.run["steps"][current]
        if state["status"] == StepStatus.WAITING.value:
            return self.after(step, await self.finish_wait(step, parse_rfc3339(state["wake_at"])))
        if state["status"] == StepStatus.RUNNING.value:
            policy = step.retry
            if state.get("retry_at"):
                await self.engine.clock.sleep(
                    (parse_rfc3339(state["retry_at"]) - self.engine.clock.now()).total_seconds())
                return self.after(step, await self.run_step(step, attempt=state["attempts"] + 1))
            if state["attempts"] < policy.attempts:
                self.record("step_interrupted", step=step.id, reason="interrupted by a restart; retrying")
                return self.after(step, await self.run_step(step, attempt=state["attempts"] + 1))
            self.record("step_finished", step=step.id, status=StepStatus.FAILED.value,
                        error="interrupted by a restart", interrupted=True)
            return self.after(step, StepStatus.FAILED)
        return self.after(step, StepStatus(state["status"]))

    def after(self, step: Step, status: StepStatus | str) -> int | str | None:
        """The index of the next step, PARKED, or None once the run has ended."""
        if status == PARKED:
            return PARKED
        state = self.run["steps"][step.id]
        kind = load_kind(step.kind)
        if status == StepStatus.SUCCEEDED and getattr(kind, "ends_run", False):
            return self.end_here(step, state["outputs"])
        if status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            return step.index + 1
        if state.get("decision") == "request_changes" and step.spec.get("rewind_to"):
            return self.jump(step, step.spec["rewind_to"], f"changes requested at '{step.id}'", outcome=None)
        if status == StepStatus.TIMED_OUT and getattr(kind, "waits", False):
            target = step.spec.get("on_timeout", "fail")
            timed_out = f"step '{step.id}' timed out: {state.get('error')}"
            if target == "fail":
                self.finish(RunStatus.TIMED_OUT, timed_out)
                return None
            if target != "reject":
                return self.jump(step, target, f"on_timeout of '{step.id}'", outcome=RunStatus.TIMED_OUT,
                                 error=timed_out)
            status = StepStatus.REJECTED
        if status == StepStatus.REJECTED:
            rejected = (f"step '{step.id}' was rejected"
                        + (f" by {state['decided_by']}" if state.get("decided_by") else "")
                        + (f": {state['comment']}" if state.get("comment") else ""))
            if step.spec.get("on_reject"):
                return self.jump(step, step.spec["on_reject"], f"on_reject of '{step.id}'",
                                 outcome=RunStatus.REJECTED, error=rejected)
            self.finish(RunStatus.REJECTED, rejected)
            return None
        target = step.on_error
        if target == "continue":
            return step.index + 1
        if target == "fail":
            error = state.get("error") or str(status)
            self.finish(RunStatus.FAILED, f"step '{step.id}' {StepStatus(status).value}: {error}")
            return None
        return self.jump(step, target, f"on_error of '{step.id}'")

    def jump(self, step: Step, target_id: str, reason: str, **routing: Any) -> int:
        """Go on at `target_id`. `outcome` (with `error`) routes the run: see `finish_path`; None clears it."""
        target = self.flow.index_of(target_id)
        if "outcome" in routing and routing["outcome"] is None and not self.run.get("routed"):
            routing = {}  # nothing to clear
        if routing.get("outcome") is not None:
            routing = {"outcome": RunStatus(routing["outcome"]).value,
                       "error": self.engine.masker.mask(routing.get("error"))}
        self.record("jump", step=step.id, to=target_id, reason=reason, flush=False, **routing)
        for passed in self.flow.steps[step.index + 1:target]:
            if self.run["steps"][passed.id]["status"] == StepStatus.PENDING.value:
                self.record("step_skipped", step=passed.id, reason=f"passed over by a jump to '{target_id}'",
                            by_jump=True, flush=False)
        self.flush()
        return target

    def finish_path(self) -> None:
        """The last step is behind the run: it succeeded, unless a rejection or timeout routed it here.

        A run that `on_reject` or `on_timeout` sent to a handler path ends `rejected` or `timed_out`
        when that path completes (an `end` step states otherwise). The routing is part of the
        record (the `jump` event's `outcome`), so it survives a restart; see `clear_routing`.
        """
        routed = self.run.get("routed")
        if routed:
            self.finish(RunStatus(routed["outcome"]), routed.get("error"))
        else:
            self.finish(RunStatus.SUCCEEDED)

    def end_here(self, step: Step, outputs: dict[str, Any]) -> None:
        """An `end` step: the run ends with the status the flow states, whatever routed it."""
        status = RunStatus(outputs.get("status") or RunStatus.SUCCEEDED.value)
        message = outputs.get("message")
        if status == RunStatus.SUCCEEDED:
            self.finish(status)
        else:
            self.finish(status, message or f"ended {status.value} by step '{step.id}'")
        return None

    def clear_routing(self, step: Step) -> None:
        """A new decision is asked for: the outcome a rejection or timeout routed the run to no longer holds.

        That is when an approval step begins a new visit (its own outcome decides from then on),
        or the step that routed the run begins again (a loop back to it).
        """
        routed = self.run.get("routed")
        if routed and (step.kind == "approval" or step.id == routed.get("step")):
            self.record("routing_cleared", step=step.id, flush=False,
                        reason=f"'{step.id}' asks again; the {routed['outcome']} outcome of '{routed['step']}' "
                               "no longer holds")

    def finish(self, status: RunStatus, error: str | None = None) -> None:
        # nothing runs after this: drive() writes it as it returns
        self.record("run_finished", status=status.value, error=self.engine.masker.mask(error), flush=False)

    def cancel(self, reason: str) -> None:
        self.pending.clear()  # a half-built batch was never acknowledged
        if self.engine.mailbox is not None:
            for step_id in self.run.get("callbacks") or {}:
                self.record_unused(step_id, self.engine.mailbox.get(self.run_id, step_id))
        current = self.run.get("current_step")
        if current and self.run["steps"][current]["status"] not in {s.value for s in TERMINAL_STEP}:
            self.record("step_finished", step=current, status=StepStatus.CANCELLED.value, error=reason, flush=False)
        self.record("run_finished", status=RunStatus.CANCELLED.value, error=reason, force=True)

    # ---- one step -------------------------------------------------------------

    async def run_step(self, step: Step, *, attempt: int) -> StepStatus | str:
        context = self.context()
        if step.condition is not None and attempt == 1:
            try:
                wanted = self.engine.evaluator.truthy(step.condition, context, step=step.id)
            except ExpressionError as exc:
                self.record("step_started", step=step.id, attempt=1, flush=False)
                return self.fail(step, exc.message)
            if not wanted:
                self.record("step_skipped", step=step.id, reason="its `if` was false", by_jump=False)
                return StepStatus.SKIPPED
        kind = load_kind(step.kind)
        instant = bool(kind and kind.instant)
        if attempt == 1:
            self.output_sent.pop(step.id, None)
            self.clear_routing(step)
        self.record("step_started", step=step.id, attempt=attempt, flush=not instant)
        if kind is None:
            return self.fail(step, f"'{step.kind}' steps are not available in this build")
        if getattr(kind, "waits", False) and not self.engine.accepts_messages:
            return self.fail(step, f"'{step.kind}' steps wait for people or systems, which need the daemon: "
                                   "start `signoff serve` and run the flow without --local")
        policy = step.retry
        while True:
            status, error, retryable, outputs = StepStatus.FAILED, "", False, {}
            timeout = None
            try:
                ctx = self.step_context(step, kind, attempt)
                timeout = ctx.duration("timeout") if step.spec.get("timeout") else None
                if timeout and not getattr(kind, "waits", False):
                    async with asyncio.timeout(timeout):
                        result = await kind.execute(ctx)
                else:
                    result = await kind.execute(ctx)
                if isinstance(result, Park):
                    return await self.park(step, kind, ctx, result)
                # the last step's end is written together with the run's end (one fsync for both)
                last = kind.instant and (step.index == len(self.flow.steps) - 1 or getattr(kind, "ends_run", False))
                return self.succeed(step, result, flush=not last)
            except StepFailed as exc:
                error, retryable, outputs = exc.message, exc.retryable, exc.outputs
            except ExpressionError as exc:
                error = exc.message
            except TimeoutError:
                status, retryable = StepStatus.TIMED_OUT, True
                error = f"timed out after {format_duration(timeout or 0)}"
            except Exception as exc:  # a bug in a kind must not lose the run
                log.exception("step %s of run %s raised", step.id, self.run_id,
                              extra={"event": "step_crashed", "run_id": self.run_id, "step_id": step.id})
                error = f"internal error in the {step.kind} step: {type(exc).__name__}: {exc}"
            if not (retryable and attempt < policy.attempts):
                return self.fail(step, error, status=status, outputs=outputs)
            delay = policy.delay(attempt, self.engine.rng)
            retry_at = self.engine.clock.now() + timedelta(seconds=delay)
            self.record("step_retrying", step=step.id, attempt=attempt, error=self.engine.masker.mask(error),
                        delay_seconds=round(delay, 3), retry_at=rfc3339(retry_at), force=True)
            await self.engine.clock.sleep(delay)
            attempt += 1
            self.record("step_started", step=step.id, attempt=attempt)

    def step_context(self, step: Step, kind: Any, attempt: int, *, render: bool = True) -> StepContext:
        context = self.context()
        evaluator = self.engine.evaluator
        spec, env = dict(step.spec), {}
        if render:
            for field, value in step.spec.items():
                if field not in CONTROL_FIELDS:
                    spec[field] = evaluator.render(value, context, shell=field in kind.shell_fields,
                                                   step=step.id, field=field)
            env = {k: str(evaluator.render(v, context, step=step.id, field=f"env.{k}"))
                   for k, v in {**self.flow.env, **(step.spec.get("env") or {})}.items()}
        tokens = self.run.get("callbacks") or {}
        return StepContext(
            run=self.run, step=step, spec=spec, attempt=attempt, run_dir=self.engine.store.run_dir(self.run_id),
            work_dir=self.engine.work_dir, env=env, clock=self.engine.clock, store=self.engine.store,
            config=self.engine.config, users=self.engine.users, mailbox=self.engine.mailbox,
            callback_url=lambda step_id: self.engine.callback_url(tokens[step_id]) if step_id in tokens else None,
            evaluate=lambda value, field: evaluator.render(value, context, step=step.id, field=field),
            public_url=self.engine.public_url,
            mask=self.engine.masker.mask, masking=bool(self.engine.masker.values), masker=self.engine.masker,
            on_output=lambda stream, text: self.output(step.id, stream, text),
            record_event=lambda kind, **fields: self.record(kind, step=step.id, **self.engine.masker.mask(fields)))

    async def park(self, step: Step, kind: Any, ctx: StepContext, parked: Park) -> StepStatus | str:
        settled = self.settle(step, kind, ctx)  # the answer came early: nothing to wait for
        if settled is not None:
            return settled
        self.record("step_waiting", step=step.id, wake_at=rfc3339(parked.wake_at), reason=parked.reason,
                    state=self.engine.masker.mask(parked.state), flush=False)
        return await self.finish_wait(step, parked.wake_at, kind, ctx)

    async def finish_wait(self, step: Step, wake_at, kind: Any = None,
                          ctx: StepContext | None = None) -> StepStatus | str:
        kind = kind or load_kind(step.kind)
        ctx = ctx or self.step_context(step, kind, self.run["steps"][step.id]["attempts"], render=False)
        settled = self.settle(step, kind, ctx)
        if settled is not None:
            return settled
        remaining = (wake_at - self.engine.clock.now()).total_seconds()
        if remaining > 0 and not self.hold:
            return PARKED  # drive() writes the park as it returns
        self.flush(force=True)
        await self.engine.clock.sleep(remaining)
        if self.engine.mailbox is not None:  # no callback may be accepted once the wait is over
            await self.engine.mailbox.close_step(self.run_id, step.id)
            settled = self.settle(step, kind, ctx)
            if settled is not None:
                return settled
        try:
            result = await kind.wake(ctx)
        except StepFailed as exc:
            return self.fail(step, exc.message)
        if isinstance(result, Expired):
            return self.fail(step, result.reason, status=StepStatus.TIMED_OUT)
        return self.succeed(step, result)

    def settle(self, step: Step, kind: Any, ctx: StepContext) -> StepStatus | None:
        """End a wait whose answer is already here (an inbox callback, a decision cut short by a crash)."""
        receipt = kind.settle(ctx) if hasattr(kind, "settle") else None
        if receipt is None:
            return None
        # the answer is already durable (inbox, or a recorded decision): its events ride the next write
        self.conclude(step, receipt, flush=False)
        return StepStatus(receipt.outcome)

    def conclude(self, step: Step, receipt: Receipt, *, flush: bool = True) -> None:
        """Record what a receipt says in one batch: one write, one fsync."""
        if receipt.event:
            event = dict(receipt.event)
            self.record(event.pop("type"), step=step.id, flush=False, **self.engine.masker.mask(event))
        if receipt.outcome:
            self.record("step_finished", step=step.id, status=receipt.outcome, flush=False,
                        error=self.engine.masker.mask(receipt.error),
                        outputs=self.compact(step, self.engine.masker.mask(receipt.outputs)))
        if flush:
            self.flush()

    def deliver(self, step_id: str, message: dict[str, Any]) -> Receipt:
        try:
            step = self.flow.step(step_id)
        except KeyError:
            raise NotFound(f"run {self.run_id} has no step '{step_id}'") from None
        kind = load_kind(step.kind)
        if not hasattr(kind, "receive"):
            raise Conflict(f"step '{step_id}' is a {step.kind} step; it takes no decisions")
        self.engine.check_waiting(self.run, step_id)
        ctx = self.step_context(step, kind, self.run["steps"][step_id]["attempts"], render=False)
        receipt = kind.receive(ctx, message)
        if not receipt.duplicate:
            self.conclude(step, receipt)
        return receipt

    def succeed(self, step: Step, result: Done, *, flush: bool = True) -> StepStatus:
        reason = jsonvalue.problem(result.outputs, "outputs")
        if reason is not None:  # NaN from `output: json`, say: the step fails; the run can still be written
            raise StepFailed(f"{reason}; a step's outputs must be strict JSON", retryable=False)
        self.flush_output()
        outputs = self.compact(step, self.engine.masker.mask(result.outputs))
        self.record("step_finished", step=step.id, status=StepStatus.SUCCEEDED.value, outputs=outputs, flush=flush)
        return StepStatus.SUCCEEDED

    def fail(self, step: Step, error: str, *, status: StepStatus = StepStatus.FAILED,
             outputs: dict | None = None) -> StepStatus:
        self.flush_output()
        outputs = self.compact(step, self.engine.masker.mask(outputs or {}))
        self.record("step_finished", step=step.id, status=status.value, error=self.engine.masker.mask(error),
                    outputs=outputs)
        return status

    def compact(self, step: Step, outputs: dict[str, Any]) -> dict[str, Any]:
        """Outputs over the threshold become res:// references, so run.json stays small."""
        compacted = {}
        for key, value in outputs.items():
            if isinstance(value, str):
                data, media = value.encode(), "text/plain; charset=utf-8"
            else:
                data, media = json.dumps(value, default=str).encode(), "application/json"
            if len(data) > self.engine.output_threshold:
                value = self.engine.store.put_resource(data, media_type=media, name=f"{step.id}.{key}",
                                                       run_id=self.run_id, step=step.id,
                                                       created_at=rfc3339(self.engine.clock.now()))
            compacted[key] = value
        return compacted
