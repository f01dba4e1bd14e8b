"""`signoff run --local` for a flow that waits for people or systems (DESIGN §9, "Local runs").

The run is advanced here the way the daemon advances its runs: until it parks
(`Engine.advance(hold=False)`), then it waits for the first of its deadline, a
callback accepted, or a final decision, and is advanced again; wait steps and
deadlines are only that timer. While it waits, a loopback server
(runner.cli.local_server) takes the run's callbacks into an inbox of its own
(the daemon's Inbox and Callbacks, so the same acceptance rules) and its
decisions; on a terminal the approval is asked for there too (runner.cli.terminal).

A local run has one person in it, the local user (`$USER`), who started it: they
stand for every approver a step names, and `runner.auth.may_decide` does the rest,
so the self-approval rule holds. Where a step allows self-approval, a local run
still approves its own run only when started with `--allow-self-approval`.

^C (or SIGTERM) cancels the run cleanly, whether a step is running or it waits.
"""

from __future__ import annotations

import asyncio
import getpass
import hmac
import io
import os
import secrets
import signal
import sys
from contextlib import suppress
from typing import Any, TextIO

from runner.auth import ROLES, User, Users, may_decide
from runner.cli.local_server import bind_loopback, create_local_app, serving, url_of
from runner.cli.terminal import Terminal, describe_approval
from runner.daemon.approvals import DECISION_FIELDS
from runner.daemon.callbacks import Callbacks
from runner.daemon.http import BODY_LIMIT
from runner.daemon.inbox import Inbox
from runner.daemon.listeners import Listeners, inbox_consumption
from runner.datadir import make_dir
from runner.errors import Conflict, Forbidden, SignoffError, Unauthorized
from runner.flows.model import Flow
from runner.runs import kills
from runner.runs.engine import Engine
from runner.status import EventType, StepStatus, is_terminal
from runner.steps.base import Receipt, kind_named
from runner.timeutil import parse_rfc3339

RECHECK_SECONDS = 1.0  # a parked run with no deadline (none should be): looked at again this often
SELF_APPROVAL_FLAG = "--allow-self-approval"


class LocalDirectory(Users):
    """The users of a local run: one person, the local user, who stands for every approver a step names."""

    def __init__(self, person: User) -> None:
        super().__init__()
        self.person = person

    def allowed(self, user: User, approvers: list[str]) -> bool:
        return user.name == self.person.name and bool(approvers)


def local_person(name: str) -> tuple[User, LocalDirectory]:
    person = User(name, frozenset(ROLES))
    return person, LocalDirectory(person)


