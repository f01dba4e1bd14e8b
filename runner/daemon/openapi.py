"""The API's contract: the OpenAPI 3.1 document served at GET /api/v1/openapi.json.

Built from one table of operations (`OPERATIONS`: method, path, who may call it, its parameters, its
body, its answers by status) and the component schemas of runner.daemon.openapi_schemas, so a route
is described once, here. The statuses are those of DESIGN section 5 and of runner.daemon.http's
error table (errors.STATUS): 401 no or an unknown token, 403 not allowed, 404 no such thing (or one
the caller may not see), 409 the state says no, 413 a body over its limit, 422 content refused, 503
a run another process holds for a moment (with Retry-After). Routes not listed under an operation's
answers may still say 405 (another method) or 307 (a trailing slash); those two are the app's, not a
route's. The reviewer's web pages (/ui/...) are HTML for people and are left out.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from runner import __version__
from runner.daemon.openapi_schemas import FLOW_NAME, RUN_ID, RUN_STATUSES, SHA256, component_schemas, ref

DIALECT = "https://json-schema.org/draft/2020-12/schema"
PATH = "/api/v1/openapi.json"
ERRORS = {
    401: ("Unauthorized", "No bearer token, or one the daemon does not know (or, for a webhook, a signature "
                          "that is missing or does not match)."),
    403: ("Forbidden", "Authenticated, but not allowed to do this (the role, or the approval's rules)."),
    404: ("NotFound", "No such thing, or one the caller may not see (the same answer: nothing confirms it "
                      "exists)."),
    409: ("Conflict", "The run's (or the repository's) state says no: the step is not waiting, its deadline "
                      "passed, the context changed, a different callback was already accepted."),
    413: ("TooLarge", "The body is over its limit (1 MiB, `limits.body_max_bytes`; a callback step's "
                      "`max_bytes`)."),
    422: ("Invalid", "The content is refused: not strict JSON, a wrong field, a bad query value; `reasons` "
                     "and `fields` say why."),
    503: ("RunLocked", "Another process is advancing the run for a moment; ask again after Retry-After "
                       "seconds."),
}
ANY_JSON = {"description": "Any JSON value (a callback step's own `schema` may ask more)."}
INPUTS = {"type": "object", "description": "The flow's inputs."}
PUSH = {"type": "object", "description": "The push event (only its signature is read: the daemon re-reads the refs)."}
LOCATION = {"Location": {"description": "The run's URL in the API.", "schema": {"type": "string"}}}


@dataclass(frozen=True)
class Answer:
    description: str
    schema: str | dict[str, Any] | None = None  # a component's name, or a schema; None: no body
    media_type: str = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    answers: dict[int, Answer]
    errors: tuple[int, ...]
    tag: str
    auth: bool = True                           # a bearer token is needed
    parameters: tuple[dict[str, Any], ...] = ()
    body: str | dict[str, Any] | None = None    # a component's name, or a schema
    body_required: bool = False

    @property
    def operation_id(self) -> str:
        words = [part.strip("{}") for part in self.path.split("/") if part and part not in ("api", "v1")]
        return "_".join([self.method.lower(), *words]).replace("-", "_").replace(".", "_")


def path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


def query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def header_param(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": {"type": "string"}}


FLOW = path_param("flow", "The flow's name.", pattern=FLOW_NAME)
RUN = path_param("run_id", "The run's id.", pattern=RUN_ID)
SIGNATURE = header_param("X-Hub-Signature-256", "`sha256=<hex HMAC-SHA256 of the raw body>` with the secret.",
                         required=True)
LIVE_CHANGE_OPERATIONS = {
    "release": ("Validate the flow at `ref`, then tag `<flow>/v<version>` (the release role)", "ReleaseRequest",
                201, "ReleaseAnswer"),
    "pin": ("Keep the flow at a version until unpinned (admin)", "OverrideRequest", 200, "OverrideAnswer"),
    "unpin": ("Lift a pin (admin)", "UnpinRequest", 200, "OverrideAnswer"),
    "yank": ("Never use a version; the next lower valid one goes live (admin)", "OverrideRequest", 200,
             "OverrideAnswer"),
    "unyank": ("Lift a yank (admin)", "OverrideRequest", 200, "OverrideAnswer"),
}

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/api/v1/health", "Liveness and the live release", {200: Answer("The daemon's state.", "Health")},
              (), "daemon", auth=False),
    Operation("GET", PATH, "This document", {200: Answer("The OpenAPI 3.1 document.", {"type": "object"})}, (), "daemon",
              auth=False),
    Operation("GET", "/metrics", "Prometheus metrics (the text exposition format)",
              {200: Answer("The metrics.", {"type": "string"}, media_type="text/plain")}, (), "daemon", auth=False),
    Operation("GET", "/api/v1/flows", "Flows with live version, drafts and refused releases",
              {200: Answer("The flows.", "FlowCatalog")}, (401,), "flows"),
    Operation("POST", "/api/v1/flows/{flow}/runs", "Start a run (the run role); a draft with `ref`",
              {201: Answer("The new run, queued or running.", "Run", headers=LOCATION)},
              (401, 403, 404, 413, 422), "runs", parameters=(FLOW,), body="StartRun"),
    *(Operation("POST", f"/api/v1/flows/{{flow}}/{change}", summary, {status: Answer("Done, and recorded with who, "
                                                                                    "when and why.", answer)},
                (401, 403, 404, 409, 413, 422), "releases", parameters=(FLOW,), body=body,
                body_required=change != "unpin")
      for change, (summary, body, status, answer) in LIVE_CHANGE_OPERATIONS.items()),
    Operation("GET", "/api/v1/flows/{flow}/diff", "A draft of the flow against its live version",
              {200: Answer("`signoff diff --json`.", "Diff")}, (401, 404, 422), "releases",
              parameters=(FLOW, query_param("ref", "The draft: a branch, tag or commit (default: the daemon's "
                                                   "working tree).", {"type": "string"}))),
    Operation("GET", "/api/v1/releases", "The live version of every flow, with pins, yanks, refusals, drafts "
                                         "and history", {200: Answer("`signoff releases --json`.", "Releases")},
              (401,), "releases"),
    Operation("GET", "/api/v1/releases/pending", "Releases waiting for approval that the caller may decide",
              {200: Answer("`{user, pending: [...]}`: each pending release with its diff against live, its "
                           "validation, its tagger, the approvals so far and `replay` (its flow replayed against "
                           "the live version's recent runs; null while that runs).",
                           {"type": "object", "required": ["user", "pending"]})},
              (401,), "releases"),
    Operation("POST", "/api/v1/releases/{flow}/{version}/decision",
              "Approve or reject a release waiting for approval (the release rule's approvers; never its author)",
              {200: Answer("The release's approval record after the decision (live once enough approved).",
                           {"type": "object"})},
              (401, 403, 404, 409, 413, 422), "releases",
              parameters=(FLOW, path_param("version", "The release's version, as in its tag (`1.2.0` or `v1.2.0`).")),
              body={"type": "object", "required": ["decision"], "properties": {
                  "decision": {"enum": ["approve", "reject"], "description": "The decision."},
                  "comment": {"type": ["string", "null"], "description": "Why (kept in the release history)."}}},
              body_required=True),
    Operation("GET", "/api/v1/runs", "The runs the caller may see, newest first, paged",
              {200: Answer("A page of runs.", "RunPage")}, (401, 422), "runs", parameters=(
                  query_param("flow", "Only runs of this flow.", {"type": "string"}),
                  query_param("status", "Only runs with this status.", {"enum": RUN_STATUSES}),
                  query_param("draft", "Only draft runs (true) or only live ones (false); other values are ignored.",
                              {"enum": ["true", "false"]}),
                  query_param("limit", "Runs per page (more than 1000 is capped at 1000).",
                              {"type": "integer", "minimum": 1, "maximum": 10**9, "default": 50}),
                  query_param("before", "The `next` of the page before.", {"type": "string", "pattern": RUN_ID}))),
    Operation("GET", "/api/v1/runs/{run_id}", "One run's record", {200: Answer("The run.", "Run")}, (401, 404),
              "runs", parameters=(RUN,)),
    Operation("GET", "/api/v1/runs/{run_id}/events", "A run's history after `after`; a long poll with `wait`",
              {200: Answer("The events.", "Events")}, (401, 404, 422), "runs", parameters=(
                  RUN, query_param("after", "Only events with a higher seq (-1: from the first).",
                                   {"type": "integer", "minimum": -1, "maximum": 10**18 - 1, "default": -1}),
                  query_param("wait", "Seconds to wait for a new event if there is none yet (more than 30 is "
                                      "capped at 30).", {"type": "number", "minimum": 0, "default": 0}))),
    Operation("GET", "/api/v1/runs/{run_id}/verify", "Check the run's event chain and its snapshot",
              {200: Answer("The verdict (`signoff runs verify --json`).", "Verification")}, (401, 404), "runs",
              parameters=(RUN,)),
    Operation("GET", "/api/v1/runs/{run_id}/logs", "Each step's recorded output",
              {200: Answer("`signoff logs --json`.", "Logs")}, (401, 404), "runs",
              parameters=(RUN, query_param("step", "Only this step.", {"type": "string"}))),
    Operation("POST", "/api/v1/runs/{run_id}/cancel", "Cancel a run (your own; admins any)",
              {200: Answer("The run, cancelled (or its cancel under way); a run that ended already is a 409.", "Run")}, (401, 403, 404, 409, 503),
              "runs", parameters=(RUN,)),
    Operation("POST", "/api/v1/runs/{run_id}/steps/{step_id}/decision",
              "Approve, reject or request changes on a waiting approval step (an allowed reviewer)",
              {200: Answer("The decision, recorded.", "DecisionAnswer")}, (401, 403, 404, 409, 413, 422, 503),
              "approvals", parameters=(RUN, path_param("step_id", "The approval step's id.")), body="Decision",
              body_required=True),
    Operation("GET", "/api/v1/pending", "The approvals the caller may decide, with their rendered context",
              {200: Answer("The pending approvals.", "PendingList")}, (401,), "approvals"),
    Operation("GET", "/api/v1/resources/{sha256}", "A resource's bytes (to those who may see a run that stored it)",
              {200: Answer("The bytes, with the media type recorded for them (HEAD: the headers only).", {},
                           media_type="*/*", headers={"X-Signoff-Resource": {
                               "description": "The resource's metadata as JSON (sha256, size, media_type, name, "
                                              "run, step, created_at): what `signoff resource get --json` prints.",
                               "schema": {"type": "string"}}})},
              (401, 404), "runs", parameters=(path_param("sha256", "The resource's sha256 (res://<sha256>).",
                                                         pattern=SHA256),)),
    Operation("POST", "/callbacks/{token}", "An external system resumes a callback step (the URL is the "
                                            "credential)",
              {202: Answer("Accepted now, durable.", "CallbackAnswer"),
               200: Answer("The identical callback again: a replay, nothing changes.", "CallbackAnswer")},
              (404, 409, 413, 422), "callbacks", auth=False,
              parameters=(path_param("token", "The per-run, per-step token of `${{ callbacks.<id>.url }}`."),),
              body=ANY_JSON),
    Operation("POST", "/hooks/{flow}", "Start the live flow from its webhook trigger (HMAC-signed)",
              {201: Answer("The new run.", "Run", headers=LOCATION)}, (401, 403, 404, 413, 422), "callbacks",
              auth=False, parameters=(FLOW, SIGNATURE), body=INPUTS),
    Operation("POST", "/api/v1/git/webhook", "A signed push notification: re-read the refs now",
              {202: Answer("Taken (polling stays the backstop).", "GitWebhookAnswer")}, (401, 403, 413),
              "releases", auth=False, parameters=(SIGNATURE, header_param(
                  "X-GitHub-Delivery", "The delivery's id; a redelivery is dropped."),), body=PUSH),
)


def _schema(named: str | dict[str, Any]) -> dict[str, Any]:
    return ref(named) if isinstance(named, str) else named


def _answer(answer: Answer) -> dict[str, Any]:
    described: dict[str, Any] = {"description": answer.description}
    if answer.schema is not None:
        described["content"] = {answer.media_type: {"schema": _schema(answer.schema)}}
    if answer.headers:
        described["headers"] = answer.headers
    return described


def _body(operation: Operation) -> dict[str, Any]:
    assert operation.body is not None
    return {"required": operation.body_required, "content": {"application/json": {"schema": _schema(operation.body)}}}


def _operation(operation: Operation) -> dict[str, Any]:
    answers = {str(status): _answer(answer) for status, answer in sorted(operation.answers.items())}
    answers.update({str(status): {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
                    for status in operation.errors})
    described: dict[str, Any] = {"operationId": operation.operation_id, "summary": operation.summary,
                                 "tags": [operation.tag], "responses": answers,
                                 "security": [{"bearer": []}] if operation.auth else []}
    if operation.parameters:
        described["parameters"] = list(operation.parameters)
    if operation.body is not None:
        described["requestBody"] = _body(operation)
    return described


def _error_responses() -> dict[str, Any]:
    responses = {}
    for status, (name, description) in ERRORS.items():
        responses[name] = {"description": description,
                           "content": {"application/json": {"schema": ref("Error")}}}
        if status == 503:
            responses[name]["headers"] = {"Retry-After": {"description": "Seconds to wait before asking again.",
                                                          "schema": {"type": "string"}}}
    return responses


@lru_cache(maxsize=8)
def _built(public_url: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": DIALECT,
        "info": {"title": "signoff daemon API", "version": __version__, "description": DESCRIPTION},
        "servers": [{"url": public_url}] if public_url else [],
        "paths": paths,
        "components": {"schemas": component_schemas(), "responses": _error_responses(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "A user's token from the daemon's config."}}},
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("daemon", "flows", "runs", "approvals", "callbacks", "releases")],
    }


def document(public_url: str = "") -> dict[str, Any]:
    """The OpenAPI document, with `public_url` as its server (a copy: the caller may change it)."""
    return copy.deepcopy(_built(public_url.rstrip("/")))


@lru_cache(maxsize=8)
def rendered(public_url: str = "") -> bytes:
    """The document as the daemon serves it (made once per server URL)."""
    return json.dumps(_built(public_url.rstrip("/")), separators=(",", ":")).encode()


DESCRIPTION = """\
The JSON API of `signoff serve`: start and inspect runs, decide approvals, take callbacks and webhooks, and
change what is live. Every error is `{"error": {"code", "message", "hint"?, "reasons"?, "fields"?}}` with the
status listed under its operation; any route may also answer 405 for a method it does not take, and a path
with a trailing `/` is redirected (307) to the one without. Authentication is a bearer token
(`Authorization: Bearer <token>`), except where an operation says `security: []`: health, this document and
the metrics are open, a callback's URL is its own credential, and the webhooks are HMAC-signed
(`X-Hub-Signature-256`). JSON bodies are strict (no NaN, no byte order mark, nesting at most 64 levels) and
capped (1 MiB by default). Run records are schema/run.schema.json (`#/components/schemas/Run`). The reviewer's
web pages under /ui/ are HTML for people, not part of this API, and are not described here.
"""
