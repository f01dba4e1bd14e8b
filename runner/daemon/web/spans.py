"""A run's history as spans of time: what the timeline draws and a text view can list.

From the events of runner.runs.events: every attempt of a step is a span of
work from its `step_started` to where it ended (`step_finished`,
`step_retrying`, `step_interrupted`, or the run's end); a `step_waiting`
turns the rest of that attempt into a wait; the pause between a failed attempt
and the next is a backoff. Point events (a skip, a decision, a callback, a
jump) are marks. Spans still going are cut at `now` and say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runner.status import EventType, StepStatus
from runner.timeutil import parse_rfc3339

WORK, WAIT, BACKOFF = "work", "wait", "backoff"
INTERRUPTED = "interrupted"  # not a step status: how an attempt cut short by a restart ended


@dataclass
class Span:
    """One stretch of a step's time; `status` is how its attempt ended, or running/waiting while open."""

    step: str
    kind: str  # WORK, WAIT or BACKOFF
    start: datetime
    end: datetime
    attempt: int
    visit: int  # 1, or more when a jump or a rewind ran the step again
    status: str
    open: bool = False
    detail: str | None = None  # the error, or what a wait waits for
    deadline: datetime | None = None  # a wait's wake-up, a backoff's next attempt


@dataclass(frozen=True)
class Mark:
    """A moment on a step's row: `kind` is skipped, decision, callback or jump."""

    step: str
    kind: str
    at: datetime
    label: str
    value: str = ""  # the decision, or the step a jump goes to


@dataclass
class History:
    steps: list[str]
    spans: list[Span] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    finished: bool = False


def history(run: dict[str, Any], events: list[dict[str, Any]], now: datetime) -> History:
    """The spans and marks of `run` from its `events`, open ones cut at `now`."""
    if not events:
        return _from_record(run, now)
    builder = _Builder(_step_order(run, events))
    for event in events:
        builder.apply(event)
    return builder.close(now)


