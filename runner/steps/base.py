"""Step kinds: one module per kind, found by name (`runner.steps.<kind>`).

A kind module exposes `KIND`, an object with:

    instant: bool                 finishes at once with no I/O (lets the engine batch writes)
    shell_fields: tuple[str, ...] fields whose interpolations are shell-quoted
    async execute(ctx) -> Done | Park
    async wake(ctx) -> Done | Expired       (kinds that Park) the parked time has come
    receive(ctx, message) -> Receipt        (kinds that wait for people or systems)

A kind with `on_timeout` semantics (approval, callback) sets `waits = True`:
its Expired ends the step `timed_out` and the flow's `on_timeout` decides
what follows; a reject goes to `on_reject`. A kind that sets `ends_run = True`
(end) ends the run once it succeeds, with the `status` and `message` of its
outputs.

Duration fields (`timeout`, `duration`, `remind_before`) may be expressions;
`ctx.duration(field)` renders and checks one when the step starts.

A kind raises StepFailed for its own failures; the engine does every piece of
bookkeeping (events, retries, timeouts, outputs to resources, masking), so a
new kind is one new module here and nothing else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol

from runner.errors import SignoffError, StepFailed
from runner.flows.expressions import has_expression
from runner.flows.model import Step
from runner.timeutil import Clock, parse_duration


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
    store: Any
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
    instant: bool
    shell_fields: tuple[str, ...]

    async def execute(self, ctx: StepContext) -> Done | Park: ...


def load_kind(name: str) -> StepKind | None:
    """The kind named `name`, or None when this build has no module for it."""
    if not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"runner.steps.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"runner.steps.{name}":
            return None
        raise
    return module.KIND
