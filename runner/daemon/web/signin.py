"""Sign-in with a token, sign-out, and the per-approver decision links that sign in for one step.

The sign-in form has no session yet to take a CSRF token from, so it gets a
nonce of its own in a SameSite=Strict cookie (a form posted from another site
arrives without it and is refused). A token is checked exactly as the API
checks a bearer token (runner.auth's Users).

A decision link (`/ui/link/{token}`, made by links.sign) never decides
anything: it checks the token, that its step still waits (before its
deadline) and that its user may still decide it (runner.auth.may_decide), then
issues a session limited to that run and step, ending when the link would,
and sends the browser to the step on the run page.
"""

from __future__ import annotations

import secrets as random
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from runner.auth import may_decide
from runner.daemon.web import links, sessions
from runner.daemon.web.context import Pages
from runner.daemon.web.views import moment
from runner.errors import Conflict, Forbidden
from runner.status import StepStatus

SIGNIN_COOKIE = "signoff_signin"
REASONS = {
    "signin": "Sign in to continue.",
    "limited": "The link you opened shows only its own step. Sign in with your token to see more.",
    "signedout": "You are signed out.",
}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a page of ours, never another site (`//host`, `/\\host`)."""
    if not target or not target.startswith("/ui/") or target.startswith("/ui//") or "\\" in target:
        return "/ui/"
    return target


def _signin_session(nonce: str) -> sessions.Session:
    # the sign-in form's CSRF token comes from the same derivation as a session's, over its own nonce
    epoch = datetime.fromtimestamp(0, timezone.utc)
    return sessions.Session(user="-", csrf_nonce=nonce, issued_at=epoch, expires_at=epoch)


def routes(pages: Pages) -> list[Route]:
    def signin_form(request: Request, status: int = 200, error: str | None = None) -> Response:
        nonce = request.cookies.get(SIGNIN_COOKIE) or random.token_urlsafe(32)
        response = pages.render(request, "signin.html", status, user=None, signin_csrf=sessions.csrf_token(
            _signin_session(nonce)), next=safe_next(request.query_params.get("next")),
            reason=REASONS.get(request.query_params.get("why", "")), error=error)
        response.set_cookie(SIGNIN_COOKIE, nonce, max_age=3600, path=sessions.COOKIE_PATH, httponly=True,
                            samesite="strict", secure=pages.secure)
        return response

    async def show(request: Request) -> Response:
        return signin_form(request)

    async def sign_in(request: Request) -> Response:
        nonce = request.cookies.get(SIGNIN_COOKIE)
        fields = await pages.form(request, _signin_session(nonce) if nonce else None)
        user = pages.daemon.users.authenticate(fields.get("token", "").strip())
        if user is None:
            return signin_form(request, 401, "That token is not valid here.")
        value, session = sessions.issue(pages.secrets, user.name, pages.now())
        response = RedirectResponse(safe_next(fields.get("next")), status_code=303)
        response.set_cookie(sessions.COOKIE_NAME, value, **sessions.cookie_options(session, pages.now(),
                                                                                  secure=pages.secure))
        response.delete_cookie(SIGNIN_COOKIE, path=sessions.COOKIE_PATH)
        return response

    async def sign_out(request: Request) -> Response:
        await pages.form(request, pages.session(request))
        response = RedirectResponse("/ui/signin?why=signedout", status_code=303)
        response.delete_cookie(sessions.COOKIE_NAME, **sessions.clearing_cookie_options(secure=pages.secure))
        return response

    async def open_link(request: Request) -> Response:
        now = pages.now()
        grant = links.verify(pages.secrets, request.path_params["token"], now)
        user = pages.user_named(grant.user)
        if user is None:
            raise Forbidden(f"this link was made for {grant.user}, who is no longer a user here")
        run = pages.daemon.visibility.readable_run(grant.run_id, user)
        state = run["steps"].get(grant.step_id)
        if state is None:
            raise Forbidden("this link was made for a step this run does not have")
        if state["status"] != StepStatus.WAITING or run.get("current_step") != grant.step_id:
            raise Conflict(f"step '{grant.step_id}' is no longer waiting for a decision (it is {state['status']})",
                           hint=f"sign in with your token to see run {run['id']}")
        deadline = state.get("deadline")
        if deadline and now >= moment(deadline):
            raise Conflict(f"the time to decide step '{grant.step_id}' is over")
        may_decide(user, run, grant.step_id, pages.daemon.users, decision="reject").check()
        return limited_session(pages, user.name, now, limited_to=(grant.run_id, grant.step_id),
                               expires_at=grant.expires_at, location=f"/ui/runs/{grant.run_id}#step-{grant.step_id}")

    return [
        Route("/signin", pages.guard(show), methods=["GET"]),
        Route("/signin", pages.guard(sign_in), methods=["POST"]),
        Route("/signout", pages.guard(sign_out), methods=["POST"]),
        Route("/link/{token}", pages.guard(open_link), methods=["GET"]),
    ]


def limited_session(pages: Pages, user: str, now: datetime, *, limited_to: tuple[str, str], expires_at: Any,
                    location: str) -> RedirectResponse:
    """What a signed link opens: a session for `user` that may do only what the link names (`limited_to`),
    until the link would have expired, and the way to the page where that is done."""
    value, session = sessions.issue(pages.secrets, user, now, limited_to=limited_to, expires_at=expires_at)
    response = RedirectResponse(location, status_code=303)
    response.set_cookie(sessions.COOKIE_NAME, value, **sessions.cookie_options(session, now, secure=pages.secure))
    return response
