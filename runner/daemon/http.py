"""The HTTP app: routes translate requests into calls of the daemon's services, and errors into one JSON shape.

    {"error": {"code": "...", "message": "...", "hint"?: "...", "reasons"?: [...]}}

Errors map to responses in one place: starlette's `exception_handlers`, from the
exception tree of runner.errors (`STATUS`) to a status and that body. Requests are
counted for Prometheus by a middleware. Bodies are read with a cap before parsing
(default 1 MiB; a callback step's own `max_bytes`), JSON is strict and its nesting
capped (runner.jsonvalue), and a 2xx is sent only after the daemon has recorded what it
acknowledges.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner import jsonvalue
from runner.daemon import openapi
from runner.daemon.core import LIVE_CHANGES, Daemon, User, page_start, run_status
from runner.daemon.web.app import web_mount
from runner.errors import (Conflict, FlowInvalid, Forbidden, Invalid, NotFound, RunLocked, SignoffError, TooLarge,
                           Unauthorized, UsageError)

log = logging.getLogger(__name__)
BODY_LIMIT = 1024 * 1024
INTEGER = re.compile(r"^-?[0-9]{1,18}$")
NUMBER = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9})?$")
STATUS = {Unauthorized: 401, Forbidden: 403, NotFound: 404, Conflict: 409, TooLarge: 413, Invalid: 422,
          UsageError: 422, FlowInvalid: 422, RunLocked: 503}
RESOURCE_META_HEADER = "X-Signoff-Resource"
RETRY_AFTER = {RunLocked: "1"}  # the run is busy for a moment (another process has its log): ask again


def error_response(exc: SignoffError) -> JSONResponse:
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)
    retry = next((after for kind, after in RETRY_AFTER.items() if isinstance(exc, kind)), None)
    return JSONResponse({"error": exc.to_dict()}, status_code=status,
                        headers={"Retry-After": retry} if retry else None)


async def signoff_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignoffError)
    return error_response(exc)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": {"code": "internal", "message": "internal error; see the daemon's log"}},
                        status_code=500)


async def not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    return JSONResponse({"error": {"code": code, "message": f"{request.method} {request.url.path}: "
                                   f"{getattr(exc, 'detail', 'not found')}"}}, status_code=status)


class RequestMetrics:
    """Counts the requests a route answered, by route and status (an unknown path, or a method the route
    does not take, is not counted: no route handled it)."""

    def __init__(self, app: ASGIApp, daemon: Daemon) -> None:
        self.app, self.daemon = app, daemon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            route = scope.get("route")
            methods = getattr(route, "methods", None)
            if not counted and route is not None and (methods is None or scope["method"] in methods):
                self.daemon.metrics.http_requests.labels(route=getattr(route, "path", "?"), status=str(status)).inc()
            counted = True

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            count(500)  # answered by the 500 handler, outside this middleware
            raise


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {int(declared):,} bytes; the limit here is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = BODY_LIMIT) -> dict[str, Any]:
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    data = jsonvalue.loads(body, "the request body")
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    return data


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query value in [low, high]; Invalid (422) for anything else."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not INTEGER.match(text) or not low <= int(text) <= high:
        raise Invalid(f"{name} must be a whole number from {low} to {high:,}; got {text[:40]!r}")
    return int(text)


def query_seconds(request: Request, name: str, *, high: float) -> float:
    """A number of seconds from 0 to `high` (more is capped at `high`); Invalid (422) for NaN, negatives, text."""
    text = request.query_params.get(name)
    if text is None:
        return 0.0
    try:
        value = float(text) if NUMBER.match(text) else math.nan
    except ValueError:  # pragma: no cover - the pattern admits only what float() reads
        value = math.nan
    if not 0 <= value:
        raise Invalid(f"{name} must be a number of seconds from 0 to {high:g}; got {text[:40]!r}")
    return min(value, high)


def create_app(daemon: Daemon, *, body_limit: int = BODY_LIMIT) -> Starlette:
    """The starlette app over one Daemon (no globals: two apps can live in one process)."""

    def user_of(request: Request) -> User:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        user = daemon.users.authenticate(token)
        if user is None:
            raise Unauthorized("a valid bearer token is required", hint="send Authorization: Bearer <token>")
        return user

    async def health(request: Request) -> Response:
        return JSONResponse(daemon.health())

    async def flows(request: Request) -> Response:
        user_of(request)
        return JSONResponse(daemon.catalog.flows())

    async def start_run(request: Request) -> Response:
        user = user_of(request)
        body = await read_json(request, body_limit)
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise Invalid("inputs must be a JSON object")
        run = await daemon.runs.start_run(request.path_params["flow"], inputs, user, ref=body.get("ref"))
        return JSONResponse(run, status_code=201, headers={"Location": f"/api/v1/runs/{run['id']}"})

    async def list_runs(request: Request) -> Response:
        user = user_of(request)
        query = request.query_params
        limit = min(query_int(request, "limit", 50, low=1, high=10**9), 1000)  # more is capped
        draft = {"true": True, "false": False}.get(query.get("draft", ""), None)
        before = page_start(query.get("before"))
        runs = daemon.visibility.visible_runs(user, flow=query.get("flow"), status=run_status(query.get("status")),
                                              draft=draft, limit=limit + 1, before=before)
        page, more = runs[:limit], len(runs) > limit
        return JSONResponse({"runs": page, "next": page[-1]["id"] if more else None})

    async def get_run(request: Request) -> Response:
        return JSONResponse(daemon.visibility.readable_run(request.path_params["run_id"], user_of(request)))

    async def run_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        daemon.visibility.readable_run(run_id, user_of(request))
        after = query_int(request, "after", -1, low=-1, high=10**18)
        wait = query_seconds(request, "wait", high=30.0)
        events = await daemon.polls.events_after(run_id, after, wait)
        return JSONResponse({"events": events, "next": events[-1]["seq"] if events else after})

    async def verify(request: Request) -> Response:
        return JSONResponse(await daemon.inspection.verify(request.path_params["run_id"], user_of(request)))

    async def logs(request: Request) -> Response:
        user = user_of(request)
        return JSONResponse(await daemon.inspection.logs(request.path_params["run_id"], user,
                                                         request.query_params.get("step")))

    async def releases(request: Request) -> Response:
        user_of(request)
        return JSONResponse(await daemon.inspection.releases())

    async def diff(request: Request) -> Response:
        user_of(request)
        return JSONResponse(await daemon.inspection.diff(request.path_params["flow"],
                                                         request.query_params.get("ref") or None))

    async def cancel(request: Request) -> Response:
        user = user_of(request)
        return JSONResponse(await daemon.runs.cancel(request.path_params["run_id"], user))

    async def decision(request: Request) -> Response:
        user = user_of(request)
        body = await read_json(request, body_limit)
        receipt, run = await daemon.approvals.decide(request.path_params["run_id"], request.path_params["step_id"],
                                                     user, body)
        return JSONResponse({"accepted": True, "final": bool(receipt.outcome), "decision": receipt.event,
                             "run": run})

    async def pending(request: Request) -> Response:
        user = user_of(request)
        return JSONResponse({"user": user.name, "pending": daemon.approvals.pending_for(user)})

    async def callback(request: Request) -> Response:
        target = daemon.callbacks.target(request.path_params["token"])  # the token is the credential
        body = await read_body(request, target.body_limit(body_limit))
        status, answer = await daemon.callbacks.accept(target, body)
        return JSONResponse(answer, status_code=status)

    async def resource(request: Request) -> Response:
        path, meta = daemon.visibility.readable_resource(request.path_params["sha256"], user_of(request))
        # its metadata (what `signoff resource get --json` prints) in one header, ASCII-only JSON: HEAD gives it alone
        return FileResponse(path, media_type=meta.get("media_type") or "application/octet-stream",
                            headers={RESOURCE_META_HEADER: json.dumps(meta, separators=(",", ":"))})

    def live_change(change: str):
        async def route(request: Request) -> Response:
            user = user_of(request)
            body = await read_json(request, body_limit)
            answer = await daemon.catalog.change_live(change, request.path_params["flow"], body, user)
            return JSONResponse(answer, status_code=201 if change == "release" else 200)
        return route

    async def release_decision(request: Request) -> Response:
        user = user_of(request)
        body = await read_json(request, body_limit)
        params = request.path_params
        return JSONResponse(await daemon.decide_release(params["flow"], params["version"], user, body))

    async def pending_releases(request: Request) -> Response:
        user = user_of(request)
        return JSONResponse({"user": user.name, "pending": daemon.release_approvals.pending_for(user)})

    async def hook(request: Request) -> Response:
        body = await read_body(request, body_limit)
        run = await daemon.hooks.hook(request.path_params["flow"], body, request.headers.get("x-hub-signature-256"))
        return JSONResponse(run, status_code=201, headers={"Location": f"/api/v1/runs/{run['id']}"})

    async def git_webhook(request: Request) -> Response:
        body = await read_body(request, body_limit)
        answer = daemon.hooks.git_webhook(body, request.headers.get("x-hub-signature-256"),
                                          request.headers.get("x-github-delivery"))
        return JSONResponse(answer, status_code=202)

    async def metrics(request: Request) -> Response:
        return Response(daemon.metrics.render(), media_type=daemon.metrics.content_type)

    async def contract(request: Request) -> Response:
        return Response(openapi.rendered(daemon.public_url), media_type="application/json")

    routes = [
        Route("/api/v1/health", health),
        Route("/api/v1/flows", flows),
        Route("/api/v1/flows/{flow}/runs", start_run, methods=["POST"]),
        Route("/api/v1/flows/{flow}/diff", diff),
        *[Route(f"/api/v1/flows/{{flow}}/{change}", live_change(change), methods=["POST"]) for change in LIVE_CHANGES],
        Route("/api/v1/releases/pending", pending_releases),
        Route("/api/v1/releases/{flow}/{version}/decision", release_decision, methods=["POST"]),
        Route("/api/v1/runs", list_runs),
        Route("/api/v1/runs/{run_id}", get_run),
        Route("/api/v1/runs/{run_id}/events", run_events),
        Route("/api/v1/runs/{run_id}/verify", verify),
        Route("/api/v1/runs/{run_id}/logs", logs),
        Route("/api/v1/runs/{run_id}/cancel", cancel, methods=["POST"]),
        Route("/api/v1/runs/{run_id}/steps/{step_id}/decision", decision, methods=["POST"]),
        Route("/api/v1/pending", pending),
        Route("/api/v1/releases", releases),
        Route("/api/v1/resources/{sha256}", resource),
        Route("/callbacks/{token}", callback, methods=["POST"]),
        Route("/hooks/{flow}", hook, methods=["POST"]),
        Route("/api/v1/git/webhook", git_webhook, methods=["POST"]),
        Route("/metrics", metrics),
        Route(openapi.PATH, contract),  # the OpenAPI document of every route above (not the pages below)
        web_mount(daemon),  # the reviewer's pages, under /ui
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await daemon.start()
        try:
            yield
        finally:
            await daemon.stop()

    handlers = {SignoffError: signoff_error, Exception: internal_error, 404: not_found, 405: not_found}
    return Starlette(routes=routes, middleware=[Middleware(RequestMetrics, daemon=daemon)],
                     exception_handlers=handlers, lifespan=lifespan)
