"""The run state machine's front: create runs, advance them, hand them answers, cancel and repair them.

Every change to a run is an event appended to its log (durably) and applied
to the in-memory record by `runner.runs.events`; the snapshot is rewritten
when the run's status changes and at most every 200 ms in between, so one
transition costs O(1) however long the run gets (runner.runs.recorder). No
HTTP, git or CLI here: callers hand in a Store (runner.runs.store), a Clock,
the config and the users. The steps of one run are driven by
runner.runs.driver; where a run goes after a step is runner.runs.transitions.

`advance(hold=True)` runs to the end in this process, sleeping through waits
(`signoff run --local`); `hold=False` returns as soon as the run parks, for
the daemon, which comes back when a timer fires or `deliver` ends a wait.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any, Callable

from runner.errors import Conflict, FlowInvalid, IntegrityError, NotFound
from runner.flows.expressions import Evaluator
from runner.flows.load import load_flow_bytes
from runner.flows.model import Flow
from runner.runs import events as record
from runner.runs.driver import SHUTDOWN, Driver
from runner.runs.recorder import Listener
from runner.runs.store import Store
from runner.secrets import Masker
from runner.status import EventType, StepStatus, is_terminal
from runner.steps.base import Mailbox, Pools, Receipt, StepKind, kind_named
from runner.timeutil import Clock, parse_rfc3339

__all__ = ["Engine", "Listener", "SHUTDOWN", "OUTPUT_THRESHOLD"]

log = logging.getLogger(__name__)

OUTPUT_THRESHOLD = 64 * 1024


class Engine:
    """Creates runs and advances them. Holds no run state between calls."""

    def __init__(self, store: Store, *, work_dir: str | Path = ".", config: Any = None, clock: Clock | None = None,
                 masker: Masker | None = None, output_threshold: int = OUTPUT_THRESHOLD,
                 listener: Listener | None = None,
                 rng: random.Random | None = None, users: Any = None, public_url: str | None = None,
                 accepts_messages: bool = False, mailbox: Mailbox | None = None,
                 pools: Pools | None = None,
                 artifact_link: Callable[[str, str], tuple[str, str]] | None = None,
                 kinds: Callable[[str], StepKind | None] | None = None) -> None:
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
        self.pools = pools or Pools()  # shared by the kinds across runs; closed by whoever made them
        self.artifact_link = artifact_link  # signed links to artifacts in the messages steps send (the daemon's)
        # the step kinds by name: the build's, or stand-ins (a replay answers every effect from a recording)
        self.kind_named = kinds or kind_named
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
        run_id = self.store.create_run(self.clock.now(), flow.source, run_id)
        self._remember(flow)
        tokens = {}
        for step in flow.steps:
            kind = self.kind_named(step.kind)
            token = kind.mint_token(step) if kind is not None else None
            if token is not None:
                tokens[step.id] = token
        self.store.index_callbacks(run_id, tokens)
        driver = Driver(self, run_id, {}, flow, self.store.open_log(run_id))
        try:
            driver.record(EventType.RUN_CREATED, run={
                "id": run_id, "flow": flow.name, "draft": draft, "ref": ref, "version": version,
                "commit": commit, "dirty": bool(dirty), "inputs": inputs, "started_by": started_by,
                "flow_sha256": flow.sha256,
                "step_ids": [s.id for s in flow.steps], "callbacks": tokens}, force=True)
        finally:
            driver.recorder.log.close()
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
        if state["status"] != StepStatus.WAITING:
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
            behind = driver.recorder.behind
            if removed or behind:
                log.info("run %s repaired: %s", run_id, ", ".join(
                    (["run.json rewritten from its log"] if behind else []) + [f"removed {r}" for r in removed]),
                    extra={"event": "run_repaired", "run_id": run_id})
            return driver.run

    def note(self, run_id: str, kind: str, **fields: Any) -> dict[str, Any]:
        """Append a history-only event (a notification's delivery, say); the record after it."""
        with self._driver(run_id) as driver:
            driver.record(kind, **self.masker.mask(fields))
        return driver.run

    def _driver(self, run_id: str) -> "_Open":
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
            driver = Driver(self, run_id, run, self.flow_of(run_id, run.get("flow_sha256")), log_file)
            # events the snapshot does not show (a crash came between them): whoever opens the run
            # next rewrites the snapshot as it closes it, whether or not it writes an event itself
            driver.recorder.behind = bool(log_file.tail)
            return _Open(driver)
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


class _Open:
    """A run open for writing: `with engine._driver(run_id) as driver`, the log closed (flushed first) after."""

    __slots__ = ("driver",)

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def __enter__(self) -> Driver:
        return self.driver

    def __exit__(self, *exc: object) -> None:
        self.driver.recorder.close()
