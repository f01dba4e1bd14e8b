"""Approvals: take a decision for a waiting step, and list the approvals a user may decide.

Who may decide is `runner.auth.may_decide`, asked here (the role, before the run is read;
`pending`) and by the approval kind when it receives the decision under the run's lock.
A decision reads the run once before it waits for that lock, and is refused at once if the
step is not waiting then; the engine checks again under the lock and records the decision
(fsynced) before this returns.
"""

from __future__ import annotations

from typing import Any, Callable

from runner.auth import User, Users, may_decide
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.steps.base import Receipt
from runner.status import EventType

DECISION_FIELDS = ("decision", "comment", "inputs", "context_sha256")


class Approvals:
    def __init__(self, *, engine: Engine, store: Store, users: Users, runs: Any, visibility: Any,
                 run_url: Callable[[str], str]) -> None:
        self.engine, self.store, self.users = engine, store, users
        self.runs, self.visibility, self.run_url = runs, visibility, run_url

    async def decide(self, run_id: str, step_id: str, user: User, body: dict[str, Any]) -> tuple[Receipt, dict]:
        may_decide(user).check()
        run = self.visibility.readable_run(run_id, user)
        message = {"type": EventType.DECISION, "user": user, **{k: body.get(k) for k in DECISION_FIELDS}}
        # refused at once, whatever the run is doing: never queued behind an earlier step to land on
        # a later wait (the engine checks again under the run's lock)
        self.engine.check_waiting(run, step_id)
        receipt, run = await self.runs.write(run_id, lambda: self.engine.deliver(run_id, step_id, message))
        if receipt.outcome:
            self.runs.schedule(run_id)
        return receipt, run

    def pending_for(self, user: User) -> list[dict[str, Any]]:
        """Approvals waiting that `user` may decide."""
        found = []
        for run in self.store.list_runs(status="waiting", limit=10_000):
            step_id = run.get("current_step")
            state = run["steps"].get(step_id or "", {})
            if not state.get("approvers") or not may_decide(user, run, step_id, self.users):
                continue
            if any(a.get("by") == user.name for a in state.get("approvals") or []):
                continue  # a quorum needs different people
            found.append({"run": run["id"], "flow": run["flow"], "step": step_id, "started_by": run["started_by"],
                          "context": state.get("context"), "context_sha256": state.get("context_sha256"),
                          "deadline": state.get("deadline"), "approvals": state.get("approvals") or [],
                          "min_approvals": state.get("min_approvals"), "links": state.get("links") or [],
                          "url": self.run_url(run["id"]), **self.decision_form(run, step_id)})
        return found

    def decision_form(self, run: dict[str, Any], step_id: str) -> dict[str, Any]:
        """What a reviewer of the step may send: its input fields, when a comment is due, where changes rewind."""
        spec = self.engine.flow_of(run["id"], run.get("flow_sha256")).step(step_id).spec
        return {"reviewer_inputs": spec.get("inputs") or {}, "require_comment": spec.get("require_comment", "never"),
                "rewind_to": spec.get("rewind_to")}