class LocalWait:
    """One local run that waits: advanced here, answered through the loopback routes or on the terminal."""

    def __init__(self, engine: Engine, run_id: str, *, person: User, url: str, allow_self_approval: bool,
                 out: TextIO, terminal: Terminal | None) -> None:
        self.engine, self.store, self.run_id, self.person, self.url = engine, engine.store, run_id, person, url
        self.allow_self_approval = allow_self_approval
        self.out, self.terminal = out, terminal
        self.lock = asyncio.Lock()  # the run's one writer in this process: an advance or a decision
        self.woken = asyncio.Event()  # a callback accepted or a final decision: advance the run again
        folder = self.store.data_dir / "local"
        make_dir(folder, fsync=self.store.fsync)
        self.inbox = Inbox(folder / f"{run_id}.inbox.jsonl", fsync=self.store.fsync)
        self.callbacks = Callbacks(engine=engine, store=self.store, inbox=self.inbox, clock=engine.clock,
                                   schedule=lambda _run_id: self.woken.set())
        engine.mailbox = self.inbox
        shown = engine.listener  # what the command shows of the run (its progress), if anything
        engine.listener = Listeners([("progress", shown or (lambda run, event: None)),
                                     ("open-step tracking", self.callbacks.on_event),
                                     ("inbox consumption", inbox_consumption(self.inbox))])
        self.decision_token: str | None = None  # the waiting approval's one-time token (spent by its decision)
        self._visit: tuple[str, str] | None = None  # (step, started_at) of the approval wait announced
        self._prompt: asyncio.Task | None = None

    # ---- answers ---------------------------------------------------------------------------

    def authorize(self, header: str) -> None:
        """The decision route's bearer token must be the waiting approval's (compared in constant time)."""
        presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
        expected = self.decision_token
        if not presented or expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
            raise Unauthorized("a valid bearer token is required",
                               hint="send Authorization: Bearer <the token printed when the approval began to "
                                    "wait>; each one takes one decision")

    async def decide(self, step_id: str, body: dict[str, Any]) -> tuple[Receipt, dict[str, Any]]:
        """Record a decision of the local user, as the daemon's Approvals.decide records one of its users."""
        may_decide(self.person).check()
        run = self.store.read_run(self.run_id)
        message = {"type": EventType.DECISION, "user": self.person, **{k: body.get(k) for k in DECISION_FIELDS}}
        self.engine.check_waiting(run, step_id)  # refused at once if the step does not wait now
        flow = self.engine.flow_of(self.run_id, run.get("flow_sha256"))
        if body.get("decision") == "approve" and kind_named(flow.step(step_id).kind).takes_decisions:
            refusal = self.approve_refusal(run, step_id)  # (a step of another kind: deliver says it takes none)
            if refusal is not None:
                raise refusal
        async with self.lock:
            receipt, run = self.engine.deliver(self.run_id, step_id, message)
        self.decision_token = None  # one decision per token
        if receipt.outcome:
            self.woken.set()
        return receipt, run

    def approve_refusal(self, run: dict[str, Any], step_id: str) -> Forbidden | None:
        """Why the local user may not approve the step (the rules of may_decide, then the flag); None if they may."""
        spec = self.engine.flow_of(self.run_id, run.get("flow_sha256")).step(step_id).spec
        right = may_decide(self.person, run, step_id, self.engine.users, spec=spec)
        if not right:
            hint = right.hint
            if run.get("started_by") == self.person.name:
                hint = "another approver must decide: start the run through the daemon (`signoff serve`)"
            return Forbidden(right.message, hint=hint)
        if run.get("started_by") == self.person.name and not self.allow_self_approval:
            return Forbidden(f"{self.person.name} started this run; step '{step_id}' allows self-approval, but a "
                             f"local run approves its own run only when started with {SELF_APPROVAL_FLAG}",
                             hint=f"run it again with {SELF_APPROVAL_FLAG}, or reject it")
        return None

    # ---- the waiting loop ----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Advance the run until it ends; cancelling this cancels the run (recorded `cancelled`)."""
        try:
            while True:
                self.woken.clear()
                async with self.lock:
                    record = await self.engine.advance(self.run_id, hold=False)
                if is_terminal(record["status"]):
                    return record
                await self._wait(record)
        except asyncio.CancelledError as exc:
            reason = str(exc.args[0]) if exc.args and exc.args[0] else "cancelled"
            with suppress(Conflict):  # an advance cut short records the cancel itself
                self.engine.cancel(self.run_id, reason)
            raise
        finally:
            await self._drop_prompt()

    async def _wait(self, record: dict[str, Any]) -> None:
        step_id = record.get("current_step")
        state = record["steps"].get(step_id or "", {})
        if state.get("status") == StepStatus.WAITING and step_id and kind_named(
                self.engine.flow_of(self.run_id, record.get("flow_sha256")).step(step_id).kind).takes_decisions:
            await self._approval_waits(record, step_id, state)
        seconds = RECHECK_SECONDS
        if state.get("wake_at"):
            seconds = (parse_rfc3339(state["wake_at"]) - self.engine.clock.now()).total_seconds()
        await self.engine.clock.wait(self.woken, seconds)

    async def _approval_waits(self, run: dict[str, Any], step_id: str, state: dict[str, Any]) -> None:
        """Once per visit of the approval: a new token, the approval shown, and the terminal's prompt."""
        visit = (step_id, state.get("started_at") or "")
        if visit == self._visit:
            return
        await self._drop_prompt()
        self._visit = visit
        self.decision_token = secrets.token_urlsafe(24)
        spec = self.engine.flow_of(self.run_id, run.get("flow_sha256")).step(step_id).spec
        shown = describe_approval(run, step_id, spec, self._context_text(state.get("context")))
        self._say(f"  decide from another shell (this token takes one decision):\n"
                  f"    SIGNOFF_SERVER={self.url} SIGNOFF_TOKEN={self.decision_token} "
                  f"signoff approve {self.run_id} {step_id}   (or reject / request-changes)\n"
                  f"    or POST {self.url}/api/v1/runs/{self.run_id}/steps/{step_id}/decision "
                  f"with Authorization: Bearer <that token>")
        if self.terminal is None or self.terminal.closed:
            self._say(shown)
            return
        refusal = self.approve_refusal(run, step_id)
        self._prompt = asyncio.create_task(
            self.terminal.ask(shown, step_id, spec, state.get("context_sha256"), refusal,
                              lambda body: self.decide(step_id, body)), name="local-run-prompt")

    async def _drop_prompt(self) -> None:
        prompt, self._prompt = self._prompt, None
        if prompt is not None and not prompt.done():
            prompt.cancel()
            with suppress(asyncio.CancelledError):
                await prompt
            self._say("")

    def _context_text(self, context: Any) -> str:
        text = str(context or "")
        if text.startswith("res://"):  # a large context is kept as a resource
            buffer = io.BytesIO()
            with suppress(SignoffError, OSError):
                self.store.copy_resource(text, buffer)
                text = buffer.getvalue().decode("utf-8", errors="replace")
        return text

    def _say(self, text: str) -> None:
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    def close(self) -> None:
        """After the run: its inbox is empty (the run recorded every callback, used or not), so its journal goes."""
        self.inbox.close()
        self.inbox.path.unlink(missing_ok=True)


