"""`approval`: park until allowed people decide; never approve on a timeout.

The context is rendered once, when the wait begins, and kept with its sha256:
a decision that names a different hash was made on something else and is
refused. A quorum counts distinct people; no role bypasses it, and the run's
starter may not approve unless the flow says `allow_self_approval: true`.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from jsonschema import Draft202012Validator

from runner.auth import may_decide
from runner.errors import Conflict, Invalid, UsageError
from runner.flows.expressions import to_text
from runner.flows.inputs import coerce
from runner.flows.model import Step
from runner.status import EventType, StepStatus
from runner.steps.base import BaseWaitingKind, Expired, Park, Receipt, StepContext
from runner.timeutil import rfc3339

DECISIONS = ("approve", "reject", "request_changes")
CONTEXT_LIMIT = 64 * 1024


def shown_links(links: Any) -> list[dict[str, str]]:
    """The rendered `links:` of the step as the reviewer is shown them: [{title, url}], url as text."""
    return [{"title": to_text(link.get("title")), "url": to_text(link.get("url"))}
            for link in links or [] if isinstance(link, dict)]


def _needs_comment(setting: Any, decision: str) -> bool:
    if setting in (True, "always"):
        return True
    return setting == "reject" and decision != "approve"


class ApprovalKind(BaseWaitingKind):
    name = "approval"
    pure = True  # computes its result (or its park) from the run alone
    takes_decisions = True
    asks_decision = True
    # `context` is rendered once, as the wait begins; the jumps are step ids
    unrendered_fields = frozenset({"context", "on_timeout", "on_reject", "rewind_to"})

    async def execute(self, ctx: StepContext) -> Park:
        spec = ctx.step.spec
        context = str(ctx.evaluate(spec.get("context", ""), "context") or "")
        digest = hashlib.sha256(context.encode()).hexdigest()
        if len(context.encode()) > CONTEXT_LIMIT:
            context = ctx.store.put_resource(context.encode(), media_type="text/plain; charset=utf-8",
                                             name=f"{ctx.step.id}.context", run_id=ctx.run["id"], step=ctx.step.id)
        deadline = ctx.clock.now() + timedelta(seconds=ctx.duration("timeout"))
        approvers = list(spec["approvers"])
        state = {"context": context, "context_sha256": digest, "approvers": approvers,
                 "allow_self_approval": bool(spec.get("allow_self_approval")),
                 "min_approvals": int(spec.get("min_approvals", 1)), "scope": spec.get("scope", "apply"),
                 "deadline": rfc3339(deadline), "approvals": [], "links": shown_links(ctx.spec.get("links"))}
        if spec.get("remind_before"):
            state["remind_at"] = rfc3339(deadline - timedelta(seconds=ctx.duration("remind_before")))
        return Park(deadline, f"awaiting approval by {', '.join(approvers)}", state)

    async def wake(self, ctx: StepContext) -> Expired:
        return Expired(f"no decision within {ctx.duration_text('timeout', quiet=True)}")

    def receive(self, ctx: StepContext, message: dict[str, Any]) -> Receipt:
        spec, step_id = ctx.step.spec, ctx.step.id
        state = ctx.run["steps"][step_id]
        user, decision = message["user"], message.get("decision")
        for field, kinds in (("comment", str), ("context_sha256", str), ("decision", str), ("inputs", dict)):
            if message.get(field) is not None and not isinstance(message[field], kinds):
                raise Invalid(f"{field} must be {'a string' if kinds is str else 'an object'}")
        comment = (message.get("comment") or "").strip() or None
        if state["status"] != StepStatus.WAITING:
            raise Conflict(f"step '{step_id}' is not waiting for a decision (it is {state['status']})")
        if decision not in DECISIONS:
            raise Invalid(f"decision must be one of {', '.join(DECISIONS)}")
        if decision == "request_changes" and not spec.get("rewind_to"):
            raise Invalid(f"step '{step_id}' has no rewind_to, so it cannot take request_changes",
                          hint="approve or reject")
        may_decide(user, ctx.run, step_id, ctx.users, decision=decision, spec=spec).check()
        if _needs_comment(spec.get("require_comment", "never"), decision) and not comment:
            raise Invalid(f"a comment is required to {decision.replace('_', ' ')} step '{step_id}'",
                          hint="send a non-empty comment with the decision", fields=["comment"])
        shown = message.get("context_sha256")
        if shown and shown != state.get("context_sha256"):
            raise Conflict("the context changed since it was shown to you; reload it and decide again")
        if any(a["by"] == user.name for a in state.get("approvals") or []):
            raise Conflict(f"{user.name} already approved step '{step_id}'; a quorum needs different people")
        inputs = self._inputs(spec, message.get("inputs") or {}, decision)
        approvals = [a["by"] for a in state.get("approvals") or []]
        final = decision != "approve" or len(approvals) + 1 >= int(spec.get("min_approvals", 1))
        event = {"type": EventType.DECISION, "by": user.name, "decision": decision, "comment": comment,
                 "inputs": inputs, "context_sha256": state.get("context_sha256"), "final": final, "decided_by": user.name}
        if not final:
            return Receipt(event=event)
        outputs = {"decision": decision, "decided_by": user.name, "comment": comment, "inputs": inputs,
                   "approved_by": approvals + [user.name] if decision == "approve" else []}
        return Receipt(event=event, outcome=StepStatus.SUCCEEDED if decision == "approve" else StepStatus.REJECTED,
                       outputs=outputs)

    def settle(self, ctx: StepContext) -> Receipt | None:
        """A final decision recorded before a crash cut the step short ends the wait now."""
        state = ctx.run["steps"][ctx.step.id]
        if not state.get("decision"):
            return None
        approved = state["decision"] == "approve"
        outputs = {"decision": state["decision"], "decided_by": state.get("decided_by"),
                   "comment": state.get("comment"), "inputs": state.get("inputs") or {},
                   "approved_by": [a["by"] for a in state.get("approvals") or []] if approved else []}
        return Receipt(outcome=StepStatus.SUCCEEDED if approved else StepStatus.REJECTED, outputs=outputs)

    def replay_answer(self, visit: dict[str, Any]) -> Receipt:
        """A recorded final decision, fed again: its `decision` event (the record's decision, decided_by and
        comment, which on_reject and rewind_to read) and the step's end as it was recorded."""
        outputs = dict(visit.get("outputs") or {})
        event = {"type": EventType.DECISION, "by": outputs.get("decided_by"), "decision": outputs.get("decision"),
                 "comment": outputs.get("comment"), "inputs": outputs.get("inputs") or {}, "final": True,
                 "decided_by": outputs.get("decided_by"), "replayed": True} if outputs.get("decision") else None
        return Receipt(event=event, outcome=visit["status"], outputs=outputs, error=visit.get("error"))

    def rewind_to(self, step: Step, state: dict[str, Any]) -> str | None:
        """request_changes sends the run back to `rewind_to`."""
        return step.spec.get("rewind_to") if state.get("decision") == "request_changes" else None

    def announce(self, run: dict[str, Any], step_id: str, event: dict[str, Any]) -> tuple[str, str] | None:
        state = event.get("state") or {}
        text = (f"Run {run['id']} of {run['flow']} waits for approval of '{step_id}' by "
                f"{', '.join(state.get('approvers', []))} until {event['wake_at']}.\n\n{state.get('context', '')}")
        return f"{run['flow']}: waiting at {step_id}", text

    def _inputs(self, spec: dict, given: dict[str, Any], decision: str) -> dict[str, Any]:
        declared = spec.get("inputs") or {}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise Invalid(f"unknown reviewer input(s): {', '.join(unknown)}",
                          hint=f"this step asks for: {', '.join(declared) or 'nothing'}")
        values = {}
        for name, value in given.items():
            try:
                values[name] = coerce(name, (declared[name] or {}).get("type", "string"), value)
            except UsageError as exc:
                raise Invalid("reviewer inputs are not valid", [exc.message], fields=[f"inputs.{name}"]) from None
        for name, field in declared.items():
            if name not in values and "default" in (field or {}):
                values[name] = field["default"]
        schema = {"type": "object", "properties": {
            name: {k: v for k, v in (field or {}).items() if k in ("type", "enum")} for name, field in declared.items()},
            "required": [n for n, f in declared.items() if (f or {}).get("required") and decision == "approve"]}
        errors = list(Draft202012Validator(schema).iter_errors(values))
        reasons = [f"{'.'.join(map(str, e.absolute_path)) or 'inputs'}: {e.message}" for e in errors]
        if reasons:
            at_fault = {f"inputs.{e.absolute_path[0]}" for e in errors if e.absolute_path}
            at_fault.update(f"inputs.{name}" for name in schema["required"] if name not in values)
            raise Invalid("reviewer inputs are not valid", reasons, fields=sorted(at_fault))
        return values


KIND = ApprovalKind()
