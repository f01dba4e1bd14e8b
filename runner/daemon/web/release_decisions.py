"""The releases page's decision form: approve or reject a release pending approval.

The POST checks the session's CSRF token first, then goes through the same call
as the API's `POST /api/v1/releases/{flow}/{version}/decision` (the daemon's
`decide_release`), so the page can never accept what the API refuses: a refusal
is the error page with its status (403, 409, 422), a decision goes back to the
releases page.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from runner.daemon.web.context import Pages
from runner.errors import Invalid

DECISIONS = ("approve", "reject")


def routes(pages: Pages) -> list[Route]:
    async def decide(request: Request) -> Response:
        flow, version = request.path_params["flow"], request.path_params["version"]
        session = pages.session(request)
        fields = await pages.form(request, session)  # the CSRF check comes before anything else
        user, session = pages.signed_in(request)
        if fields.get("decision") not in DECISIONS:
            raise Invalid("choose approve or reject")
        await pages.daemon.decide_release(flow, version, user, {"decision": fields["decision"],
                                                               "comment": fields.get("comment") or None})
        return RedirectResponse(f"/ui/releases?decided={flow}#flow-{flow}", status_code=303)

    return [Route("/releases/{flow}/{version}/decision", pages.guard(decide), methods=["POST"])]
