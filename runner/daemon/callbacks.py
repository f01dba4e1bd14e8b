"""Callbacks from outside: a token resolved once, the body checked, accepted into the inbox, the run told.

This is the one place that knows whether a step still takes a callback: the steps of
active runs known to take one now (`expect`, forgotten as their events arrive), and
for the rest the run's record (`refusal`). A token is resolved in O(1): from memory
for the runs this daemon knows, else through the store's callback index.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, NamedTuple

from runner.daemon.inbox import INLINE_LIMIT, Inbox, entry_for
from runner.daemon.pools import in_pool
from runner.errors import Conflict, NotFound, StoreError
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.status import EventType, is_terminal
from runner.steps.base import kind_named
from runner.timeutil import Clock, rfc3339

# a callback step in these takes its callback: early (pending), starting its wait (running: between its start
# and its wait, which another daemon of the same database may be recording right now), or on time (waiting)
OPEN_STATUSES = ("pending", "running", "waiting")
REMEMBERED_TARGETS = 50_000


class CallbackTarget(NamedTuple):
    """What a callback token names: the run, its callback step and the step's spec."""

    run_id: str
    step_id: str
    spec: dict[str, Any]

    def body_limit(self, default: int) -> int:
        """The most bytes a callback body may have here: the step's own `max_bytes`, else `default`."""
        return int(self.spec.get("max_bytes", default))


def refusal(run: dict[str, Any], step_id: str) -> str | None:
    """Why the run's record says the step takes no callback now; None if it does."""
    if is_terminal(run["status"]):
        return f"run {run['id']} already ended {run['status']}"
    status = run["steps"][step_id]["status"]
    if status not in OPEN_STATUSES:
        return f"step '{step_id}' is {status}; it no longer takes a callback"
    return None


def answer(target: CallbackTarget, entry: dict[str, Any], *, replay: bool) -> dict[str, Any]:
    return {"accepted": True, "replay": replay, "run": target.run_id, "step": target.step_id,
            "sha256": entry["sha256"], "at": entry["at"], "bytes": entry.get("bytes")}


class Callbacks:
    def __init__(self, *, engine: Engine, store: Store, inbox: Inbox, clock: Clock,
                 schedule: Callable[[str], None], pool: Any = None, remembers_open: bool = True) -> None:
        self.engine, self.store, self.inbox, self.clock = engine, store, inbox, clock
        # with several daemons on one database, a step may end on another one: ask the record every time
        self.remembers_open = remembers_open
        self._schedule = schedule
        self._pool = pool
        self._targets: dict[str, CallbackTarget] = {}  # callback token -> its target
        self._open: set[tuple[str, str]] = set()  # (run, callback step) known to take a callback now

    def target(self, token: str) -> CallbackTarget:
        """What the token names; NotFound ("no such callback") for anything else."""
        found = self._targets.get(token)
        if found is None:
            located = self.store.find_callback(token)
            if not located:
                raise NotFound("no such callback")
            run_id, step_id = located
            try:
                found = self._remember(token, run_id, step_id, self.engine.flow_of(run_id))
            except KeyError:  # the run's flow copy has no such step
                raise NotFound("no such callback") from None
        return found

    def _remember(self, token: str, run_id: str, step_id: str, flow: Any) -> CallbackTarget:
        if len(self._targets) >= REMEMBERED_TARGETS:
            self._targets.pop(next(iter(self._targets)))
        found = self._targets[token] = CallbackTarget(run_id, step_id, flow.step(step_id).spec)
        return found

    # ---- which steps take a callback now ----------------------------------------------------

    def expect(self, run: dict[str, Any]) -> None:
        """Note the callback steps of an active run that still take one, so their callbacks need no file read.

        The daemon sees every event of its runs, and `on_event` forgets a step when it ends.
        """
        tokens = run.get("callbacks") or {}
        if not tokens:
            return
        flow = self.engine.flow_of(run["id"], run.get("flow_sha256"))
        received = run.get("callbacks_received") or {}
        for step_id, token in tokens.items():
            if run["steps"][step_id]["status"] in OPEN_STATUSES and step_id not in received:
                self._remember(token, run["id"], step_id, flow)
                if self.remembers_open:
                    self._open.add((run["id"], step_id))

    def still_expected(self, run_id: str, step_id: str) -> bool:
        """Whether an accepted callback is still to be recorded by its run (inbox entries at start-up)."""
        try:
            run = self.store.read_run(run_id)
        except (NotFound, StoreError):
            return False
        return not is_terminal(run["status"]) and step_id not in (run.get("callbacks_received") or {})

    def on_event(self, run: dict[str, Any], event: dict[str, Any]) -> None:
        """Listener: a callback step that ended, or a run that ended, takes no callback any more."""
        kind = event["type"]
        if kind in (EventType.STEP_FINISHED, EventType.STEP_SKIPPED):
            self._open.discard((run["id"], event["step"]))
        if kind == EventType.RUN_FINISHED:
            for step_id in run.get("callbacks") or {}:
                self._open.discard((run["id"], step_id))

    # ---- accepting one ---------------------------------------------------------------------

    async def accept(self, target: CallbackTarget, body: bytes) -> tuple[int, dict[str, Any]]:
        """Accept a callback into the inbox (fsynced), then let the run consume it.

        202 when accepted now, 200 for the identical body again (nothing changes), 409 for a
        different body or a step that no longer waits, 422 for a payload the schema refuses.
        The run's writer is not needed, so a run busy with an earlier step answers at once.
        """
        run_id, step_id, spec = target
        existing = self.inbox.get(run_id, step_id)
        known_open = (run_id, step_id) in self._open
        if existing is None and not self.inbox.busy(run_id, step_id) and not known_open:
            run = self.store.read_run(run_id)
            existing = (run.get("callbacks_received") or {}).get(step_id)
            if existing is None:
                refused = refusal(run, step_id)
                if refused:
                    raise Conflict(refused)
        if existing is None:
            kind_named(spec["kind"]).parse_payload(body, spec.get("schema"))
            at = rfc3339(self.clock.now())
            if len(body) > INLINE_LIMIT:
                entry = await in_pool(self._pool, entry_for, self.store, run_id, step_id, body, at=at,
                                      masker=self.engine.masker)
            else:
                entry = entry_for(self.store, run_id, step_id, body, at=at, masker=self.engine.masker)
            if known_open and (run_id, step_id) not in self._open and not self.inbox.get(run_id, step_id):
                # the step ended while the body was checked: decided here, with no await before the accept
                raise Conflict(f"step '{step_id}' is no longer waiting for a callback")
            accepted, existing = await self.inbox.accept(run_id, step_id, entry)
            if accepted:
                self._schedule(run_id)
                return 202, answer(target, existing, replay=False)
        if existing["sha256"] == hashlib.sha256(body).hexdigest():
            return 200, answer(target, existing, replay=True)
        raise Conflict(f"step '{step_id}' already accepted a different callback", hint="a callback is accepted once")
