"""The stand-ins a replay runs its steps with: every effect answered from a recording, nothing executed.

`Feed` holds what one replay pass feeds (a `Recording`) and notes what each
visit did; `Feed.kind_named` is the engine's kind lookup for the pass, giving a
`ReplayKind` around each real kind. A `ReplayKind` keeps the real kind's
attributes and rules (rendering, transitions, `rewind_to`) and answers:

- a kind with an effect on the world (`rendered_effect` not None: shell, ssh,
  http, notify): the recorded outcome of the same visit when the rendered
  effect is the recorded one; otherwise the step is not executed, its effect is
  noted as `would_run`, and it is assumed to succeed with no outputs;
- a pure instant kind (set, end): its real `execute`;
- a timer (wait): done at once, with the recorded outputs when there are some;
- a waiting kind (approval, callback): the recorded answer (decision, payload
  or timeout) of the same visit; with none it waits, and the replay stops there.

In the baseline pass (the recorded flow itself, `baseline=None`) every effect
is fed as recorded: that pass only learns what each recorded visit rendered.
`ReplayClock` moves only when something sleeps, and a little on every reading,
so every event of a pass has its own time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from runner.errors import StepFailed
from runner.flows.model import Flow, Step
from runner.runs.recording import Recording
from runner.status import StepStatus
from runner.steps.base import Done, Expired, Park, Pools, Receipt, StepContext, StepKind, kind_named
from runner.timeutil import Clock, rfc3339

_COPIED = ("name", "instant", "shell_fields", "unrendered_fields", "waits", "ends_run", "takes_decisions",
           "asks_decision")
_TIMED_OUT = StepStatus.TIMED_OUT.value


class ReplayClock(Clock):
    """Virtual time from `start`: sleeping returns at once, and each reading is a microsecond later."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        self.current += timedelta(microseconds=1)
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()

    async def sleep(self, seconds: float) -> None:
        self.current += timedelta(seconds=max(0.0, seconds))


class Feed:
    """What one replay pass feeds its steps, and the note it keeps of each visit (by step and start time)."""

    def __init__(self, recording: Recording, *, baseline: dict[tuple[str, int], dict[str, Any]] | None) -> None:
        self.recording = recording
        self.baseline = baseline  # (step, visit) -> {kind, effect} the recorded flow rendered; None: this is it
        self.counts: dict[str, int] = {}
        self.notes: dict[tuple[str, str], dict[str, Any]] = {}
        self.effects: dict[tuple[str, int], dict[str, Any]] = {}
        self._kinds: dict[str, ReplayKind] = {}

    def kind_named(self, name: str) -> StepKind | None:
        real = kind_named(name)
        if real is None:
            return None
        if name not in self._kinds:
            self._kinds[name] = ReplayKind(real, self)
        return self._kinds[name]

    def note(self, ctx: StepContext) -> dict[str, Any]:
        """The note of the visit `ctx` belongs to (made on its first attempt)."""
        step_id = ctx.step.id
        key = (step_id, ctx.run["steps"][step_id]["started_at"])
        if key not in self.notes:
            number = self.counts[step_id] = self.counts.get(step_id, 0) + 1
            self.notes[key] = {"visit": number, "effect": None, "fed": False, "assumed": False, "would_run": None}
        return self.notes[key]

    def recorded(self, step: Step, kind: StepKind, note: dict[str, Any]) -> dict[str, Any] | None:
        """The recorded outcome of this visit, if the recorded flow ran the same kind of step here."""
        if self.recording.kind_of(step.id) != kind.name:
            return None
        return self.recording.answered(step.id, note["visit"])

    def effect(self, real: StepKind, ctx: StepContext, note: dict[str, Any], effect: dict[str, Any]) -> Done:
        """A step with an effect on the world: the recorded outcome if it would do what it did, else nothing."""
        note["effect"] = effect
        self.effects[(ctx.step.id, note["visit"])] = {"kind": real.name, "effect": effect}
        recorded = self.recorded(ctx.step, real, note)
        before = self.baseline.get((ctx.step.id, note["visit"])) if self.baseline is not None else None
        same = self.baseline is None or (before is not None and before == {"kind": real.name, "effect": effect})
        if recorded is not None and same:
            note["fed"] = True
            return outcome(recorded)
        note["would_run"], note["assumed"] = real.describe_effect(effect), True
        return Done({})


