"""Start-up: find the active runs as their logs say, and tell the parked ones from those to resume.

A snapshot a crash left behind its log is rewritten first (a run that ended after it was
parked must not look parked), and what a dead writer left in a run folder (temp files,
attempts' work folders) is removed. A run folder with no event at all is a crash before
the run was created (nothing acknowledged): it is removed.
"""

from __future__ import annotations

import logging
from typing import Any

from runner.daemon.inbox import Inbox
from runner.errors import FlowInvalid, IntegrityError, NotFound, RunLocked
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.status import StepStatus, is_terminal
from runner.timeutil import Clock, parse_rfc3339

log = logging.getLogger(__name__)


def active_runs(engine: Engine, store: Store) -> list[dict[str, Any]]:
    """The active runs, each as its log says (repaired where its snapshot lags or a writer left leftovers)."""
    active = []
    for found in store.scan():
        run = found.snapshot
        if found.lags or found.leftovers:
            try:
                run = engine.repair(found.run_id)
            except RunLocked:  # a `run --local` process is advancing it: its record as it stands
                run = store.read_run(found.run_id)
            except NotFound:  # no event at all: a crash before the run was created (nothing acknowledged)
                _discard_unborn(store, found.run_id)
                continue
            except (IntegrityError, FlowInvalid) as exc:
                log.warning("run %s cannot be resumed: %s", found.run_id, getattr(exc, "message", exc),
                            extra={"event": "run_unreadable", "run_id": found.run_id})
                continue
        if run is not None and not is_terminal(run["status"]):
            active.append(run)
    return active


def _discard_unborn(store: Store, run_id: str) -> None:
    try:
        if store.discard_unborn(run_id):
            log.info("removed run folder %s: a crash came before its run was created", run_id,
                     extra={"event": "run_discarded", "run_id": run_id})
    except (RunLocked, NotFound, OSError):
        pass  # its creator is still at work, or it is gone already


def parked_quietly(run: dict[str, Any], clock: Clock, inbox: Inbox) -> bool:
    """A waiting run whose deadline is ahead and whose answer has not come needs only its timer."""
    step = run.get("current_step")
    state = run["steps"].get(step or "", {})
    if state.get("status") != StepStatus.WAITING or not state.get("wake_at") or state.get("decision"):
        return False
    if step in (run.get("callbacks_received") or {}):
        return False  # answered before a crash cut the step short: settle it now
    return not (parse_rfc3339(state["wake_at"]) <= clock.now() or inbox.get(run["id"], step))
