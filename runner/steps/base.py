"""Step kinds: the seam between the engine and what each kind of step does.

A kind is one module here (`runner.steps.<kind>`, ssh a package) exposing
`KIND`, an instance of a class built on `BaseKind` (or `BaseWaitingKind`), so
every attribute and hook of the `StepKind` protocol exists with a default and
the engine never probes for one. `kind_named(name)` finds a kind (importing
its module on first use: ssh's libraries load only when an ssh step runs);
`kind_names()` lists every kind this build has.

What the engine uses of a kind (`StepKind`):

    name, instant                 instant: finishes at once with no I/O (lets the engine batch writes)
    shell_fields                  fields whose interpolations are shell-quoted
    unrendered_fields             fields the engine does not render when the step starts (the kind
                                  reads them itself, as an approval renders `context` when it waits)
    waits, ends_run               see below
    takes_decisions               `deliver` hands decisions to it (`receive`)
    asks_decision                 a new visit asks for a new decision: an outcome a rejection or
                                  timeout routed the run to no longer holds
    leaves_work                   may leave work behind on hosts: `leftovers` is asked after each event
    async execute(ctx) -> Done | Park
    async wake(ctx) -> Done | Expired   a parked step's time has come
    settle(ctx) -> Receipt | None       a wait whose answer is already here ends without waiting
    receive(ctx, message) -> Receipt    a decision (takes_decisions)
    rewind_to(step, state) -> str|None  the step a finished visit sends the run back to (request_changes)
    mint_token(step) -> str | None      as the run is created: the secret of the step's callback URL
    leftovers(run, flow, event)         kill requests (events) for what `event` leaves running
    async kill_leftover(request, *, config, draft, pools) -> fields
                                        carry one request out (runner.runs.kills); the fields of
                                        the `detached_killed` event that records it
    unused(run, step_id, entry)         the event recording an accepted answer the run never used

A kind with `on_timeout` semantics (approval, callback) sets `waits = True`
(`BaseWaitingKind`): its Expired ends the step `timed_out` and the flow's
`on_timeout` decides what follows; a reject goes to `on_reject`. A kind that
sets `ends_run = True` (end) ends the run once it succeeds, with the `status`
and `message` of its outputs.

Hooks for the daemon, which finds the kind with `kind_named(step.kind)` and
calls, outside any run's lock (every kind has them; the waiting kinds answer):

    announce(run, step_id, event) -> (subject, text) | None
        on a `step_waiting` event: the notification sent to the step's `notify`
        channels as the wait begins; None sends nothing.
    parse_payload(body, schema) -> payload      (the callback kind)
        before a callback is acknowledged: the body as strict JSON checked
        against the step's `schema` (`spec.get("schema")`); Invalid with reasons.

Resources a kind shares across runs and that must be closed (an ssh
connection pool) come from `ctx.pools.get(SomeClass)`: one instance per class
for the engine's owner, made with no arguments on first use and closed (in
reverse order of creation) by `Pools.close()` when the owner stops.

Duration fields (`timeout`, `duration`, `remind_before`) may be expressions;
`ctx.duration(field)` renders and checks one when the step starts.

Replay (runner.runs.replay) asks `rendered_effect(ctx)` (the rendered fields a kind acts on in the world;
None: it touches nothing), `describe_effect` and a waiting kind's `replay_answer(visit)`. Only a `pure`
kind's `execute` may run in a replay: the others' `execute` and `kill_leftover` refuse (runner.dryrun).

A kind raises StepFailed for its own failures; the engine does every piece of
bookkeeping (events, retries, timeouts, outputs to resources, masking), so a
new kind is one new module here and a line in `KIND_MODULES`.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, ClassVar, Protocol, TypeVar

from runner.dryrun import refusing
from runner.errors import Conflict, SignoffError, StepFailed
from runner.flows.expressions import has_expression
from runner.flows.model import Flow, Step
from runner.timeutil import Clock, parse_duration

log = logging.getLogger(__name__)

T = TypeVar("T")

# every kind this build has, and the module whose KIND it is (imported on first use)
KIND_MODULES: dict[str, str] = {
    "shell": "runner.steps.shell",
    "ssh": "runner.steps.ssh",
    "http": "runner.steps.http",
    "set": "runner.steps.set",
    "wait": "runner.steps.wait",
    "approval": "runner.steps.approval",
    "callback": "runner.steps.callback",
    "notify": "runner.steps.notify",
    "end": "runner.steps.end",
}


@dataclass
class Done:
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Park:
    """Wait without holding anything until `wake_at` (or an outside event).

    `state` is merged into the step's record (an approval's rendered context,
    its hash, who may decide) so a reader sees what the wait is about.
    """

    wake_at: datetime
    reason: str
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Expired:
    """A waiting step's deadline passed with no answer."""

    reason: str


