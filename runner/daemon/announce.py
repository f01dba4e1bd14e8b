"""Announcements: who is told when a run waits, when nobody answered in time, and a wait's reminder.

Each delivery is recorded in the run as a `notification` event (a reminder with
`reminder: true`, so a restart does not send it again) and counted in the metrics.
The text of a wait's announcement is its step kind's (`announce`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from runner.notify import Message, Notifier
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.status import EventType, StepStatus
from runner.steps.base import kind_named
from runner.timeutil import Clock, parse_rfc3339

log = logging.getLogger(__name__)
TIMEOUT_FOLLOW = {"fail": "the run ends timed_out", "reject": "treated as a rejection"}


class Announcer:
    def __init__(self, *, engine: Engine, store: Store, notifier: Notifier, metrics: Any, clock: Clock,
                 timers: Any, runs: Any, spawn: Callable[[Any], None], public_url: str,
                 run_url: Callable[[str], str]) -> None:
        self.engine, self.store, self.notifier, self.metrics, self.clock = engine, store, notifier, metrics, clock
        self.timers, self.runs, self._spawn, self.public_url, self.run_url = timers, runs, spawn, public_url, run_url

    def on_event(self, run: dict[str, Any], event: dict[str, Any]) -> None:
        """Listener: a wait that began is announced; a wait with a deadline that timed out too."""
        kind = event["type"]
        if kind == EventType.STEP_FINISHED:
            if event["status"] == StepStatus.TIMED_OUT and run["steps"][event["step"]].get("deadline"):
                self._spawn(self.announce_timeout(dict(run), event))
        elif kind == EventType.STEP_WAITING:
            self._spawn(self.announce_wait(dict(run), event))

    def _step_spec(self, run_id: str, step_id: str) -> dict[str, Any]:
        return self.engine.flow_of(run_id).step(step_id).spec

    async def announce_wait(self, run: dict, event: dict) -> None:
        step_id = event["step"]
        spec = self._step_spec(run["id"], step_id)
        announcement = kind_named(spec["kind"]).announce(run, step_id, event)  # its reminder: Timers.watch
        if announcement is None:
            return
        subject, text = announcement
        await self.notify(run, step_id, spec.get("notify") or [], subject, text)

    async def announce_timeout(self, run: dict, event: dict) -> None:
        step_id = event["step"]
        spec = self._step_spec(run["id"], step_id)
        follow = spec.get("on_timeout", "fail")
        what = TIMEOUT_FOLLOW.get(follow, f"going on at '{follow}'")
        await self.notify(run, step_id, spec.get("notify") or [], f"{run['flow']}: {step_id} timed out",
                          f"Run {run['id']} of {run['flow']}: nobody answered '{step_id}' in time "
                          f"({event.get('error')}); {what}.")

    async def remind(self, run_id: str, step_id: str) -> None:
        """Send a wait's reminder once: recorded as notifications with `reminder: true` (the step's
        `reminded_at`), so a restart does not send it again. One due while the daemon was down goes
        out at start-up if the deadline is still ahead; after the deadline the timeout is the news."""
        run = self.store.read_run(run_id)
        state = run["steps"].get(step_id, {})
        if (state.get("status") != StepStatus.WAITING or state.get("reminded_at") or not state.get("remind_at")
                or not state.get("wake_at")):
            self.timers.reminder_done(run_id, step_id)
            return
        spec = self._step_spec(run_id, step_id)
        deadline, now = parse_rfc3339(state["wake_at"]), self.clock.now()
        if now < parse_rfc3339(state["remind_at"]):
            return  # the timer of an earlier wait of this step: the current one has its own
        try:
            if now < deadline:
                await self.notify(run, step_id, spec.get("notify") or [], f"{run['flow']}: reminder for {step_id}",
                                  f"Run {run_id} still waits at '{step_id}'; the deadline is {state['wake_at']}.",
                                  reminder=True)
        finally:
            self.timers.reminder_done(run_id, step_id)

    async def notify(self, run: dict, step_id: str, channels: list[str], subject: str, text: str,
                     **marks: Any) -> None:
        links = [*self._shown_links(run, step_id), {"title": "run", "url": self.run_url(run["id"])}]
        for channel in channels:
            message = Message(subject, text, links, run_id=run["id"], flow=run["flow"], step=step_id)
            delivery = await self.notifier.send(channel, message)
            self.metrics.notifications.labels(channel=channel, ok=str(delivery.ok).lower()).inc()
            await self._note(run["id"], EventType.NOTIFICATION, step=step_id, **delivery.to_dict(), **marks)

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
        async with self.runs.lock(run_id):
            try:
                self.engine.note(run_id, kind, **fields)
            except Exception:
                log.exception("could not record %s for run %s", kind, run_id, extra={"run_id": run_id})
