"""The daemon's event listeners: an ordered list of small ones, each contained.

The engine tells the daemon of every event it records (after it is written). Each
listener does one job; they run in order, and one that raises is logged with its name
while the others still run, so a bug in metrics never keeps a run's timers or
announcements from happening.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from runner.daemon.inbox import Inbox
from runner.daemon.metrics import Metrics
from runner.status import EventType

log = logging.getLogger(__name__)
Listener = Callable[[dict[str, Any], dict[str, Any]], None]


class Listeners:
    def __init__(self, listeners: list[tuple[str, Listener]]) -> None:
        self.listeners = list(listeners)

    def __call__(self, run: dict[str, Any], event: dict[str, Any]) -> None:
        for name, listener in self.listeners:
            try:
                listener(run, event)
            except Exception:
                log.exception("the %s listener failed on %s of run %s", name, event.get("type"), run.get("id"),
                              extra={"event": "listener_failed", "listener": name, "run_id": run.get("id")})

    def names(self) -> list[str]:
        return [name for name, _ in self.listeners]


def inbox_consumption(inbox: Inbox) -> Listener:
    """A callback the run recorded (or a run that ended: late answers are not kept) leaves the inbox."""

    def consume(run: dict[str, Any], event: dict[str, Any]) -> None:
        if event["type"] == EventType.CALLBACK_RECEIVED:
            inbox.consumed(run["id"], event["step"])
        elif event["type"] == EventType.RUN_FINISHED:
            for step_id in run.get("callbacks") or {}:
                inbox.consumed(run["id"], step_id)

    return consume


def metrics_counting(metrics: Metrics) -> Listener:
    """Runs that ended and step visits that ended, by status."""

    def count(run: dict[str, Any], event: dict[str, Any]) -> None:
        if event["type"] == EventType.RUN_FINISHED:
            metrics.runs_finished.labels(flow=run["flow"], status=event["status"]).inc()
        elif event["type"] == EventType.STEP_FINISHED:
            metrics.steps_finished.labels(status=event["status"]).inc()

    return count
