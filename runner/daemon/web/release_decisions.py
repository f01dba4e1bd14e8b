"""A release pending approval: its own page, the decision form's POST, and the signed links that open it.

The POST checks the session's CSRF token first, then goes through the same call
as the API's `POST /api/v1/releases/{flow}/{version}/decision` (the daemon's
`decide_release`), so the page can never accept what the API refuses: a refusal
is the error page with its status (403, 409, 422); a decision goes back to the
releases page (or, for a session a link opened, to the release's own page).

A release link (`/ui/release-link/{token}`, made by links.sign_release for one
approver of one release) never decides anything: it checks the token, that the
release still waits for approval and that its user may still decide it
(runner.auth.may_decide_release), then issues a session limited to that release
(sessions.release_scope), ending when the link would, and sends the browser to
the release's page, whose form posts with that session's CSRF token.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from runner.auth import may_decide_release
from runner.daemon.web import links, sessions
from runner.daemon.web.context import Pages
from runner.daemon.web.lists import pending_form
from runner.daemon.web.signin import limited_session
from runner.errors import Conflict, Forbidden, Invalid, NotFound
from runner.releases.approval import PENDING, RECORDS, find_record

DECISIONS = ("approve", "reject")


def release_record(pages: Pages, flow: str, version: str) -> dict[str, Any]:
    """The release as served: the pending item if it waits, else its kept record (decided, superseded...)."""
    wanted = version.removeprefix("v")
    for item in pages.daemon.release_approvals.pending():
        if item["flow"] == flow and item["version"] == wanted:
            return item
    record = find_record(pages.daemon.gitops.resolver.state.load(RECORDS, {}), flow, wanted)
    if record is None:
        raise NotFound(f"{flow} has no release {version} that needed approval",
                       hint="the releases page lists the releases pending approval")
    return record


def routes(pages: Pages) -> list[Route]:
    async def page(request: Request) -> Response:
        flow, version = request.path_params["flow"], request.path_params["version"]
        user, session = pages.signed_in(request, *sessions.release_scope(flow, version))
        record = release_record(pages, flow, version)
        shown = {**record, "form": pending_form(pages, user, record)} if record["status"] == PENDING else record
        return pages.render(request, "release.html", session=session, user=user, flow=flow, record=shown,
                            decided=request.query_params.get("decided") == "1")

    async def decide(request: Request) -> Response:
        flow, version = request.path_params["flow"], request.path_params["version"]
        session = pages.session(request)
        fields = await pages.form(request, session)  # the CSRF check comes before anything else
        user, session = pages.signed_in(request, *sessions.release_scope(flow, version))
        if fields.get("decision") not in DECISIONS:
            raise Invalid("choose approve or reject")
        await pages.daemon.decide_release(flow, version, user, {"decision": fields["decision"],
                                                               "comment": fields.get("comment") or None})
        if session.limited_to:
            return RedirectResponse(f"/ui/releases/{flow}/{version.removeprefix('v')}?decided=1", status_code=303)
        return RedirectResponse(f"/ui/releases?decided={flow}#flow-{flow}", status_code=303)

    async def open_link(request: Request) -> Response:
        now = pages.now()
        grant = links.verify_release(pages.secrets, request.path_params["token"], now)
        user = pages.user_named(grant.user)
        if user is None:
            raise Forbidden(f"this link was made for {grant.user}, who is no longer a user here")
        item = next((i for i in pages.daemon.release_approvals.pending()
                     if i["flow"] == grant.flow and i["tag"] == grant.tag), None)
        if item is None:
            raise Conflict(f"{grant.flow} {grant.tag} no longer waits for approval",
                           hint="sign in with your token to see the releases page")
        may_decide_release(user, item, pages.daemon.users, decision="reject").check()
        return limited_session(pages, user.name, now, limited_to=sessions.release_scope(grant.flow, item["version"]),
                               expires_at=grant.expires_at, location=f"/ui/releases/{grant.flow}/{item['version']}")

    return [
        Route("/releases/{flow}/{version}", pages.guard(page), methods=["GET"]),
        Route("/releases/{flow}/{version}/decision", pages.guard(decide), methods=["POST"]),
        Route("/release-link/{token}", pages.guard(open_link), methods=["GET"]),
    ]
