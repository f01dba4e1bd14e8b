"""The web pages as one ASGI app, mounted by the HTTP app under /ui.

Every response under /ui carries the strict headers (`SecurityHeaders`): a CSP
that allows only this origin's own script, style and images and no inline code
at all, nosniff, no referrer, no framing. Errors are pages with their status,
never a traceback: each page handler runs inside `Pages.guard`, which turns the
error tree of runner.errors into an error page (and a missing session into a
redirect to sign-in), and anything unexpected into a logged 500 page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.daemon.web import artifacts, decisions, lists, release_decisions, signin
from runner.daemon.web.context import Pages

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    """Adds the pages' headers to every response, static files and error pages included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in HEADERS}
                message["headers"] = [*(h for h in message.get("headers", []) if h[0] not in names), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def web_app(daemon: Any) -> ASGIApp:
    """The pages over one daemon (no globals: two daemons in one process each have their own)."""
    pages = Pages(daemon)
    routes = [
        *signin.routes(pages),
        *lists.routes(pages),
        *decisions.routes(pages),
        *release_decisions.routes(pages),
        *artifacts.routes(pages),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]

    async def missing(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = "there is no such page" if status == 404 else "this page does not take that method"
        return pages.error_page(request, status, message)

    inner = Starlette(routes=routes, exception_handlers={404: missing, 405: missing})
    return SecurityHeaders(inner)


def web_mount(daemon: Any) -> Mount:
    """The Mount the HTTP app adds: every page under /ui."""
    return Mount("/ui", app=web_app(daemon))


__all__ = ["web_app", "web_mount", "CSP"]
