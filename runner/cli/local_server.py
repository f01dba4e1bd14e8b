"""The loopback HTTP server of a local run that waits: the run's callback route and its decision route.

The routes are the daemon's, at the daemon's paths, with the daemon's answers and
statuses (runner.daemon.http: bodies read under a cap, strict JSON, one error
shape): `POST /callbacks/{token}` (202 once durable, 200 for the same body again,
409 for another, 404 for a token not of this run, 413 too large, 422 invalid) and
`POST /api/v1/runs/{run}/steps/{step}/decision`, whose bearer token is the one
printed when the approval began to wait. So `signoff approve` and `signoff callback`
work against it as against a daemon.

It listens on a socket bound before the run is created (`bind_loopback`), so the
callback URLs the run hands out are known from its start; requests that come
before the server is up wait in the socket's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.daemon.http import BODY_LIMIT, internal_error, not_found, read_body, read_json, signoff_error
from runner.errors import NotFound, SignoffError

BACKLOG = 64
STOP_GRACE_SECONDS = 2


def bind_loopback() -> socket.socket:
    """A listening TCP socket on a free loopback port (not inherited by the steps' processes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def create_local_app(local: Any, *, body_limit: int = BODY_LIMIT) -> Starlette:
    """The app over one local run (`local`: runner.cli.local_wait.LocalWait)."""

    async def callback(request: Request) -> Response:
        target = local.callbacks.target(request.path_params["token"])  # the token is the credential
        if target.run_id != local.run_id:  # another run's token in the same data directory: not served here
            raise NotFound("no such callback")
        body = await read_body(request, target.body_limit(body_limit))
        status, answer = await local.callbacks.accept(target, body)
        return JSONResponse(answer, status_code=status)

    async def decision(request: Request) -> Response:
        local.authorize(request.headers.get("authorization", ""))
        run_id = request.path_params["run_id"]
        if run_id != local.run_id:
            raise NotFound(f"no run {run_id}")
        body = await read_json(request, body_limit)
        receipt, run = await local.decide(request.path_params["step_id"], body)
        return JSONResponse({"accepted": True, "final": bool(receipt.outcome), "decision": receipt.event,
                             "run": run})

    routes = [
        Route("/callbacks/{token}", callback, methods=["POST"]),
        Route("/api/v1/runs/{run_id}/steps/{step_id}/decision", decision, methods=["POST"]),
    ]
    handlers = {SignoffError: signoff_error, Exception: internal_error, 404: not_found, 405: not_found}
    return Starlette(routes=routes, exception_handlers=handlers)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: ^C is the local run's to handle (it cancels the run)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Starlette, sock: socket.socket):
    """Serve `app` on `sock` in this event loop for as long as the block runs; then stop and close it."""
    config = uvicorn.Config(app, log_level="warning", log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=STOP_GRACE_SECONDS)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="local-run-server")
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
