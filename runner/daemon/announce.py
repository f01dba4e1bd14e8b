"""Announcements: who is told when a run waits, when nobody answered in time, and a wait's reminder.

Each delivery is recorded in the run as a `notification` event (a reminder with
`reminder: true`, so a restart does not send it again) and counted in the metrics.
The text of a wait's announcement is its step kind's (`announce`).

Every notification about a step links to pages that exist (`NotificationLinks`):
the step on its run's page; a signed link to each `res://` artifact the step
shows; and, for a wait that takes decisions, one signed link per user who may
decide it ("decide as bob"), which opens the decision page as that user. The
signed links expire with the step's deadline, or sooner by `server.link_max_age`.
Their tokens go to webhook and smtp channels only: the recorded event keeps the
link titles, and the log channel prints each token cut to a marker.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any, Callable

from runner.auth import Users, may_decide
from runner.daemon.web.links import link_expiry, sign, sign_release, sign_resource
from runner.notify import Message, Notifier
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.status import EventType, StepStatus
from runner.steps.base import kind_named
from runner.timeutil import Clock, parse_rfc3339

log = logging.getLogger(__name__)
TIMEOUT_FOLLOW = {"fail": "the run ends timed_out", "reject": "treated as a rejection"}
RESOURCE = re.compile(r"res://([0-9a-f]{64})")
# how long an artifact link lasts when its step has no deadline ahead (a timeout notice): at most this
AGE_WITHOUT_DEADLINE = timedelta(days=1)
RELEASE_LINK_AGE = timedelta(days=7)  # a release pending approval has no deadline: its links last this, or link_max_age


class NotificationLinks:
    """The links of a notification about a step, and the tokens among them (which are never logged)."""

    def __init__(self, *, public_url: str, run_url: Callable[[str], str], users: Users,
                 secrets: Callable[[], list[str]], max_age: Callable[[], timedelta | None], clock: Clock) -> None:
        self.public_url, self.run_url, self.users = public_url, run_url, users
        self.secrets, self.max_age, self.clock = secrets, max_age, clock

    def of_step(self, run: dict[str, Any], step_id: str, spec: dict[str, Any], now: datetime, *,
                decisions: bool) -> tuple[list[dict[str, str]], tuple[str, ...]]:
        """(links, tokens): the step's own links (res:// ones signed), a decision link per user who may decide
        (with `decisions`, while the deadline is ahead), and the step on the run's page."""
        state = run["steps"].get(step_id) or {}
        deadline = state.get("deadline") or state.get("wake_at")
        deadline = parse_rfc3339(deadline) if deadline else None
        ahead = deadline is not None and deadline > now
        max_age = self.max_age()
        expires = (link_expiry(deadline, now, max_age) if ahead
                   else now + min(max_age or AGE_WITHOUT_DEADLINE, AGE_WITHOUT_DEADLINE))
        secrets, links, tokens = self.secrets(), [], []
        for link in state.get("links") or []:
            link, found = dict(link), RESOURCE.fullmatch(str(link.get("url") or ""))
            if found:
                token = sign_resource(secrets, run["id"], found.group(1), expires)
                link["href"] = f"{self.public_url}/ui/artifacts/{token}"
                tokens.append(token)
            links.append(link)
        for user in self.deciders(run, step_id, spec) if decisions and ahead else []:
            token = sign(secrets, run["id"], step_id, user, expires)
            links.append({"title": f"decide as {user}", "url": f"{self.public_url}/ui/link/{token}", "user": user})
            tokens.append(token)
        links.append({"title": "run", "url": f"{self.run_url(run['id'])}#step-{step_id}"})
        return links, tuple(tokens)

    def of_release(self, item: dict[str, Any], deciders: list[str]) -> tuple[list[dict[str, str]], tuple[str, ...]]:
        """(links, tokens) of a release pending approval: one signed link per user who may decide it, opening
        its decision page as that user, and the release on the releases page."""
        now = self.clock.now()
        expires = now + (self.max_age() or RELEASE_LINK_AGE)
        links, tokens = [], []
        for user in deciders:
            token = sign_release(self.secrets(), item["flow"], item["tag"], user, expires)
            links.append({"title": f"decide as {user}", "url": f"{self.public_url}/ui/release-link/{token}",
                          "user": user})
            tokens.append(token)
        links.append({"title": "releases", "url": f"{self.public_url}/ui/releases#flow-{item['flow']}"})
        return links, tuple(tokens)

    def artifact(self, run_id: str, sha256: str) -> tuple[str, str]:
        """(url, token): a signed link to one artifact of a run, for a message sent now (a notify step's)."""
        now = self.clock.now()
        max_age = self.max_age()
        expires = now + min(max_age or AGE_WITHOUT_DEADLINE, AGE_WITHOUT_DEADLINE)
        token = sign_resource(self.secrets(), run_id, sha256, expires)
        return f"{self.public_url}/ui/artifacts/{token}", token

    def deciders(self, run: dict[str, Any], step_id: str, spec: dict[str, Any]) -> list[str]:
        """The users who may decide the step now (`may_decide`, the one rule): its approvers, named or in a
        group, with the approve role; not the run's starter unless self-approval is allowed; not who approved."""
        approved = {a.get("by") for a in (run["steps"].get(step_id) or {}).get("approvals") or []}
        return sorted(user.name for user in self.users.by_hash.values()
                      if user.name not in approved and may_decide(user, run, step_id, self.users, spec=spec))