@dataclass
class Receipt:
    """What a kind made of an outside message (a decision, a callback).

    `event` is recorded (fsynced) as is; `outcome` (a final step status) and
    `outputs`, when set, end the step (`error` says why, for an outcome that is a
    failure). `duplicate` means nothing is recorded: the same message was already
    accepted (`previous` is its event).
    """

    event: dict[str, Any] | None = None
    outcome: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    duplicate: bool = False
    previous: dict[str, Any] | None = None
    error: str | None = None


class Mailbox(Protocol):
    """Callbacks accepted for a run (durable) but not yet recorded by it: the daemon's inbox."""

    def get(self, run_id: str, step_id: str) -> dict[str, Any] | None: ...

    async def close_step(self, run_id: str, step_id: str) -> dict[str, Any] | None: ...


class ResourceStore(Protocol):
    """What kinds use of the run store: content-addressed resources."""

    def put_resource(self, data: bytes | Path, *, media_type: str = "application/octet-stream",
                     name: str | None = None, run_id: str | None = None, step: str | None = None,
                     created_at: str | None = None) -> str: ...

    def resource_path(self, ref: str) -> Path: ...

    def resource_meta(self, ref: str) -> dict[str, Any]: ...

    def copy_resource(self, ref: str, out: BinaryIO) -> int: ...


class Pools:
    """Resources kinds share across runs, one instance per class; whoever owns the engine closes them.

    `get(cls)` makes `cls()` on first use and returns that one instance ever after; `close()`
    calls each one's `close()` in reverse order of creation (an error in one is logged, and the
    others are closed all the same). Safe to call from worker threads.
    """

    def __init__(self) -> None:
        self._made: dict[type, Any] = {}
        self._lock = threading.Lock()

    def get(self, cls: type[T]) -> T:
        made = self._made.get(cls)
        if made is None:
            with self._lock:
                made = self._made.get(cls)
                if made is None:
                    made = self._made[cls] = cls()
        return made

    def close(self) -> None:
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for resource in reversed(made):
            try:
                resource.close()
            except Exception:
                log.exception("closing %s failed", type(resource).__name__, extra={"event": "pool_close_failed"})


@dataclass
class StepContext:
    run: dict[str, Any]
    step: Step
    spec: dict[str, Any]
    attempt: int
    run_dir: Path
    work_dir: Path
    env: dict[str, str]
    clock: Clock
    store: ResourceStore
    config: Any
    users: Any = None
    callback_url: Callable[[str], str | None] = lambda step_id: None
    evaluate: Callable[[Any, str], Any] = lambda value, field: value
    on_output: Callable[[str, str], None] = lambda stream, text: None
    public_url: str | None = None
    mask: Callable[[Any], Any] = lambda value: value
    masking: bool = False  # whether there are secret values to mask at all
    masker: Any = None
    mailbox: Mailbox | None = None  # None outside the daemon: nothing can arrive
    # record_event(type, **fields): an event of this step, written (fsynced) before it returns, for what a
    # kind must make durable before it acts (the ssh step names its remote job before starting it)
    record_event: Callable[..., None] = lambda kind, **fields: None
    pools: Pools = field(default_factory=Pools)  # shared across runs; the engine's owner closes them
    # artifact_link(run_id, sha256) -> (url, token): a signed, expiring link to one artifact's page for a
    # message a person reads (the daemon's; None elsewhere: the res:// link is sent as it is)
    artifact_link: Callable[[str, str], tuple[str, str]] | None = None

    @property
    def draft(self) -> bool:
        return bool(self.run.get("draft"))

    def duration_text(self, field: str, *, quiet: bool = False) -> str:
        """A duration field as written, or as its expression renders from the run's state now.

        `quiet` (for messages): an expression that no longer renders is shown as written.
        """
        value = self.spec.get(field)
        if has_expression(value):
            try:
                value = self.evaluate(value, field)
            except SignoffError:
                if not quiet:
                    raise
        return str(value).strip() if not isinstance(value, str) else value.strip()

    def duration(self, field: str) -> float:
        """Seconds of a duration field; a rendered value that is not a positive duration fails the step."""
        text = self.duration_text(field)
        try:
            seconds = parse_duration(text)
        except ValueError:
            seconds = None
        if seconds is None or seconds <= 0:
            written = self.step.spec.get(field)
            source = f" (rendered from {written!r})" if has_expression(written) else ""
            raise StepFailed(f"{field}: {text!r}{source} is not a duration longer than 0; write a number and a "
                             "unit: 500ms, 30s, 10m, 4h, 7d", retryable=False)
        return seconds

    def run_link(self) -> str | None:
        """Where a person sees this run (the reviewer pages), when the daemon has a public URL."""
        return f"{self.public_url}/ui/runs/{self.run['id']}" if self.public_url else None


