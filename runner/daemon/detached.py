"""Kills of detached remote jobs (ssh steps with `detach: true`) that a run asked for, and ssh at stop.

A run that ends badly (or a callback step that times out) records a
`detached_kill_requested`; the daemon carries it out and records `detached_killed`. The
requests a crash or a stop left outstanding are carried out at start-up, as each
run's record says. These are ssh's own code paths (runner.steps.ssh), kept here until
step kinds carry their own hooks.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from runner.errors import NotFound, StoreError
from runner.runs.engine import Engine
from runner.runs.store import Store

log = logging.getLogger(__name__)
SSH_STEP_MODULE = "runner.steps.ssh.step"


class DetachedKills:
    def __init__(self, *, engine: Engine, store: Store, config: Any, runs: Any,
                 spawn: Callable[[Any], None]) -> None:
        self.engine, self.store, self.config, self.runs, self._spawn = engine, store, config, runs, spawn
        self._stopping: set[tuple[str, str]] = set()  # detached workers being killed now (run, job)

    def on_event(self, run: dict[str, Any], event: dict[str, Any]) -> None:
        """Listener: a kill request recorded with the run's end (or a callback's timeout) is carried out."""
        if event["type"] == "detached_kill_requested":
            self._spawn(self.stop_detached(run["id"], bool(run.get("draft")), {**event, "tries": 0}))

    async def stop_detached(self, run_id: str, draft: bool, request: dict[str, Any]) -> None:
        """Carry out a recorded kill request (runner.steps.ssh.jobs): a worker left behind by a run that ended badly."""
        from runner.steps.ssh import jobs as sshjobs

        key = (run_id, request["job"])
        if key in self._stopping:
            return  # already under way (the start-up sweep and a new request)
        self._stopping.add(key)
        try:
            killed = await sshjobs.kill(self.config, request, draft=draft)
            async with self.runs.lock(run_id):
                try:
                    run = self.engine.note(run_id, "detached_killed", **killed)
                except Exception:
                    log.exception("could not record detached_killed for run %s", run_id, extra={"run_id": run_id})
                    return
                if not sshjobs.outstanding(run):
                    self.store.kills_settled(run_id)
        finally:
            self._stopping.discard(key)

    def sweep(self) -> int:
        """At start-up: carry out the kill requests a crash or a stop left outstanding (each run's record says)."""
        from runner.steps.ssh import jobs as sshjobs

        swept = 0
        for run_id in self.store.runs_with_kills():
            try:
                run = self.store.read_run(run_id)
            except (NotFound, StoreError):
                self.store.kills_settled(run_id)
                continue
            requests = sshjobs.outstanding(run)
            if not requests:
                self.store.kills_settled(run_id)  # noted just before a crash that came before the requests
            for request in requests:
                self._spawn(self.stop_detached(run_id, bool(run.get("draft")), request))
                swept += 1
        return swept


def close_ssh_connections() -> None:
    """At stop: close ssh's pooled idle connections, if ssh was used at all in this process."""
    if SSH_STEP_MODULE in sys.modules:
        sys.modules[SSH_STEP_MODULE].close_connections()
