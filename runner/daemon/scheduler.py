"""Schedules of live flows: plan each one's next slot as a timer, fire a slot once, across restarts.

A slot is claimed (fsynced, naming the run id it is about to create) before its run is
made; a claim a crash cut short gets its run at the next plan, under that id (see
`runner.daemon.triggers.ScheduleState`). A schedule looks up the live version each time
it fires; drafts never fire.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable

from runner.daemon.timers import ScheduleSlot, Timers
from runner.daemon.triggers import ScheduleState, next_slot, schedules
from runner.errors import NotFound
from runner.flows.inputs import resolve_inputs
from runner.releases.live import Resolution
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.timeutil import Clock

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, *, engine: Engine, store: Store, gitops: Any, clock: Clock, metrics: Any, timers: Timers,
                 schedule_run: Callable[[str], None], spawn: Callable[[Any], None], state: ScheduleState) -> None:
        self.engine, self.store, self.gitops, self.clock, self.metrics = engine, store, gitops, clock, metrics
        self.timers, self._schedule_run, self._spawn = timers, schedule_run, spawn
        self.state = state

    def live_changed(self, resolution: Resolution) -> None:
        """What is live changed (the ref watcher says): plan every schedule again."""
        self._spawn(self.plan())

    async def plan(self) -> None:
        """Timers for the next slot of every schedule of every live flow (a slot fires once).

        First the claims a crash cut short get their runs (see ScheduleState).
        """
        for name, index, slot, run_id in self.state.half_done():
            try:
                origin = await self.gitops.origin(name, None)
            except NotFound:
                origin = None
            except Exception:
                continue  # the repository cannot be read now: at the next plan
            self._create_for_slot(name, index, slot, run_id, origin)
        now = self.clock.now()
        planned = []
        for name in self.gitops.live_flows():
            try:
                flow = (await self.gitops.origin(name, None)).flow
            except Exception:
                continue
            for index, spec in schedules(flow):
                slot = self.state.first_due(name, index, spec, now)
                planned.append((slot.timestamp(), ScheduleSlot(name, index, slot)))
        self.timers.replace_schedules(planned)

    async def fire(self, due: ScheduleSlot) -> None:
        name, index, slot = due.flow, due.index, due.slot
        try:
            origin = await self.gitops.origin(name, None)
        except NotFound:
            return  # no longer live
        specs = dict(schedules(origin.flow))
        if origin.draft or index not in specs:
            return  # drafts never fire; the live version dropped this schedule
        following = next_slot(specs[index], slot)
        self.timers.add(following.timestamp(), ScheduleSlot(name, index, following))
        run_id = self.store.new_run_id(self.clock.now())
        if not self.state.claim(name, index, slot, run_id):
            return  # already fired (before a restart, or by an earlier plan)
        self._create_for_slot(name, index, slot, run_id, origin)

    def _create_for_slot(self, name: str, index: int, slot: datetime, run_id: str, origin: Any) -> None:
        """Create the run a claimed slot names, once: a run already there is only resumed."""
        if self.store.run_exists(run_id):
            self.state.created(name, index)
            self._schedule_run(run_id)
            return
        try:
            if origin is None or origin.draft or index not in dict(schedules(origin.flow)):
                log.warning("the slot %s of %s is not fired: the flow or its schedule is no longer live",
                            slot.isoformat(), name, extra={"event": "schedule_dropped"})
                return
            values = resolve_inputs(origin.flow, {})
            self.engine.create_run(origin.flow, values, started_by="schedule", draft=False, ref=origin.ref,
                                   version=origin.version, commit=origin.commit, run_id=run_id)
        except Exception:
            log.exception("schedule of %s could not start a run", name, extra={"event": "schedule_failed"})
            return
        finally:
            self.state.created(name, index)  # done, or reported: never retried into a second run
        self.metrics.runs_started.labels(flow=name, trigger="schedule").inc()
        self._schedule_run(run_id)