def _step_order(run: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    created = next((e for e in events if e.get("type") == EventType.RUN_CREATED), None)
    order = list((created or {}).get("run", {}).get("step_ids") or run.get("steps") or {})
    for event in events:
        if event.get("step") and event["step"] not in order:
            order.append(event["step"])
    return order


class _Builder:
    def __init__(self, steps: list[str]) -> None:
        self.result = History(steps=steps)
        self.current: dict[str, list[Span]] = {}  # the spans of each step's attempt in progress
        self.backoff: dict[str, Span] = {}
        self.visits: dict[str, int] = {}

    def apply(self, event: dict[str, Any]) -> None:
        kind, step = event.get("type"), event.get("step")
        at = parse_rfc3339(event["at"])
        result = self.result
        result.start = result.start or at
        result.end = at
        if kind == EventType.STEP_STARTED:
            self._end_backoff(step, at)
            self._end_attempt(step, at, INTERRUPTED, None)  # a restart that left no event of its own
            attempt = int(event.get("attempt") or 1)
            if attempt == 1:
                self.visits[step] = self.visits.get(step, 0) + 1
            span = Span(step, WORK, at, at, attempt, self.visits.get(step, 1), StepStatus.RUNNING.value)
            self.current[step] = [span]
            result.spans.append(span)
        elif kind == EventType.STEP_WAITING and self.current.get(step):
            work = self.current[step][-1]
            work.end = at
            wait = Span(step, WAIT, at, at, work.attempt, work.visit, StepStatus.WAITING.value,
                        detail=event.get("reason"), deadline=_moment(event.get("wake_at")))
            self.current[step].append(wait)
            result.spans.append(wait)
        elif kind == EventType.STEP_RETRYING:
            self._end_attempt(step, at, StepStatus.FAILED.value, event.get("error"))
            span = Span(step, BACKOFF, at, at, int(event.get("attempt") or 1), self.visits.get(step, 1),
                        "retrying", detail=event.get("error"), deadline=_moment(event.get("retry_at")))
            self.backoff[step] = span
            result.spans.append(span)
        elif kind == EventType.STEP_INTERRUPTED:
            self._end_attempt(step, at, INTERRUPTED, event.get("reason"))
        elif kind == EventType.STEP_FINISHED:
            self._end_backoff(step, at)
            if not self.current.get(step):  # ended without an attempt of its own (cancelled in a backoff)
                span = Span(step, WORK, at, at, 0, self.visits.get(step, 1), event.get("status") or "")
                self.current[step] = [span]
                result.spans.append(span)
            self._end_attempt(step, at, event.get("status") or StepStatus.FAILED.value, event.get("error"))
        elif kind == EventType.STEP_SKIPPED:
            result.marks.append(Mark(step, "skipped", at, f"skipped: {event.get('reason') or ''}".strip(": ")))
        elif kind == EventType.DECISION:
            who = event.get("by") or event.get("decided_by") or "someone"
            comment = f": {event['comment']}" if event.get("comment") else ""
            result.marks.append(Mark(step, "decision", at, f"{event.get('decision')} by {who}{comment}",
                                     value=str(event.get("decision") or "")))
        elif kind == EventType.CALLBACK_RECEIVED:
            result.marks.append(Mark(step, "callback", at, "callback received"))
        elif kind == EventType.JUMP and step:
            reason = f" ({event['reason']})" if event.get("reason") else ""
            result.marks.append(Mark(step, "jump", at, f"jump to {event.get('to')}{reason}",
                                     value=str(event.get("to") or "")))
        elif kind == EventType.RUN_FINISHED:
            status = event.get("status") or StepStatus.CANCELLED.value
            for open_step in list(self.current):
                self._end_attempt(open_step, at, status, event.get("error"))
            for open_step in list(self.backoff):
                self._end_backoff(open_step, at)
            result.finished = True

    def close(self, now: datetime) -> History:
        result = self.result
        if not result.finished:
            result.end = max(now, result.end or now)
            for spans in self.current.values():
                spans[-1].end, spans[-1].open = result.end, True  # the work before a wait is over
            for span in self.backoff.values():
                span.end, span.open = result.end, True
        return result

    def _end_attempt(self, step: str, at: datetime, status: str, detail: str | None) -> None:
        spans = self.current.pop(step, [])
        for span in spans:
            span.status = status
            span.detail = detail or span.detail
        if spans:
            spans[-1].end = at

    def _end_backoff(self, step: str, at: datetime) -> None:
        span = self.backoff.pop(step, None)
        if span is not None:
            span.end = at


def _from_record(run: dict[str, Any], now: datetime) -> History:
    """Without events (an old or partial record): one span per step from its started_at to its finished_at."""
    result = History(steps=list(run.get("steps") or {}))
    result.start = _moment(run.get("created_at"))
    result.finished = bool(run.get("finished_at"))
    result.end = _moment(run.get("finished_at")) or max(now, result.start or now)
    for step_id, state in (run.get("steps") or {}).items():
        started = _moment(state.get("started_at"))
        if state.get("status") == StepStatus.SKIPPED.value:
            result.marks.append(Mark(step_id, "skipped", _moment(state.get("finished_at")) or result.end, "skipped"))
        elif started is not None:
            finished = _moment(state.get("finished_at"))
            kind = WAIT if state.get("status") == StepStatus.WAITING.value else WORK
            result.spans.append(Span(step_id, kind, started, finished or result.end, int(state.get("attempts") or 1),
                                     1, state.get("status") or "", open=finished is None,
                                     detail=state.get("error"), deadline=_moment(state.get("wake_at"))))
    result.start = result.start or min((span.start for span in result.spans), default=now)
    return result


def _moment(text: Any) -> datetime | None:
    try:
        return parse_rfc3339(text) if text else None
    except ValueError:
        return None
