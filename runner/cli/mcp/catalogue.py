"""The MCP server's tools as an agent sees them: names, what each does, and its arguments' JSON Schema.

Pure data, so the list an agent reads and the checks of its arguments come from
one place. Each tool's result is the JSON document the matching CLI command prints
with `--json` (named in its description); a refusal is an error result carrying
the daemon's `{"error": {code, message, hint?, ...}, "status": N}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RUN_STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "rejected", "cancelled", "timed_out"]
MAX_WAIT_SECONDS = 300

FLOW = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$", "description": "The flow's name (flows/<name>.yaml)."}
RUN_ID = {"type": "string", "minLength": 1, "description": "The run's id, e.g. 20261124t190812z-3f9a2c1b."}
INPUTS = {"type": "object", "description": "The flow's inputs by name (see its `inputs:`); defaults fill the rest."}
WAIT_SECONDS = {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS,
                "description": "Wait up to this many seconds for the run to reach `wait_until` before answering "
                               "(0: answer at once; keep it under your client's request timeout). The answer is the run as it is "
                               "then, whether or not it got there."}
WAIT_UNTIL = {"type": "string", "enum": ["settled", "ended"], "default": "settled",
              "description": "settled: the run is no longer queued or running (it waits for a person, a callback "
                             "or a timer, or it ended); ended: it reached a final status."}


def schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object schema that refuses unknown arguments, so a misspelt one is an error, not silently ignored."""
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool = False
    idempotent: bool = False
    annotations: dict[str, Any] = field(default_factory=dict)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "validate_flows", "Validate flows",
        "Check flow files against the schema and for meaning, in the local repository: the working tree's files "
        "(`paths`, default every flows/*.yaml) or, with `ref`, as committed on a branch, tag or commit. Validate a "
        "branch before you run or release it. Result as `signoff validate --json`: {ok, flows: [{file, name, ok, "
        "errors: [{file, line, column, path, rule, message, hint}], warnings}]}; ok is false when any flow has an "
        "error (fix each at its line and column, following its hint).",
        schema({"paths": {"type": "array", "items": {"type": "string", "minLength": 1},
                          "description": "Flow files or folders, relative to the repository root (default: flows/)."},
                "ref": {"type": "string", "minLength": 1,
                        "description": "Validate as committed at this branch, tag or commit of the local repository."}}),
        read_only=True, idempotent=True),
    ToolSpec(
        "diff_flow", "Diff a draft against live",
        "Show a draft of a flow (a branch, tag or commit of the local repository, or the working tree) against its "
        "live version. Result as `signoff diff --json`: {flow, live: {tag, commit} | null, draft: {ref, commit}, "
        "diff (unified), steps: {added, removed, changed}}.",
        schema({"flow": FLOW, "ref": {"type": "string", "minLength": 1,
                                      "description": "The draft's branch, tag or commit (default: the working tree)."}},
               ("flow",)),
        read_only=True, idempotent=True),
    ToolSpec(
        "run_draft", "Run a draft",
        "Start a draft run of a flow as committed on a branch (or tag or commit) of the daemon's repository; commit "
        "and validate it first. Draft runs are marked draft: true and never reach live-only connections. Waits as "
        "`wait_until`/`wait_seconds` say, then answers the run record (as `signoff run --json`): {id, flow, status, "
        "draft, ref, commit, steps: {<id>: {status, outputs, ...}}, current_step, error, ...}. A run that waits for "
        "an approval shows up in list_pending for its approvers.",
        schema({"flow": FLOW, "ref": {"type": "string", "minLength": 1,
                                      "description": "The branch, tag or commit to run (e.g. the branch you pushed)."},
                "inputs": INPUTS, "wait_until": WAIT_UNTIL, "wait_seconds": {**WAIT_SECONDS, "default": 20}},
               ("flow", "ref")),
        annotations={"destructive_hint": False}),
    ToolSpec(
        "start_run", "Start a live run",
        "Start a run of a flow's live (released) version, as `signoff run` does through the daemon. Waits as "
        "`wait_until`/`wait_seconds` say, then answers the run record.",
        schema({"flow": FLOW, "inputs": INPUTS, "wait_until": WAIT_UNTIL,
                "wait_seconds": {**WAIT_SECONDS, "default": 20}}, ("flow",))),
    ToolSpec(
        "list_runs", "List runs",
        "Runs you may see, newest first, from the daemon. Result: {runs: [run record, ...], next} (`next`: give it as "
        "`before` for the following page, null at the end).",
        schema({"flow": {**FLOW, "description": "Only runs of this flow."},
                "status": {"type": "string", "enum": RUN_STATUSES, "description": "Only runs with this status."},
                "draft": {"type": "boolean", "description": "true: only draft runs; false: only live runs."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                "before": {**RUN_ID, "description": "Runs created before this run id (the previous page's next)."}}),
        read_only=True, idempotent=True),
    ToolSpec(
        "show_run", "Show a run",
        "One run's record (as `signoff runs show --json`): status, each step's status, outputs, decision, "
        "decided_by, comment and error, the run's error. With `events`, its history too (`history`: every event). "
        "With `wait_seconds`, waits for the run to reach `wait_until` first: use it to wait for a person's decision "
        "(wait_until: ended) or for a run to reach its approval (settled).",
        schema({"run_id": RUN_ID, "events": {"type": "boolean", "default": False,
                                             "description": "Include the event history."},
                "wait_until": WAIT_UNTIL, "wait_seconds": {**WAIT_SECONDS, "default": 0}}, ("run_id",)),
        read_only=True, idempotent=True),
    ToolSpec(
        "run_events", "A run's events",
        "A run's events after sequence number `after` (-1: from the start): step starts and ends, decisions, "
        "callbacks, timeouts, retries, errors. With `wait_seconds` (at most 30) it waits for the next event when "
        "there is none yet. Result: {events: [{seq, type, at, step?, ...}], next} (give `next` as `after` to go on).",
        schema({"run_id": RUN_ID, "after": {"type": "integer", "minimum": -1, "default": -1},
                "wait_seconds": {"type": "number", "minimum": 0, "maximum": 30, "default": 0,
                                 "description": "Wait up to this long for a new event."}}, ("run_id",)),
        read_only=True, idempotent=True),
    ToolSpec(
        "list_pending", "Approvals waiting for me",
        "The approvals this user may decide now, as `signoff pending --json`: {user, pending: [{run, flow, step, "
        "started_by, context (rendered markdown: what the reviewer is asked to approve), context_sha256, deadline, "
        "approvals, min_approvals, links, reviewer_inputs (fields to fill: a JSON Schema per name), "
        "require_comment, rewind_to, url}]}. Read the context and links before deciding.",
        schema({}), read_only=True, idempotent=True),
    ToolSpec(
        "decide", "Decide an approval",
        "Approve, reject or request changes on a waiting approval step, as this user, under the daemon's rules: only "
        "an allowed approver, never the run's starter unless the step allows self-approval, only while the step "
        "waits, and (with context_sha256) only if the context is still the one you reviewed. Result as `signoff "
        "approve --json`: {accepted, final, decision, run}; a refusal is an error with the daemon's code (forbidden "
        "403, conflict 409, invalid 422).",
        schema({"run_id": RUN_ID, "step": {"type": "string", "minLength": 1, "description": "The approval step's id."},
                "decision": {"type": "string", "enum": ["approve", "reject", "request_changes"],
                             "description": "request_changes sends the run back to the step's rewind_to."},
                "comment": {"type": "string", "description": "Why (required where the step's require_comment says)."},
                "inputs": {"type": "object", "description": "Reviewer inputs by name (the step's reviewer_inputs)."},
                "context_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                   "description": "The context_sha256 from list_pending: refused if it changed."}},
               ("run_id", "step", "decision")),
        annotations={"destructive_hint": False}),
    ToolSpec(
        "post_callback", "Post a callback",
        "Resume a run's waiting callback step as an external system would: POST the JSON `payload` to the callback "
        "URL (or its token), e.g. the URL a step handed to a worker. Result as `signoff callback --json`: {accepted, "
        "replay, run, step, sha256, at, bytes, status}; 202 recorded, 200 the identical callback again.",
        schema({"target": {"type": "string", "minLength": 1,
                           "description": "The callback URL (http.../callbacks/<token>) or the bare token."},
                "payload": {"description": "The JSON body (any JSON value the step's schema accepts)."}},
               ("target", "payload")),
        annotations={"destructive_hint": False}),
    ToolSpec(
        "cancel_run", "Cancel a run",
        "Cancel a run (a running command is stopped). Result: the run record, as `signoff cancel --json`.",
        schema({"run_id": RUN_ID}, ("run_id",)), idempotent=True),
    ToolSpec(
        "release_flow", "Release a flow",
        "Release a flow through the daemon (needs the release role): the daemon validates the flow at `ref` in its "
        "repository and only then creates the annotated tag <flow>/v<version> (pushed where the repository has a "
        "remote); an invalid flow is refused with its errors and nothing is tagged. Result as `signoff release "
        "--json`: {flow, tag, version, commit, pushed_to, push_error, previous, by, via, reason, at, live}.",
        schema({"flow": FLOW,
                "version": {"type": "string", "minLength": 1,
                            "description": "The semantic version, e.g. 1.2.0 (higher than the live one)."},
                "ref": {"type": "string", "minLength": 1, "default": "HEAD",
                        "description": "The branch, tag or commit of the daemon's repository to release."},
                "message": {"type": "string", "description": "Why: the tag's message, kept in the history."},
                "rollback": {"type": "boolean", "default": False,
                             "description": "Allow a version that is not higher than the live one."}},
               ("flow", "version")),
        annotations={"destructive_hint": False}),
    ToolSpec(
        "list_releases", "Releases",
        "What is live, from the daemon, as `signoff releases --json` prints it: {tagged, flows: [{flow, live: {tag, "
        "version, commit, tagger, date, message, scope} | null, pinned, yanked, refused: [{tag, commit, errors}], "
        "prereleases, versions, removed, pending: [releases waiting for approval], drafts: [{branch, commit}], "
        "history}], problems, ignored_tags}.",
        schema({"flow": {**FLOW, "description": "Only this flow."}}), read_only=True, idempotent=True),
    ToolSpec(
        "list_pending_releases", "Releases waiting for my approval",
        "The releases pending approval (signoff-release.yaml) this user may decide, from the daemon's "
        "`GET /api/v1/releases/pending`: {user, pending: [{flow, tag, version, commit, status, base: {tag, "
        "commit} (what stays live), rule: {approvers, min_approvals, allow_self_approval, source}, authors, "
        "approvals: [{by, at, comment}], may_approve (false: you may only reject, e.g. as one of its authors), "
        "diff (unified, live against the tag), validation: {ok, errors}, replay}]}. `replay` is the tag's flow "
        "replayed against the live version's recent runs, nothing executed (null while it runs): {against, "
        "summary: {runs, verdicts, statuses, recorded_statuses, outcome_changed}, runs: [{run, url, recorded, "
        "status, counts, steps: [{step, verdict, status, old_status}]}], error}. Read the diff and the replay "
        "before deciding.",
        schema({}), read_only=True, idempotent=True),
    ToolSpec(
        "decide_release", "Decide a release",
        "Approve or reject a release pending approval, as this user, under the daemon's rules: only an approver "
        "of the live release rule, never one of the release's authors unless the rule allows self-approval, only "
        "while it is pending. An approval that completes the quorum makes the release live at once; one "
        "rejection rejects it for good. Result as `signoff release-approve --json`: {flow, tag, version, "
        "decision, status, final, release, live}; a refusal is an error with the daemon's code (forbidden 403, "
        "not found 404, conflict 409, invalid 422).",
        schema({"flow": FLOW,
                "version": {"type": "string", "minLength": 1,
                            "description": "The pending release's version, e.g. 1.2.0 (or its tag's v1.2.0)."},
                "decision": {"type": "string", "enum": ["approve", "reject"]},
                "comment": {"type": "string", "description": "Why: kept in the release history."}},
               ("flow", "version", "decision")),
        annotations={"destructive_hint": False}),
)

BY_NAME = {tool.name: tool for tool in TOOLS}