class Announcer:
    def __init__(self, *, engine: Engine, store: Store, notifier: Notifier, metrics: Any, clock: Clock,
                 timers: Any, runs: Any, spawn: Callable[[Any], None], links: NotificationLinks,
                 once: Callable[..., bool] = lambda key, lapse=None: True) -> None:
        self.engine, self.store, self.notifier, self.metrics, self.clock = engine, store, notifier, metrics, clock
        self.timers, self.runs, self._spawn, self.links = timers, runs, spawn, links
        self.once = once  # a reminder goes out from one daemon of several

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
        await self.notify(run, step_id, spec, subject, text)

    async def announce_timeout(self, run: dict, event: dict) -> None:
        step_id = event["step"]
        spec = self._step_spec(run["id"], step_id)
        follow = spec.get("on_timeout", "fail")
        what = TIMEOUT_FOLLOW.get(follow, f"going on at '{follow}'")
        await self.notify(run, step_id, spec, f"{run['flow']}: {step_id} timed out",
                          f"Run {run['id']} of {run['flow']}: nobody answered '{step_id}' in time "
                          f"({event.get('error')}); {what}.", decisions=False)

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
            if now < deadline and self.once(f"reminder:{run_id}:{step_id}:{state['remind_at']}"):
                await self.notify(run, step_id, spec, f"{run['flow']}: reminder for {step_id}",
                                  f"Run {run_id} still waits at '{step_id}'; the deadline is {state['wake_at']}.",
                                  reminder=True)
        finally:
            self.timers.reminder_done(run_id, step_id)

    async def notify(self, run: dict, step_id: str, spec: dict[str, Any], subject: str, text: str, *,
                     decisions: bool = True, **marks: Any) -> None:
        """Tell the step's `notify` channels; a wait that takes decisions adds a link per user who may decide."""
        channels = spec.get("notify") or []
        if not channels:
            return
        decisions = decisions and kind_named(spec["kind"]).takes_decisions
        links, tokens = self.links.of_step(run, step_id, spec, self.clock.now(), decisions=decisions)
        for channel in channels:
            message = Message(subject, text, links, run_id=run["id"], flow=run["flow"], step=step_id, private=tokens)
            delivery = await self.notifier.send(channel, message)
            self.metrics.notifications.labels(channel=channel, ok=str(delivery.ok).lower()).inc()
            # the titles of the links sent, never their tokens (a delivery's error is redacted by the notifier)
            await self._note(run["id"], EventType.NOTIFICATION, step=step_id, **delivery.to_dict(),
                             links=[link.get("title") or "" for link in links], **marks)

    async def _note(self, run_id: str, kind: str, **fields: Any) -> None:
        try:
            await self.runs.write(run_id, lambda: self.engine.note(run_id, kind, **fields))
        except Exception:
            log.exception("could not record %s for run %s", kind, run_id, extra={"run_id": run_id})
