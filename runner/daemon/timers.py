"""The daemon's one timer heap, of typed timer values.

A parked run is only an entry here (its `Wake`), rebuilt from disk at start-up, where a
deadline that passed while the daemon was down fires at once. A wait with
`remind_before` also gets a `Reminder`; each schedule of a live flow has the
`ScheduleSlot` it waits for. What a due timer sets off is the daemon's business: the
loop hands each one to its `on_due`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Union

from runner.timeutil import Clock, parse_rfc3339
from runner.status import RunStatus

IDLE_SECONDS = 3600.0  # with no timer at all, look again after this long
LONGEST_SLEEP = 60.0  # never sleep longer than this (a clock that jumps is noticed within it)


@dataclass(frozen=True)
class Wake:
    """A parked run's deadline: advance it (its step's kind says what a timeout means)."""

    run_id: str

    @property
    def key(self) -> str:
        return self.run_id

    @property
    def label(self) -> str:
        return "wake"


@dataclass(frozen=True)
class Reminder:
    """A wait's `remind_before`: send its reminder once."""

    run_id: str
    step_id: str

    @property
    def key(self) -> str:
        return self.run_id

    @property
    def label(self) -> str:
        return f"remind:{self.step_id}"


@dataclass(frozen=True)
class ScheduleSlot:
    """The next slot of a live flow's schedule (its trigger `index`): fire it once."""

    flow: str
    index: int
    slot: datetime

    @property
    def key(self) -> str:
        return self.flow

    @property
    def label(self) -> str:
        return f"schedule:{self.index}:{self.slot.isoformat()}"


Timer = Union[Wake, Reminder, ScheduleSlot]


class Timers:
    """A heap of (when, key, label, seq, timer): ordered by time, then as the timers' keys and labels sort."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, str, str, int, Timer]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self._reminders: dict[tuple[str, str], str] = {}  # (run, step) -> the remind_at its timer is for

    def __len__(self) -> int:
        return len(self._heap)

    def entries(self) -> list[tuple[float, str, str]]:
        """(when, key, label) of every timer, in heap order: what health and tests look at."""
        return [(when, key, label) for when, key, label, _, _ in self._heap]

    def __iter__(self) -> Iterator[tuple[float, str, str]]:
        return iter(self.entries())

    def add(self, when: float, timer: Timer) -> None:
        heapq.heappush(self._heap, (when, timer.key, timer.label, next(self._order), timer))
        self._changed.set()

    def replace_schedules(self, planned: list[tuple[float, ScheduleSlot]]) -> None:
        """Every schedule timer replaced at once (no await in between), so replans never pile up."""
        kept = [entry for entry in self._heap if not isinstance(entry[4], ScheduleSlot)]
        self._heap = kept + [(when, slot.key, slot.label, next(self._order), slot) for when, slot in planned]
        heapq.heapify(self._heap)
        self._changed.set()

    # ---- a parked run's timers -------------------------------------------------------

    def watch(self, run: dict[str, Any]) -> None:
        """Register the parked step's deadline (and reminder) in the heap."""
        if run["status"] != RunStatus.WAITING or not run.get("current_step"):
            return
        state = run["steps"][run["current_step"]]
        if state.get("wake_at"):
            self.add(parse_rfc3339(state["wake_at"]).timestamp(), Wake(run["id"]))
            self._plan_reminder(run, run["current_step"], state)

    def _plan_reminder(self, run: dict[str, Any], step_id: str, state: dict[str, Any]) -> None:
        """The reminder timer of a wait with `remind_before` (its `remind_at`) not yet reminded, once per wait.

        From every place a parked run is watched, start-up included, so a restart keeps it;
        one whose time passed while the daemon was down fires at once.
        """
        if not state.get("remind_at") or state.get("reminded_at"):
            return
        if self._reminders.get((run["id"], step_id)) == state["remind_at"]:
            return  # its timer is in the heap already
        self._reminders[(run["id"], step_id)] = state["remind_at"]
        self.add(parse_rfc3339(state["remind_at"]).timestamp(), Reminder(run["id"], step_id))

    def reminder_done(self, run_id: str, step_id: str) -> None:
        """The step's reminder went out (or is no longer due): a later wait of it may plan its own."""
        self._reminders.pop((run_id, step_id), None)

    # ---- the loop ------------------------------------------------------------------------

    async def run(self, on_due: Callable[[Timer], None]) -> None:
        """Hand every timer that is due to `on_due`, forever (the daemon's supervised `timers` task)."""
        while True:
            now = self.clock.now().timestamp()
            while self._heap and self._heap[0][0] <= now:
                on_due(heapq.heappop(self._heap)[4])
            delay = self._heap[0][0] - now if self._heap else IDLE_SECONDS
            self._changed.clear()
            await self.clock.wait(self._changed, min(delay, LONGEST_SLEEP))