def outcome(visit: dict[str, Any]) -> Done:
    """A recorded outcome of a step with effects, given again: its outputs, or its failure."""
    if visit["status"] == StepStatus.SUCCEEDED:
        return Done(dict(visit.get("outputs") or {}))
    if visit["status"] == _TIMED_OUT:
        raise TimeoutError
    raise StepFailed(visit.get("error") or f"step {visit['status']}", retryable=False,
                     outputs=dict(visit.get("outputs") or {}))


class ReplayKind:
    """A real kind with every effect answered by the replay's `Feed` (see the module's docstring)."""

    leaves_work = False  # nothing runs anywhere, so nothing is left to kill

    def __init__(self, real: StepKind, feed: Feed) -> None:
        self.real, self.feed = real, feed
        for name in _COPIED:
            setattr(self, name, getattr(real, name))

    async def execute(self, ctx: StepContext) -> Done | Park:
        feed, real = self.feed, self.real
        note = feed.note(ctx)
        effect = real.rendered_effect(ctx)
        if effect is not None:
            return feed.effect(real, ctx, note, effect)
        if real.instant:  # set, end: pure, evaluated for real
            return await real.execute(ctx)
        recorded = feed.recorded(ctx.step, real, note)
        parked = await real.execute(ctx)  # pure (checked by the guard): its fields, its deadline
        if not real.waits:  # a timer: it is over at once
            note["fed"] = recorded is not None
            return Done(dict(recorded["outputs"]) if recorded else {"woke_at": rfc3339(ctx.clock.now())})
        if recorded is not None and recorded["status"] == _TIMED_OUT:
            note["fed"] = True
            return Park(ctx.clock.now(), parked.reason, parked.state)  # its deadline is already behind it
        return parked

    def settle(self, ctx: StepContext) -> Receipt | None:
        note = self.feed.note(ctx)
        recorded = self.feed.recorded(ctx.step, self.real, note)
        if recorded is None or recorded["status"] == _TIMED_OUT:
            return None  # no answer: the step waits, and the replay stops here
        note["fed"] = True
        return self.real.replay_answer(recorded)

    async def wake(self, ctx: StepContext) -> Done | Expired:
        recorded = self.feed.recorded(ctx.step, self.real, self.feed.note(ctx))
        return Expired((recorded or {}).get("error") or "timed out, as recorded")

    def receive(self, ctx: StepContext, message: dict[str, Any]) -> Receipt:
        return self.real.receive(ctx, message)

    def rewind_to(self, step: Step, state: dict[str, Any]) -> str | None:
        return self.real.rewind_to(step, state)

    def mint_token(self, step: Step) -> str | None:
        # a stand-in, the same in every pass: a replay never hands out a URL anyone could call
        return f"replay-{step.id}" if self.real.mint_token(step) is not None else None

    def leftovers(self, run: dict[str, Any], flow: Flow, event: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    async def kill_leftover(self, request: dict[str, Any], *, config: Any, draft: bool,
                            pools: Pools) -> dict[str, Any]:
        raise StepFailed("a replay leaves nothing behind to kill", retryable=False)

    def unused(self, run: dict[str, Any], step_id: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def announce(self, run: dict[str, Any], step_id: str, event: dict[str, Any]) -> tuple[str, str] | None:
        return None

    def parse_payload(self, body: bytes, schema: dict | None) -> Any:
        return self.real.parse_payload(body, schema)