class StepKind(Protocol):
    """Every attribute and hook the engine uses of a kind (see the module's docstring)."""

    name: str
    instant: bool
    shell_fields: tuple[str, ...]
    unrendered_fields: frozenset[str]
    waits: bool
    ends_run: bool
    takes_decisions: bool
    asks_decision: bool
    leaves_work: bool
    pure: bool

    async def execute(self, ctx: StepContext) -> Done | Park: ...

    async def wake(self, ctx: StepContext) -> Done | Expired: ...

    def settle(self, ctx: StepContext) -> Receipt | None: ...

    def receive(self, ctx: StepContext, message: dict[str, Any]) -> Receipt: ...

    def rewind_to(self, step: Step, state: dict[str, Any]) -> str | None: ...

    def mint_token(self, step: Step) -> str | None: ...

    def leftovers(self, run: dict[str, Any], flow: Flow, event: dict[str, Any]) -> list[dict[str, Any]]: ...

    async def kill_leftover(self, request: dict[str, Any], *, config: Any, draft: bool,
                            pools: Pools) -> dict[str, Any]: ...

    def unused(self, run: dict[str, Any], step_id: str, entry: dict[str, Any]) -> dict[str, Any] | None: ...

    def announce(self, run: dict[str, Any], step_id: str, event: dict[str, Any]) -> tuple[str, str] | None: ...

    def parse_payload(self, body: bytes, schema: dict | None) -> Any: ...

    # what a replay asks (runner.runs.replay)
    def rendered_effect(self, ctx: StepContext) -> dict[str, Any] | None: ...
    def describe_effect(self, effect: dict[str, Any]) -> str: ...
    def replay_answer(self, visit: dict[str, Any]) -> Receipt: ...


class WaitingKind(StepKind, Protocol):
    """A kind that waits for people or systems (`waits`): it parks, and `wake` ends the wait at its deadline."""


class BaseKind:
    """The defaults of every hook: a kind overrides what it does differently."""

    name: ClassVar[str] = ""
    instant: ClassVar[bool] = False
    shell_fields: ClassVar[tuple[str, ...]] = ()
    unrendered_fields: ClassVar[frozenset[str]] = frozenset()
    waits: ClassVar[bool] = False
    ends_run: ClassVar[bool] = False
    takes_decisions: ClassVar[bool] = False
    asks_decision: ClassVar[bool] = False
    leaves_work: ClassVar[bool] = False
    pure: ClassVar[bool] = False  # execute does no I/O beyond the run's store: a replay may call it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook in () if cls.pure else ("execute", "kill_leftover"):  # refused in a replay (runner.dryrun)
            if hook in cls.__dict__:
                setattr(cls, hook, refusing(cls.__dict__[hook], hook))

    async def execute(self, ctx: StepContext) -> Done | Park:
        raise NotImplementedError

    def rendered_effect(self, ctx: StepContext) -> dict[str, Any] | None:
        """The rendered fields this step would act on in the world; None: it touches nothing."""
        return None

    def describe_effect(self, effect: dict[str, Any]) -> str:
        return json.dumps(effect, sort_keys=True, default=str)

    def replay_answer(self, visit: dict[str, Any]) -> Receipt:
        """A waiting kind's recorded answer (status, outputs, error of the visit) as the Receipt it makes."""
        return Receipt(outcome=visit["status"], outputs=dict(visit.get("outputs") or {}), error=visit.get("error"))

    async def wake(self, ctx: StepContext) -> Done | Expired:
        raise StepFailed(f"a {self.name} step does not park", retryable=False)

    def settle(self, ctx: StepContext) -> Receipt | None:
        return None

    def receive(self, ctx: StepContext, message: dict[str, Any]) -> Receipt:
        raise Conflict(f"step '{ctx.step.id}' is a {self.name} step; it takes no decisions")

    def rewind_to(self, step: Step, state: dict[str, Any]) -> str | None:
        return None

    def mint_token(self, step: Step) -> str | None:
        return None

    def leftovers(self, run: dict[str, Any], flow: Flow, event: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    async def kill_leftover(self, request: dict[str, Any], *, config: Any, draft: bool,
                            pools: Pools) -> dict[str, Any]:
        raise StepFailed(f"a {self.name} step leaves nothing behind to kill", retryable=False)

    def unused(self, run: dict[str, Any], step_id: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def parse_payload(self, body: bytes, schema: dict | None) -> Any:
        raise Conflict(f"a {self.name} step takes no callbacks")

    def announce(self, run: dict[str, Any], step_id: str, event: dict[str, Any]) -> tuple[str, str] | None:
        return None  # a park nobody answers (a timer) is not announced


class BaseWaitingKind(BaseKind):
    """A kind that parks until people or systems answer, with a deadline (`timeout`) and `on_timeout`."""

    waits: ClassVar[bool] = True


_loaded: dict[str, StepKind] = {}  # a cache of KIND_MODULES' kinds, which hold no state


def kind_named(name: str) -> StepKind | None:
    """The kind named `name`, or None when this build has none of that name."""
    kind = _loaded.get(name)
    if kind is None:
        module = KIND_MODULES.get(name)
        if module is None:
            return None
        kind = _loaded[name] = importlib.import_module(module).KIND
    return kind


def kind_names() -> tuple[str, ...]:
    """Every kind this build has (without importing any)."""
    return tuple(KIND_MODULES)

