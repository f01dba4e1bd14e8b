"""Cron schedules (runner/triggers.py, Daemon._plan_schedules / _fire_schedule): once per slot, exactly.

The daemon runs in the test's own event loop (built as `signoff serve` builds it,
over a real git repository with a release tag and a real data directory) on a
ManualClock: its timers fire when the test moves the clock, so a day of
schedule takes milliseconds. A crash is a data directory left half-done by the
product's own first step (the claim), as a kill -9 right after it leaves it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from daemon_support import InProcessDaemon
from support import ManualClock, eventually, simple_flow

from runner.runs.files import FileStore
from runner.daemon.triggers import ScheduleState, next_slot, previous_slot
from postgres_support import files_only

UTC = timezone.utc
NEW_YORK = {"cron": "30 1 * * *", "timezone": "America/New_York"}
NIGHTLY = simple_flow("nightly", "tick", extra="triggers:\n  - schedule: {cron: '30 1 * * *', "
                                              "timezone: America/New_York}\n")
# 2026-11-01 is the fall-back day in New York: 01:30 happens at 05:30Z (EDT) and again at 06:30Z (EST)
FIRST_0130, SECOND_0130 = datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """A released flows repository with the nightly flow, a config naming it and a data dir."""
    return InProcessDaemon.lay_out(tmp_path, {"nightly": NIGHTLY}, tag="v1.0.0")


class InProcess(InProcessDaemon):
    """The in-process daemon on `world`, entered once its schedule timer is planned."""

    def __init__(self, root: Path, clock: ManualClock) -> None:
        super().__init__(root, clock)
        self.store = FileStore(self.data)

    async def __aenter__(self) -> "InProcess":
        daemon = await super().__aenter__()
        await eventually(lambda: any(w.startswith("schedule:") for _, _, w in daemon._timers), 10,
                         "the schedule's timer to be planned")
        return self

    def runs(self) -> list[dict]:
        return sorted(self.store.list_runs(flow="nightly", limit=1000), key=lambda run: run["created_at"])

    async def ended(self, count: int) -> list[dict]:
        """The nightly runs once `count` of them have ended."""
        return await eventually(lambda: (lambda runs: runs if len(runs) >= count and all(
            r["status"] == "succeeded" for r in runs) else None)(self.runs()), 10, f"{count} finished runs")


def created(runs: list[dict]) -> list[str]:
    return [run["created_at"] for run in runs]


# ---- the slot arithmetic -------------------------------------------------------------


def test_a_daily_slot_in_the_repeated_hour_of_a_fall_back_day_is_one_slot() -> None:
    slots = [next_slot(NEW_YORK, utc(2026, 10, 31, 12))]
    for _ in range(2):
        slots.append(next_slot(NEW_YORK, slots[-1]))
    assert [s.astimezone(UTC) for s in slots] == [FIRST_0130, utc(2026, 11, 2, 6, 30), utc(2026, 11, 3, 6, 30)]
    assert next_slot(NEW_YORK, FIRST_0130 + timedelta(minutes=5)).astimezone(UTC) == utc(2026, 11, 2, 6, 30)
    # from inside the repeated hour, the latest slot is the 01:30 that already fired (for catch-up)
    assert previous_slot(NEW_YORK, SECOND_0130 + timedelta(minutes=15)).astimezone(UTC) == FIRST_0130


def test_an_every_20_minutes_schedule_fires_once_per_wall_clock_time_on_a_fall_back_day() -> None:
    spec = {"cron": "*/20 * * * *", "timezone": "America/New_York"}
    moment, seen = utc(2026, 11, 1, 4, 50), []
    for _ in range(6):
        moment = next_slot(spec, moment)
        seen.append(moment.astimezone(UTC).strftime("%H:%M"))
    assert seen == ["05:00", "05:20", "05:40", "07:00", "07:20", "07:40"], "01:00-01:40 EST repeat EDT's"


def test_catch_up_inside_the_repeated_hour_does_not_fire_the_slot_again(tmp_path: Path) -> None:
    state = ScheduleState(tmp_path)
    spec = {**NEW_YORK, "catchup": "2h"}
    assert state.claim("nightly", 0, FIRST_0130, "20261101t053000z-00000aaa")
    restarted_at = SECOND_0130 + timedelta(minutes=15)  # the daemon was down over the second 01:30
    assert state.first_due("nightly", 0, spec, restarted_at).astimezone(UTC) == utc(2026, 11, 2, 6, 30)


# ---- through the daemon ---------------------------------------------------------------


@files_only
def test_a_daily_cron_fires_once_on_the_fall_back_day(world: Path) -> None:
    clock = ManualClock(utc(2026, 10, 30, 12))

    async def scenario() -> list[dict]:
        async with InProcess(world, clock) as daemon:
            clock.set(utc(2026, 10, 31, 5, 30))
            await daemon.ended(1)
            clock.set(FIRST_0130)
            await daemon.ended(2)
            clock.set(SECOND_0130)  # the wall clock shows 01:30 again
            clock.set(utc(2026, 11, 2, 6, 30))
            # the timer of Nov 2 is planned only after the slot before it: its run is the last one
            await eventually(lambda: "2026-11-02T06:30:00.000000Z" in created(daemon.runs()), 10, "Nov 2's run")
            return await daemon.ended(3)

    runs = asyncio.run(scenario())
    assert created(runs) == ["2026-10-31T05:30:00.000000Z", "2026-11-01T05:30:00.000000Z",
                             "2026-11-02T06:30:00.000000Z"], "one run per day, the first 01:30 on Nov 1"
    assert {run["started_by"] for run in runs} == {"schedule"}


def claim_cut_short(world: Path, clock: ManualClock, slot: datetime) -> str:
    """What a kill -9 right after the claim leaves: the slot claimed for a run id, no run. The run id."""
    run_id = FileStore(world / "data").new_run_id(clock.now())
    assert ScheduleState(world / "data").claim("nightly", 0, slot, run_id)
    return run_id


@files_only
@pytest.mark.parametrize("left", ["no run directory", "an empty run directory", "a torn run_created line"])
def test_a_slot_claimed_before_a_crash_gets_its_run_at_start_up_and_only_one(world: Path, left: str) -> None:
    clock = ManualClock(FIRST_0130 + timedelta(seconds=1))
    run_id = claim_cut_short(world, clock, FIRST_0130)
    run_dir = world / "data" / "runs" / run_id
    if left != "no run directory":
        run_dir.mkdir(parents=True)
        (run_dir / "flow.yaml").write_text(NIGHTLY)
        (run_dir / "events.jsonl").write_bytes(b'{"type":"run_created","at":"2026-11' if "torn" in left else b"")

    async def start_twice() -> tuple[list[dict], list[dict]]:
        async with InProcess(world, clock) as daemon:
            first = await daemon.ended(1)
        clock.set(clock.now() + timedelta(hours=2))  # past the repeated 01:30 too
        async with InProcess(world, clock) as daemon:
            await eventually(lambda: not daemon.daemon._tasks, 10, "nothing left to advance")
            return first, daemon.runs()

    first, second = asyncio.run(start_twice())
    assert [run["id"] for run in first] == [run_id], "the claimed slot's run, under the id the claim names"
    assert [run["id"] for run in second] == [run_id], "a second start creates nothing more"
    claims = json.loads((world / "data" / "schedules.json").read_text())
    assert datetime.fromisoformat(claims["nightly#0"].pop("slot")) == FIRST_0130
    assert claims["nightly#0"] == {"run": run_id, "creating": False}
    assert FileStore(world / "data").verify(run_id).ok


@files_only
def test_a_claim_whose_run_was_created_is_not_created_again(world: Path) -> None:
    clock = ManualClock(FIRST_0130 - timedelta(minutes=1))

    async def fire_then_restart() -> tuple[list[dict], list[dict]]:
        async with InProcess(world, clock) as daemon:
            clock.set(FIRST_0130)
            first = await daemon.ended(1)
        path = world / "data" / "schedules.json"
        claims = json.loads(path.read_text())
        claims["nightly#0"]["creating"] = True  # a kill -9 after run_created, before the claim was closed
        path.write_text(json.dumps(claims))
        async with InProcess(world, clock) as daemon:
            await eventually(lambda: not ScheduleState(world / "data").half_done(), 10, "the claim closed")
            return first, daemon.runs()

    first, second = asyncio.run(fire_then_restart())
    assert len(first) == 1 and [run["id"] for run in second] == [first[0]["id"]]

