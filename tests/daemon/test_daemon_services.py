"""Units of the daemon's services: contained listeners, typed timers, who may decide."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import pytest

from runner.auth import Refusal, User, Users, may_decide
from runner.daemon.listeners import Listeners
from runner.daemon.timers import Reminder, ScheduleSlot, Timers, Wake
from runner.errors import Forbidden
from runner.timeutil import Clock

ALICE = User("alice", frozenset({"run", "approve"}), frozenset({"ops"}))
DAVE = User("dave", frozenset({"run"}), frozenset({"ops"}))


def waiting_run(started_by: str = "bob", allow_self: bool = False) -> dict:
    return {"id": "r1", "started_by": started_by, "steps": {"review": {
        "status": "waiting", "approvers": ["group:ops"], "allow_self_approval": allow_self}}}


def test_a_listener_that_raises_is_logged_by_name_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[str] = []

    def broken(run: dict, event: dict) -> None:
        raise RuntimeError("boom")

    listeners = Listeners([("first", lambda run, event: heard.append("first")), ("broken", broken),
                           ("last", lambda run, event: heard.append("last"))])
    with caplog.at_level(logging.ERROR, logger="runner.daemon.listeners"):
        listeners({"id": "r1"}, {"type": "step_finished"})
    assert heard == ["first", "last"]
    assert any(getattr(r, "listener", None) == "broken" and r.event == "listener_failed" for r in caplog.records)


def test_timers_hand_over_typed_values_in_time_order() -> None:
    timers = Timers(Clock())
    slot = datetime(2026, 1, 1, 9, tzinfo=timezone.utc)
    timers.add(30.0, ScheduleSlot("nightly", 0, slot))
    timers.add(10.0, Wake("r1"))
    timers.add(20.0, Reminder("r1", "review"))
    timers.add(10.0, Wake("r1"))  # the same deadline twice is fine
    assert [label for _, _, label in timers] and len(timers) == 4
    due: list = []

    async def fire() -> None:
        task = asyncio.create_task(timers.run(due.append))
        async with asyncio.timeout(5):
            while len(due) < 4:
                await asyncio.sleep(0)
        task.cancel()

    asyncio.run(fire())
    assert due == [Wake("r1"), Wake("r1"), Reminder("r1", "review"), ScheduleSlot("nightly", 0, slot)]
    timers.replace_schedules([(40.0, ScheduleSlot("nightly", 0, slot))])
    assert [label for _, _, label in timers] == ["schedule:0:2026-01-01T09:00:00+00:00"]


def test_may_decide_says_why_not_in_the_order_the_checks_are_made() -> None:
    users = Users()
    assert may_decide(DAVE).refusal is Refusal.NO_APPROVE_ROLE
    assert may_decide(ALICE)  # the role alone, before the run is read
    assert may_decide(ALICE, waiting_run(), "review", users)
    assert may_decide(ALICE, waiting_run(), "review", None).refusal is Refusal.NOT_AN_APPROVER
    own = may_decide(ALICE, waiting_run(started_by="alice"), "review", users)
    assert own.refusal is Refusal.OWN_RUN
    with pytest.raises(Forbidden, match="started this run and may not approve it"):
        own.check()
    assert may_decide(ALICE, waiting_run(started_by="alice"), "review", users, decision="reject")
    assert may_decide(ALICE, waiting_run(started_by="alice", allow_self=True), "review", users)
    outsider = User("erin", frozenset({"approve"}), frozenset({"finance"}))
    with pytest.raises(Forbidden, match=r"erin is not an approver of step 'review' \(approvers: group:ops\)"):
        may_decide(outsider, waiting_run(), "review", users).check()
