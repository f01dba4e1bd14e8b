"""`callback`: park until an outside system POSTs JSON to the step's URL.

The URL (and its 256-bit token, `mint_token`) exists from the run's start, so
it can be handed to a worker before the run gets here. The daemon checks a
payload (`KIND.parse_payload`) and accepts it into its inbox
(`runner.daemon.inbox`); the step consumes it when it waits, whether it arrived
early or on time, and one its run never reached is recorded as `unused`.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from runner import jsonvalue
from runner.errors import Invalid
from runner.flows.model import Step
from runner.status import EventType, StepStatus
from runner.steps.base import BaseWaitingKind, Expired, Park, Receipt, StepContext
from runner.timeutil import rfc3339


def parse_payload(body: bytes, schema: dict | None) -> Any:
    """Strict JSON from the body (runner.jsonvalue), checked against the step's schema; Invalid with reasons.

    What passes here can always be recorded, so it is checked before the callback is acknowledged.
    """
    payload = jsonvalue.loads(body, "the callback body")
    if schema:
        try:
            errors = sorted(Draft202012Validator(schema).iter_errors(payload), key=lambda e: list(e.path))
        except SchemaError as exc:
            raise Invalid("the step's payload schema is itself invalid", [exc.message]) from None
        if errors:
            raise Invalid("the callback payload does not match the step's schema",
                          [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"[:300] for e in errors[:20]])
    return payload


class CallbackKind(BaseWaitingKind):
    name = "callback"
    pure = True  # computes its result (or its park) from the run alone
    unrendered_fields = frozenset({"on_timeout"})  # a step id

    def mint_token(self, step: Step) -> str:
        """The 256 random bits of the step's callback URL, made as the run is created."""
        return secrets.token_urlsafe(32)

    def parse_payload(self, body: bytes, schema: dict | None) -> Any:
        """The body as strict JSON checked against the step's `schema`: see `parse_payload`."""
        return parse_payload(body, schema)

    def announce(self, run: dict[str, Any], step_id: str, event: dict[str, Any]) -> tuple[str, str] | None:
        text = f"Run {run['id']} of {run['flow']} waits for a callback at '{step_id}' until {event['wake_at']}."
        return f"{run['flow']}: waiting at {step_id}", text

    def unused(self, run: dict[str, Any], step_id: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """A callback accepted for a step its run never consumed (it ended, or was cancelled, first)."""
        return received_event(entry, started=run["steps"][step_id].get("started_at"), unused=True)

    async def execute(self, ctx: StepContext) -> Park:
        deadline = ctx.clock.now() + timedelta(seconds=ctx.duration("timeout"))
        return Park(deadline, "awaiting callback", {"deadline": rfc3339(deadline)})

    async def wake(self, ctx: StepContext) -> Expired:
        return Expired(f"no callback within {ctx.duration_text('timeout', quiet=True)}")

    def settle(self, ctx: StepContext) -> Receipt | None:
        """A callback accepted into the run's inbox (early or while waiting) ends the wait."""
        entry = ctx.mailbox.get(ctx.run["id"], ctx.step.id) if ctx.mailbox is not None else None
        recorded = (ctx.run.get("callbacks_received") or {}).get(ctx.step.id)
        if recorded is not None and ctx.run["steps"][ctx.step.id]["status"] == StepStatus.WAITING:
            # accepted and recorded, but the step was cut short before it finished
            return Receipt(outcome=StepStatus.SUCCEEDED,
                           outputs={"payload": recorded["payload"], "received_at": recorded["at"]})
        if entry is None:
            return None
        event = received_event(entry, started=ctx.run["steps"][ctx.step.id].get("started_at"))
        if "unreadable" in event:  # kept by a daemon that did not check bodies yet: never a wait forever
            return Receipt(outcome=StepStatus.FAILED, error=f"the callback accepted at {entry['at']} could not be "
                                                            f"read ({event['unreadable']}); it is not recorded")
        return Receipt(event=event, outcome=StepStatus.SUCCEEDED,
                       outputs={"payload": event["payload"], "received_at": entry["at"]})


def received_event(entry: dict[str, Any], *, started: str | None, unused: bool = False) -> dict[str, Any]:
    """The `callback_received` event of an inbox entry; `unused` when its run ended before the step.

    A body that does not read back as strict JSON (kept by a daemon that did not check bodies
    yet) gives `payload: null` and says why in `unreadable`.
    """
    event = {"type": EventType.CALLBACK_RECEIVED, "payload": entry.get("resource"), "sha256": entry["sha256"],
             "bytes": entry["bytes"], "accepted_at": entry["at"], "early": entry["at"] < (started or "")}
    if "body" in entry:
        try:
            event["payload"] = jsonvalue.loads(entry["body"], "the callback body")
        except Invalid as exc:
            event["unreadable"] = "; ".join([exc.message, *exc.reasons])
    if unused:
        event["unused"] = True
    return event


KIND = CallbackKind()
