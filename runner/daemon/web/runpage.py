"""What the run page shows, gathered from the run's record, its events and its flow copy.

Each step: status, attempts, times, outputs and log tails, artifacts (links to
the resource page), decisions with who, when, comment, inputs and the context
hash, callbacks received. A waiting approval adds what the reviewer is asked:
the rendered context (markdown.py), the scope and what approving permits,
approvals so far, the deadline and what a timeout does, the step's links and,
for someone who may decide (runner.auth.may_decide), the decision form.
"""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup

from runner.auth import User, may_decide
from runner.daemon.web import markdown
from runner.daemon.web.timeline import timeline_svg
from runner.daemon.web.views import diff_code_blocks, looks_like_diff, moment, time_left
from runner.errors import SignoffError
from runner.status import EventType, StepStatus, is_terminal

RESOURCE = re.compile(r"^res://([0-9a-f]{64})$")
LOG_OUTPUTS = ("stdout", "stderr")
SCOPES = {
    "apply": "Approving lets the run go on to make the change this step guards (scope: apply).",
    "read-only": "Approving lets the run go on; the flow says nothing after this step changes anything "
                 "(scope: read-only).",
}


def resource_links(value: Any, found: list[tuple[str, str]], label: str = "") -> None:
    """Every `res://` reference inside an output value, as (label, sha256)."""
    if isinstance(value, str):
        match = RESOURCE.match(value)
        if match:
            found.append((label or match.group(1)[:12], match.group(1)))
    elif isinstance(value, dict):
        for key, item in value.items():
            resource_links(item, found, f"{label}.{key}" if label else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            resource_links(item, found, f"{label}[{index}]")


def on_timeout_text(spec: dict[str, Any]) -> str:
    action = spec.get("on_timeout", "fail")
    if action == "reject":
        return "If nobody decides by then, the step is rejected (a timeout never approves)."
    if action == "fail":
        return "If nobody decides by then, the run ends timed out (a timeout never approves)."
    return f"If nobody decides by then, the run goes on at step '{action}' (a timeout never approves)."


class RunPage:
    """The run page's values for one viewer."""

    def __init__(self, pages: Any, run: dict[str, Any], user: User, session: Any) -> None:
        self.pages, self.run, self.user, self.session = pages, run, user, session
        self.daemon = pages.daemon
        self.now = pages.now()
        self.events = list(self.daemon.store.read_events(run["id"]))
        try:
            self.flow = self.daemon.engine.flow_of(run["id"], run.get("flow_sha256"))
        except (SignoffError, OSError):
            self.flow = None  # the record still shows; what the flow adds (names, on_timeout) is left out

    def spec(self, step_id: str) -> dict[str, Any]:
        if self.flow is None:
            return {}
        try:
            return self.flow.step(step_id).spec
        except KeyError:
            return {}

    def values(self, form: dict[str, str] | None = None, errors: dict[str, str] | None = None,
               problem: str | None = None) -> dict[str, Any]:
        run = self.run
        names = {step: self.spec(step).get("name") or step for step in run["steps"]}
        return {
            "run": run, "terminal": is_terminal(run["status"]),
            "last_seq": max((e.get("seq", 0) for e in self.events), default=0),
            "timeline": Markup(timeline_svg(run, self.events, self.now, labels=names)),  # noqa: S704 - inert SVG
            "steps": [self.step(step_id, names[step_id], form or {}, errors or {}) for step_id in run["steps"]],
            "problem": problem,
        }

    def step(self, step_id: str, name: str, form: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
        state, spec = self.run["steps"][step_id], self.spec(step_id)
        outputs = dict(state.get("outputs") or {})
        logs = {stream: outputs.pop(stream) for stream in LOG_OUTPUTS if isinstance(outputs.get(stream), str)}
        if state.get("status") == StepStatus.RUNNING:
            logs = self.live_logs(step_id) or logs
        artifacts: list[tuple[str, str]] = []
        resource_links(outputs.pop("artifacts", {}), artifacts)
        resource_links(outputs, artifacts)
        view = {"id": step_id, "name": name, "kind": spec.get("kind") or ("approval" if state.get("approvers")
                                                                            else ""),
                "state": state, "outputs": outputs, "logs": logs, "artifacts": artifacts,
                "diffs": {stream: looks_like_diff(text) for stream, text in logs.items()},
                "decisions": [e for e in self.events if e["type"] == EventType.DECISION and e.get("step") == step_id],
                "callbacks": [e for e in self.events
                              if e["type"] == EventType.CALLBACK_RECEIVED and e.get("step") == step_id],
                "waiting": None}
        if state.get("status") == StepStatus.WAITING and state.get("approvers") is not None:
            view["waiting"] = self.approval(step_id, state, spec, form, errors)
        elif state.get("status") == StepStatus.WAITING:
            view["waiting"] = {"approval": False, "deadline": state.get("deadline") or state.get("wake_at"),
                               "time_left": time_left(state.get("deadline") or state.get("wake_at"), self.now)}
        return view

    def live_logs(self, step_id: str) -> dict[str, str]:
        """A running step's output so far, from its step_output events (its outputs come at its end)."""
        logs: dict[str, str] = {}
        for event in self.events:
            if event["type"] == EventType.STEP_STARTED and event.get("step") == step_id:
                logs = {}
            elif event["type"] == EventType.STEP_OUTPUT and event.get("step") == step_id:
                stream = event.get("stream", "stdout")
                logs[stream] = (logs.get(stream, "") + str(event.get("text") or ""))[-16384:]
        return logs

    def approval(self, step_id: str, state: dict[str, Any], spec: dict[str, Any], form: dict[str, str],
                 errors: dict[str, str]) -> dict[str, Any]:
        context = state.get("context") or ""
        context_resource = RESOURCE.match(context)
        rendered = None if context_resource else Markup(diff_code_blocks(markdown.render_markdown(context)))  # noqa: S704
        deadline = moment(state.get("deadline"))
        approvals = state.get("approvals") or []
        return {
            "approval": True, "context": rendered, "context_resource": context_resource.group(1)
            if context_resource else None, "context_sha256": state.get("context_sha256"),
            "scope": state.get("scope") or "apply", "permits": SCOPES.get(state.get("scope") or "apply", ""),
            "approvers": state.get("approvers") or [], "approvals": approvals,
            "needed": state.get("min_approvals") or 1, "deadline": state.get("deadline"),
            "time_left": time_left(state.get("deadline"), self.now),
            "overdue": bool(deadline and deadline <= self.now), "on_timeout": on_timeout_text(spec),
            "on_reject": spec.get("on_reject"), "links": state.get("links") or [],
            "form": self.form(step_id, state, spec, form, errors),
        }

    def form(self, step_id: str, state: dict[str, Any], spec: dict[str, Any], form: dict[str, str],
             errors: dict[str, str]) -> dict[str, Any] | None:
        """The decision form, or None for a viewer who may not decide this step."""
        if self.session is None or not self.session.permits(self.run["id"], step_id):
            return None
        if not may_decide(self.user, self.run, step_id, self.daemon.users, decision="reject", spec=spec):
            return None
        if any(a.get("by") == self.user.name for a in state.get("approvals") or []):
            return {"already": True}
        approve = may_decide(self.user, self.run, step_id, self.daemon.users, decision="approve", spec=spec)
        fields = []
        for field_name, field in (spec.get("inputs") or {}).items():
            field = field or {}
            kind = field.get("type", "string")
            default = field.get("default")
            value = form.get(f"input.{field_name}", "" if default is None else str(default).lower()
                             if isinstance(default, bool) else str(default))
            fields.append({"name": field_name, "type": kind, "required": bool(field.get("required")),
                           "description": field.get("description"), "enum": field.get("enum"),
                           "value": value, "error": errors.get(f"inputs.{field_name}")})
        require = spec.get("require_comment", "never")
        return {"already": False, "approve": bool(approve), "approve_refusal": approve.message,
                "request_changes": bool(spec.get("rewind_to")), "rewind_to": spec.get("rewind_to"),
                "fields": fields, "comment": form.get("comment", ""), "comment_error": errors.get("comment"),
                "comment_required": {True: "always", False: "never"}.get(require, require)}
