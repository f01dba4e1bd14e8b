"""What every page handler shares: the templates, the session of a request, forms, and errors as pages.

Templates are rendered by a sandboxed Jinja environment with autoescape on, so
every value from a run (outputs, contexts, payloads, names) is escaped unless
a module here marked it safe after sanitizing it (Markdown through
markdown.py, the timeline SVG through timeline.py).

Forms are read here with a size cap and parsed as urlencoded (no multipart:
the pages never upload), and every POST checks the session's CSRF token first.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from jinja2 import FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from runner.auth import User
from runner.daemon.web import sessions, views
from runner.errors import Conflict, Forbidden, Invalid, NotFound, SignoffError, TooLarge, Unauthorized, UsageError

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"
FORM_LIMIT = 256 * 1024  # a decision's comment and inputs; more is refused, not read
STATUS = {Unauthorized: 401, Forbidden: 403, NotFound: 404, Conflict: 409, TooLarge: 413, Invalid: 422,
          UsageError: 422}
Handler = Callable[[Request], Awaitable[Response]]


class SignInNeeded(Unauthorized):
    """A page asked for a session the request does not carry: the answer is the sign-in page, not an error.

    `why` is a code the sign-in page explains (never free text from a URL, which anyone could write).
    """

    def __init__(self, message: str, why: str = "signin") -> None:
        super().__init__(message)
        self.why = why


def route_of(request: Request) -> str:
    """The route's template (`/link/{token}`), for logs: a page's path may carry a link's token."""
    return getattr(request.scope.get("route"), "path", None) or "?"


class Pages:
    """The daemon, the templates and the session rules, handed to every page module."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.env = SandboxedEnvironment(loader=FileSystemLoader(TEMPLATES), autoescape=True,
                                        trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(views.FILTERS)

    @property
    def secure(self) -> bool:
        """Whether cookies are marked Secure: the daemon is reached over https (its public URL says so)."""
        return str(self.daemon.public_url).startswith("https://")

    # ---- time, users, sessions ---------------------------------------------------------

    def now(self) -> datetime:
        return self.daemon.clock.now()

    @property
    def secrets(self) -> list[str]:
        return list(self.daemon.web_secrets)

    def user_named(self, name: str) -> User | None:
        return next((user for user in self.daemon.users.by_hash.values() if user.name == name), None)

    def session(self, request: Request) -> sessions.Session | None:
        """The request's session, or None when it has none (or a forged or expired one)."""
        try:
            return sessions.verify(self.secrets, request.cookies.get(sessions.COOKIE_NAME), self.now())
        except Unauthorized:
            return None

    def signed_in(self, request: Request, run_id: str | None = None,
                  step_id: str | None = None) -> tuple[User, sessions.Session]:
        """The user of the request's session; SignInNeeded if there is none or it does not reach this page.

        A session opened by a decision link reaches only its own run (and step, when one is named).
        """
        session = self.session(request)
        if session is None:
            raise SignInNeeded("sign in to continue")
        reaches = session.permits(run_id, step_id) if run_id else session.limited_to is None
        if not reaches:
            raise SignInNeeded("the link you opened shows only one step; sign in with your token to see more",
                               "limited")
        user = self.user_named(session.user)
        if user is None:
            raise SignInNeeded(f"{session.user} is no longer a user of this daemon")
        return user, session

    # ---- forms ----------------------------------------------------------------------

    async def form(self, request: Request, session: sessions.Session | None) -> dict[str, str]:
        """The urlencoded form of a POST, after its CSRF check (Forbidden when it fails)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > FORM_LIMIT:
            raise TooLarge(f"the form is over the limit of {FORM_LIMIT:,} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_LIMIT:
                raise TooLarge(f"the form is over the limit of {FORM_LIMIT:,} bytes")
        try:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200))
        except (UnicodeDecodeError, ValueError):
            raise Invalid("the form could not be read") from None
        if session is None:
            raise Forbidden("this form did not come with a session; sign in and try again")
        sessions.check_csrf(session, fields.get(sessions.CSRF_FIELD))
        return fields

    # ---- responses --------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, *,
               session: sessions.Session | None = None, user: User | None = None, **values: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            user=user, session=session, csrf=sessions.csrf_token(session) if session else None,
            csrf_field=sessions.CSRF_FIELD, now=self.now(), path=request.url.path, **values)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def error_page(self, request: Request, status: int, message: str, hint: str | None = None) -> HTMLResponse:
        session = self.session(request)
        return self.render(request, "error.html", status, session=session, user=None, code=status,
                           message=message, hint=hint)

    def guard(self, handler: Handler) -> Handler:
        """`handler` with errors as pages: SignInNeeded redirects, a SignoffError is its status, anything else 500."""

        @functools.wraps(handler)
        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInNeeded as exc:
                if request.method == "GET":
                    target = quote(request.url.path, safe="/")
                    return RedirectResponse(f"/ui/signin?next={target}&why={exc.why}", status_code=303)
                return self.error_page(request, 403, exc.message, "sign in with your token and try again")
            except SignoffError as exc:
                status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)
                if status == 500:
                    log.error("page %s failed: %s", route_of(request), exc.message, extra={"event": "page_failed"})
                return self.error_page(request, status, exc.message, exc.hint)
            except Exception:  # never a traceback to the browser: the page says where to look
                log.exception("page %s failed", route_of(request), extra={"event": "page_failed"})
                return self.error_page(request, 500, "something went wrong on the server; see the daemon's log")

        return page
