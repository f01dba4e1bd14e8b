"""Kills of work a run's steps left running on hosts (ssh steps with `detach: true`), as the run asks.

A run that ends badly (or a callback step that times out) records a
`detached_kill_requested`; the daemon carries it out through the kind of the step
that started the work (runner.runs.kills) and records `detached_killed`. The
requests a crash or a stop left outstanding are carried out at start-up, as each
run's record says.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from runner.errors import NotFound, StoreError
from runner.runs import kills
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.status import EventType
from runner.steps.base import Pools

log = logging.getLogger(__name__)
KILL_CLAIM_SECONDS = 120.0  # a daemon that died carrying out a kill: another takes it up after this


class DetachedKills:
    def __init__(self, *, engine: Engine, store: Store, config: Any, runs: Any, pools: Pools,
                 spawn: Callable[[Any], None], once: Callable[..., bool] = lambda key, lapse=None: True) -> None:
        self.engine, self.store, self.config, self.runs, self._spawn = engine, store, config, runs, spawn
        self.once = once  # a kill is carried out by one daemon of several
        self.pools = pools
        self._stopping: set[tuple[str, str]] = set()  # detached workers being killed now (run, job)

    def on_event(self, run: dict[str, Any], event: dict[str, Any]) -> None:
        """Listener: a kill request recorded with the run's end (or a callback's timeout) is carried out."""
        if event["type"] == EventType.DETACHED_KILL_REQUESTED:
            self._spawn(self.stop_detached(run["id"], bool(run.get("draft")), {**event, "tries": 0}))

    async def stop_detached(self, run_id: str, draft: bool, request: dict[str, Any]) -> None:
        """Carry out a recorded kill request: a worker left behind by a run that ended badly."""
        key = (run_id, request["job"])
        if key in self._stopping:
            return  # already under way (the start-up sweep and a new request)
        # a kill that failed stays outstanding, and the claim lapses, so a later sweep tries it again
        if not self.once(f"kill:{run_id}:{request['job']}", lapse=KILL_CLAIM_SECONDS):
            return  # another daemon of the same database is carrying it out
        self._stopping.add(key)
        try:
            killed = await kills.kill(self.engine.flow_of(run_id), request, config=self.config, draft=draft,
                                      pools=self.pools)
            try:
                run = await self.runs.write(run_id, lambda: self.engine.note(run_id, EventType.DETACHED_KILLED,
                                                                             **killed))
            except Exception:
                log.exception("could not record detached_killed for run %s", run_id, extra={"run_id": run_id})
                return
            if not kills.outstanding(run):
                self.store.kills_settled(run_id)
        finally:
            self._stopping.discard(key)

    def sweep(self) -> int:
        """At start-up: carry out the kill requests a crash or a stop left outstanding (each run's record says)."""
        swept = 0
        for run_id in self.store.runs_with_kills():
            try:
                run = self.store.read_run(run_id)
            except (NotFound, StoreError):
                self.store.kills_settled(run_id)
                continue
            requests = kills.outstanding(run)
            if not requests:
                self.store.kills_settled(run_id)  # noted just before a crash that came before the requests
            for request in requests:
                self._spawn(self.stop_detached(run_id, bool(run.get("draft")), request))
                swept += 1
        return swept
