"""`callback`: park until an outside system POSTs JSON to the step's URL.

The URL (and its 256-bit token) exists from the run's start, so it can be
handed to a worker before the run gets here; a payload that arrives early is
kept and consumed when the step starts. The same body twice is a replay and
changes nothing; a different body once one was accepted is a conflict.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from runner.errors import Conflict, Invalid
from runner.steps import Done, Expired, Park, Receipt, StepContext
from runner.timeutil import parse_duration, rfc3339

MAX_DEPTH = 64
INLINE_LIMIT = 64 * 1024


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_payload(body: bytes, schema: dict | None) -> Any:
    """JSON from the body, nesting capped, checked against the step's schema; Invalid with reasons."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Invalid("the callback body is not valid JSON", [str(exc)[:200]]) from None
    if _depth(payload) > MAX_DEPTH:
        raise Invalid(f"the callback body is nested deeper than {MAX_DEPTH} levels")
    if schema:
        try:
            errors = sorted(Draft202012Validator(schema).iter_errors(payload), key=lambda e: list(e.path))
        except SchemaError as exc:
            raise Invalid("the step's payload schema is itself invalid", [exc.message]) from None
        if errors:
            raise Invalid("the callback payload does not match the step's schema",
                          [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"[:300] for e in errors[:20]])
    return payload


class CallbackKind:
    instant = False
    waits = True
    shell_fields = ()

    async def execute(self, ctx: StepContext) -> Done | Park:
        received = (ctx.run.get("callbacks_received") or {}).get(ctx.step.id)
        if received is not None:
            return Done({"payload": received["payload"], "received_at": received["at"]})
        deadline = ctx.clock.now() + timedelta(seconds=parse_duration(ctx.step.spec["timeout"]))
        return Park(deadline, "awaiting callback", {"deadline": rfc3339(deadline)})

    async def wake(self, ctx: StepContext) -> Expired:
        return Expired(f"no callback within {ctx.step.spec['timeout']}")

    def receive(self, ctx: StepContext, message: dict[str, Any]) -> Receipt:
        body: bytes = message["body"]
        digest = hashlib.sha256(body).hexdigest()
        step_id = ctx.step.id
        previous = (ctx.run.get("callbacks_received") or {}).get(step_id)
        if previous is not None:
            if previous["sha256"] == digest:
                return Receipt(duplicate=True, previous=previous)
            raise Conflict(f"step '{step_id}' already accepted a different callback", hint="a callback is accepted once")
        state = ctx.run["steps"][step_id]
        if ctx.run["status"] in ("succeeded", "failed", "rejected", "cancelled", "timed_out"):
            raise Conflict("the run already ended")
        if state["status"] not in ("pending", "waiting", "skipped"):
            raise Conflict(f"step '{step_id}' is {state['status']}; it no longer takes a callback")
        payload = parse_payload(body, ctx.step.spec.get("schema"))
        stored: Any = payload
        if len(body) > INLINE_LIMIT:
            stored = ctx.store.put_resource(body, media_type="application/json", name=f"{step_id}.payload",
                                            run_id=ctx.run["id"], step=step_id)
        waiting = state["status"] == "waiting"
        event = {"type": "callback_received", "payload": stored, "sha256": digest, "bytes": len(body),
                 "early": not waiting}
        if not waiting:
            return Receipt(event=event)
        return Receipt(event=event, outcome="succeeded", outputs={"payload": stored})


KIND = CallbackKind()
