"""Work a run's steps left running elsewhere, and the kills that stop it.

A kind that `leaves_work` (ssh: detached jobs on hosts) turns an event into
kill requests (`leftovers`); the engine records them (`detached_kill_requested`)
in the same batch as that event, and the run's record keeps them under `kills`
(runner.runs.events). Whoever owns the engine carries them out through the
kind of the step that started the work (`kill_leftover`) and records each
result (`detached_killed`): the daemon as the request is recorded and, for
requests a crash or a stop left outstanding, at start-up; `run --local`, which
has no daemon, as its run ends (`carry_out`).
"""

from __future__ import annotations

from typing import Any

from runner.flows.model import Flow
from runner.status import EventType
from runner.steps.base import Pools, StepKind, kind_named


def outstanding(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's kill requests that are not done yet."""
    return [{**kill, "job": name} for name, kill in (run.get("kills") or {}).items() if not kill.get("done_at")]


def kind_for(flow: Flow, request: dict[str, Any]) -> StepKind:
    """The kind that stops what `request` names: the kind of the step that started it."""
    named = [s.kind for s in flow.steps if s.id == request.get("step")]
    kinds = named or [s.kind for s in flow.steps]  # older requests name no step
    for kind in map(kind_named, kinds):
        if kind is not None and kind.leaves_work:
            return kind
    raise LookupError(f"no step of flow {flow.name!r} leaves work behind for kill request {request.get('job')!r}")


async def kill(flow: Flow, request: dict[str, Any], *, config: Any, draft: bool, pools: Pools) -> dict[str, Any]:
    """Carry out one request; the fields of its `detached_killed` event."""
    return await kind_for(flow, request).kill_leftover(request, config=config, draft=draft, pools=pools)


async def carry_out(engine: Any, run_id: str) -> dict[str, Any]:
    """Carry out the run's outstanding kill requests in this process (`run --local`, as its run ends).

    The caller holds no lock on the run: each result is recorded as the daemon records it. The record after.
    """
    run = engine.store.read_run(run_id)
    flow = engine.flow_of(run_id)
    for request in outstanding(run):
        killed = await kill(flow, request, config=engine.config, draft=bool(run.get("draft")), pools=engine.pools)
        run = engine.note(run_id, EventType.DETACHED_KILLED, **killed)
    if not outstanding(run):
        engine.store.kills_settled(run_id)
    return run
