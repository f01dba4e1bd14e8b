"""The JSON Schemas (2020-12) of the API's bodies and answers, for the OpenAPI document's `components/schemas`.

Run records are not restated here: `Run` is schema/run.schema.json itself, loaded from the shipped
schema files (runner.schemas) and embedded whole; only its own `$id` is dropped and its internal
`#/$defs/...` references are re-rooted at `#/components/schemas/Run/$defs/...`, so every reference in
the document resolves inside the document. The rest mirror what the daemon's services return
(runner.daemon.*, runner.releases.*): an answer's documented keys are required; objects that grow
with the product (health, flows, events) stay open to new keys, the error body is closed.
"""

from __future__ import annotations

import copy
from typing import Any

from runner.schemas import load_schema
from runner.status import EventType, RunStatus, StepStatus

SHA256 = "^[0-9a-f]{64}$"
RUN_ID = "^[0-9]{8}t[0-9]{6}z-[0-9a-f]{8}$"
FLOW_NAME = "^[a-z0-9][a-z0-9-]*$"
SEMVER = r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(description: str, properties: dict[str, Any], *, required: tuple[str, ...] | str = "all",
        closed: bool = False) -> dict[str, Any]:
    """An object schema; `required="all"` requires every listed key (an answer always has them)."""
    schema: dict[str, Any] = {"type": "object", "description": description, "properties": properties,
                              "required": sorted(properties) if required == "all" else list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def text(description: str = "", **more: Any) -> dict[str, Any]:
    return {"type": "string", **({"description": description} if description else {}), **more}


def maybe(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def many(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"type": "array", "items": schema, **({"description": description} if description else {})}


FLAG = {"type": "boolean"}
COUNT = {"type": "integer", "minimum": 0}
TIME = text("RFC 3339 UTC time", format="date-time")
ANY_OBJECT = {"type": "object"}


def run_schema() -> dict[str, Any]:
    """schema/run.schema.json as a component: its `$defs` addressed from the document's root."""
    schema = copy.deepcopy(load_schema("run"))
    schema.pop("$id", None)
    schema.pop("$schema", None)  # the document's jsonSchemaDialect is the same 2020-12

    def reroot(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("$ref")
            if isinstance(target, str) and target.startswith("#/"):
                node["$ref"] = "#/components/schemas/Run/" + target[2:]
            for value in node.values():
                reroot(value)
        elif isinstance(node, list):
            for value in node:
                reroot(value)

    reroot(schema)
    schema["description"] = schema.get("description", "") + " (schema/run.schema.json, embedded.)"
    return schema


def _errors_and_runs() -> dict[str, dict[str, Any]]:
    problem = obj("A located problem in a flow file (as `signoff validate` reports it).", {
        "file": text(), "line": {"type": ["integer", "null"]}, "column": {"type": ["integer", "null"]},
        "path": text("Where in the document, e.g. steps[2].retry"), "rule": text(), "message": text(),
        "hint": {"type": ["string", "null"]}}, required=("message",))
    error = obj("Every error answer: one shape, whatever the status.", {"error": obj(
        "What went wrong and how to fix it.", {
            "code": text("A stable, machine-readable code: unauthorized, forbidden, not_found, conflict, "
                         "too_large, invalid, usage, flow_invalid, run_locked, method_not_allowed ..."),
            "message": text("A sentence for a person."), "hint": text("How to fix it, where that helps."),
            "reasons": many(text(), "Why a request's content was refused (422)."),
            "fields": many(text(), "The parts of the request at fault (`comment`, `inputs.amount`)."),
            "errors": many(ref("Problem"), "A flow's validation problems (code flow_invalid)."),
        }, required=("code", "message"), closed=True)}, closed=True)
    event = {"type": "object", "description": "One line of the run's events.jsonl: hash-chained, append-only.",
             "required": ["type", "seq", "prev", "at"], "properties": {
                 "type": {"enum": [kind.value for kind in EventType]}, "seq": COUNT,
                 "prev": text("sha256 of the line before (the first: 64 zeros)", pattern=SHA256), "at": TIME,
                 "step": text("The step it concerns, for step events.")}}
    return {
        "Problem": problem,
        "Error": error,
        "Run": run_schema(),
        "Event": event,
        "RunPage": obj("A page of runs the caller may see, newest first.", {
            "runs": many(ref("Run")),
            "next": maybe(text("Pass as `before` for the next page; null on the last.", pattern=RUN_ID))}),
        "Events": obj("A run's events after `after`.", {
            "events": many(ref("Event")),
            "next": {"type": "integer", "minimum": -1, "description": "Pass as `after` to get what follows."}}),
        "StartRun": obj("What to start.", {
            "inputs": {"type": "object", "description": "The flow's inputs (checked against its `inputs:`)."},
            "ref": text("A draft to run: a branch, tag or commit (default: the live release, or the working "
                        "tree of an untagged repository).")}, required=()),
        "Decision": obj("A reviewer's decision on a waiting approval step.", {
            "decision": {"enum": ["approve", "reject", "request_changes"]},
            "comment": maybe(text("Required when the step's require_comment says so.")),
            "inputs": maybe({"type": "object", "description": "The fields the step asks reviewers to fill."}),
            "context_sha256": maybe(text("The context you read (from pending); a decision on a changed one "
                                         "is refused (409).", pattern=SHA256))}, required=("decision",)),
        "DecisionAnswer": obj("The decision, recorded (fsynced) before this answer.", {
            "accepted": {"const": True}, "final": {"type": "boolean", "description": "It settled the step "
                                                                                   "(the quorum is reached, or a reject)."},
            "decision": obj("The decision as recorded (the `decision` event, before its place in the chain).", {
                "type": {"const": "decision"}, "by": text(), "decision": text(), "final": FLAG,
                "decided_by": {"type": ["string", "null"]}, "comment": {"type": ["string", "null"]},
                "inputs": maybe(ANY_OBJECT), "context_sha256": {"type": ["string", "null"]}},
                required=("type", "by", "decision", "final")),
            "run": ref("Run")}),
        "CallbackAnswer": obj("A callback, accepted once and durable.", {
            "accepted": {"const": True}, "replay": {"type": "boolean", "description": "The identical body "
                                                                                    "again: nothing changed."},
            "run": text(pattern=RUN_ID), "step": text(), "sha256": text("Of the body as received", pattern=SHA256),
            "at": TIME, "bytes": {"type": ["integer", "null"], "minimum": 0}}),
        "Verification": obj("The run's event chain checked, and its snapshot against the chain's fold.", {
            "run": text(), "ok": FLAG, "events": COUNT, "problems": many(text())}),
        "Logs": obj("Each step's output as recorded (the tails a step keeps; large ones are res:// references).", {
            "run": text(), "steps": many(obj("One step's output.", {
                "step": text(), "status": {"enum": [status.value for status in StepStatus]}, "attempts": COUNT,
                "stdout": text(), "stderr": text()}))}),
    }


def _daemon_and_approvals() -> dict[str, dict[str, Any]]:
    repo = {"type": "object", "required": ["source", "tagged", "live", "error", "last_reconciled", "problems"],
            "properties": {
                "source": text("The repository: a path or a clone URL."), "tagged": FLAG,
                "live": {"type": "object", "additionalProperties": {"type": ["string", "null"]},
                         "description": "flow -> its live tag (null: none)"},
                "error": {"type": ["string", "null"]}, "last_reconciled": maybe(TIME),
                "problems": many(ANY_OBJECT)}}
    pending = obj("An approval waiting that the caller may decide.", {
        "run": text(pattern=RUN_ID), "flow": text(), "step": text(), "started_by": {"type": ["string", "null"]},
        "context": {"type": ["string", "null"], "description": "Rendered once when the wait began."},
        "context_sha256": {"type": ["string", "null"]}, "deadline": maybe(TIME),
        "approvals": many(ANY_OBJECT, "The approvals given so far (a quorum counts different people)."),
        "min_approvals": {"type": ["integer", "null"]},
        "links": many(obj("A link shown to the reviewer.", {"title": text(), "url": text()}, required=("url",))),
        "url": text("The run's page in the web UI."), "reviewer_inputs": ANY_OBJECT,
        "require_comment": text(), "rewind_to": {"type": ["string", "null"]}})
    return {
        "Health": obj("Liveness and the live release.", {
            "ok": FLAG, "version": text(), "stopping": FLAG, "failed_task": {"type": ["string", "null"]},
            "active_runs": COUNT, "timers": COUNT, "public_url": text(), "repo": repo,
            "store": obj("Where the runs are: files (one daemon), or PostgreSQL (with the daemons serving it).", {
                "kind": {"enum": ["files", "postgres"]},
                "daemons": many(obj("A daemon of the same database.", {"holder": text(), "started_at": TIME,
                                                                      "seen_at": TIME})),
                "error": text("Why the database did not answer.")}, required=("kind",))}),
        "PendingList": obj("The approvals the caller may decide.", {"user": text(), "pending": many(pending)}),
        "FlowCatalog": obj("Flows with live version, drafts and refused releases (a tagged repository), or the "
                           "working tree's flows and their validation state.", {
                               "tagged": FLAG, "flows": many(obj("One flow.", {
                                   "flow": text(), "live": maybe(ref("Release")), "drafts": many(ref("Draft")),
                                   "working_tree": ANY_OBJECT, "refused": many(ANY_OBJECT)},
                                   required=("flow", "live")))}),
        "GitWebhookAnswer": obj("The push notification taken (duplicates of a delivery are dropped).", {
            "accepted": FLAG, "duplicate": FLAG}),
    }


def _releases() -> dict[str, dict[str, Any]]:
    who = {"by": text("Who made the change."), "via": {"enum": ["daemon", "repository"]},
           "reason": {"type": ["string", "null"]}, "at": TIME}
    live_flow = obj("What is live for one flow.", {
        "flow": text(), "live": maybe(ref("Release")), "pinned": {"type": ["string", "null"]},
        "yanked": many(text()), "refused": many(obj("A release refused by validation.", {
            "tag": text(), "commit": text(), "errors": many(ANY_OBJECT)}, required=("tag",))),
        "prereleases": many(text()), "versions": many(text()), "removed": FLAG},
        required=("flow", "live", "pinned", "yanked", "refused", "prereleases"))
    return {
        "Release": obj("A release tag.", {
            "tag": text(), "version": text(), "commit": text(), "tagger": {"type": ["string", "null"]},
            "date": {"type": ["string", "null"]}, "message": {"type": ["string", "null"]},
            "scope": {"enum": ["flow", "repo"]}}),
        "Draft": obj("A branch whose version of the flow differs from the live one.", {
            "branch": text(), "commit": text()}),
        "LiveFlow": live_flow,
        "Releases": obj("`signoff releases --json`.", {
            "tagged": FLAG,
            "flows": many({"allOf": [ref("LiveFlow")], "type": "object", "properties": {
                "drafts": many(ref("Draft")), "history": many(ANY_OBJECT, "The latest changes of what is live.")}}),
            "problems": many(obj("A tag that is not a release.", {"tag": text(), "problem": text(),
                                                                  "message": text()}, required=("tag",))),
            "ignored_tags": many(text())}),
        "Diff": obj("`signoff diff --json`: a draft against the live version.", {
            "flow": text(), "live": maybe(obj("The live release.", {"tag": text(), "commit": text()})),
            "draft": obj("The draft.", {"ref": text(), "commit": {"type": ["string", "null"]}}),
            "diff": text("A unified diff."),
            "steps": obj("The step ids that changed.", {"added": many(text()), "removed": many(text()),
                                                        "changed": many(text())})}),
        "ReleaseRequest": obj("A release of the flow at a ref.", {
            "version": text(pattern=SEMVER), "ref": text("Default HEAD."), "message": text("The tag message."),
            "reason": text(), "rollback": {"type": "boolean", "description": "Allow a version not higher than "
                                                                            "the live one."}},
            required=("version",), closed=True),
        "OverrideRequest": obj("A pin, yank or unyank of a version.", {
            "version": text(pattern=SEMVER), "reason": text()}, required=("version",), closed=True),
        "UnpinRequest": obj("Lift a pin.", {"reason": text()}, required=(), closed=True),
        "ReleaseAnswer": obj("The new tag, and what is live now.", {
            "flow": text(), "tag": text(), "version": text(), "commit": text(),
            "pushed_to": {"type": ["string", "null"]}, "push_error": {"type": ["string", "null"]},
            "previous": {"type": ["string", "null"]}, **who, "live": maybe(ref("LiveFlow"))}),
        "OverrideAnswer": obj("The overrides now in force, and what is live now.", {
            "flow": text(), "overrides": obj("Pins and yanks.", {
                "pins": {"type": "object", "additionalProperties": text()},
                "yanks": {"type": "object", "additionalProperties": many(text())}}),
            **who, "live": maybe(ref("LiveFlow"))}),
    }


def component_schemas() -> dict[str, dict[str, Any]]:
    """Every named schema of the document, by name."""
    return {**_errors_and_runs(), **_daemon_and_approvals(), **_releases()}


RUN_STATUSES = [status.value for status in RunStatus]