def run_local(*, store: Any, flow: Flow, inputs: dict[str, Any], source: Any, config: Any, work_dir: Any,
              listener: Any, allow_self_approval: bool) -> dict[str, Any]:
    """Create the local run of `flow` (a draft, started by the local user) and see it to its end, serving it."""
    sock = bind_loopback()
    url = url_of(sock)
    person, users = local_person(getpass.getuser())
    engine = Engine(store, work_dir=work_dir, config=config, masker=config.masker, listener=listener, users=users,
                    public_url=url, accepts_messages=True)
    try:
        run_id = engine.create_run(flow, inputs, started_by=person.name, draft=True, ref=source.ref,
                                   commit=source.commit, dirty=source.dirty)
        local = LocalWait(engine, run_id, person=person, url=url, allow_self_approval=allow_self_approval,
                          out=sys.stderr, terminal=terminal_of())
        record = asyncio.run(run_waiting(local, sock, body_limit=int(config.limits.get("body_max_bytes",
                                                                                        BODY_LIMIT))))
        if record.get("kills"):  # workers its end left running on hosts: no daemon will stop them for us
            record = asyncio.run(kills.carry_out(engine, run_id))
        return record
    finally:
        engine.pools.close()
        sock.close()


async def run_waiting(local: LocalWait, sock: Any, *, body_limit: int) -> dict[str, Any]:
    """Serve the run's routes on `sock` and advance it to its end; SIGINT/SIGTERM cancel it cleanly."""
    loop = asyncio.get_running_loop()
    local.callbacks.expect(local.store.read_run(local.run_id))
    task = asyncio.ensure_future(local.run())
    for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
        loop.add_signal_handler(sig, lambda n=name: task.cancel(f"cancelled by {n}"))
    if local.terminal is not None:
        local.terminal.start()
    try:
        async with serving(create_local_app(local, body_limit=body_limit), sock):
            local._say(f"serving this run's callbacks and decisions on {local.url} while it waits")
            for step_id, token in (local.store.read_run(local.run_id).get("callbacks") or {}).items():
                local._say(f"  callback {step_id}: {local.engine.callback_url(token)}")
            try:
                return await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                return local.store.read_run(local.run_id)
    finally:
        if local.terminal is not None:
            local.terminal.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        local.close()


def terminal_of(stream: Any = None) -> Terminal | None:
    """The terminal to ask on: stdin when it is a tty this process has the foreground of, else None (then
    only the decision route decides; a background job that read its terminal would be stopped)."""
    stream = stream or sys.stdin
    try:
        fd = stream.fileno()
        if not stream.isatty() or os.tcgetpgrp(fd) != os.getpgrp():
            return None
    except (AttributeError, ValueError, OSError):
        return None
    return Terminal(fd, sys.stderr)
