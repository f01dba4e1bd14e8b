"""The run page, the decision form's POST, and the events the page's script follows.

A decision from the page goes through the same call as the API's decision
route (the daemon's approvals service), so the page can never accept what the
API refuses: a content error comes back as the page again with 422 and the
message beside the field at fault; a step that no longer waits is 409.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from runner.daemon.web.context import Pages
from runner.daemon.web.runpage import RunPage
from runner.errors import Conflict, Forbidden, Invalid

DECISIONS = ("approve", "reject", "request_changes")
EVENT_WAIT_SECONDS = 25.0  # a long poll shorter than common proxy idle timeouts


def decision_body(fields: dict[str, str]) -> dict[str, Any]:
    """The API's decision body from the form: empty reviewer fields are left out, so defaults apply."""
    inputs = {name.removeprefix("input."): value for name, value in fields.items()
              if name.startswith("input.") and value.strip() != ""}
    return {"decision": fields.get("decision"), "comment": fields.get("comment") or None, "inputs": inputs,
            "context_sha256": fields.get("context_sha256") or None}


def field_errors(exc: Invalid) -> dict[str, str]:
    """The message to show beside each form field the error names (`comment`, `inputs.<name>`)."""
    errors = {}
    for field in exc.fields or []:
        name = field.removeprefix("inputs.")
        said = [reason.split(": ", 1)[-1] for reason in exc.reasons if reason.startswith(f"{name}:")
                or f"input {name}=" in reason or f"'{name}'" in reason]
        errors[field] = "; ".join(said) or exc.message
    return errors


def routes(pages: Pages) -> list[Route]:
    async def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        user, session = pages.signed_in(request, run_id)
        run = pages.daemon.visibility.readable_run(run_id, user)
        return pages.render(request, "run.html", session=session, user=user, **RunPage(pages, run, user,
                                                                                         session).values())

    async def decide(request: Request) -> Response:
        run_id, step_id = request.path_params["run_id"], request.path_params["step_id"]
        session = pages.session(request)
        fields = await pages.form(request, session)  # the CSRF check comes before anything else
        user, session = pages.signed_in(request, run_id, step_id)
        if fields.get("decision") not in DECISIONS:
            raise Invalid("choose approve, reject or request changes")
        run = pages.daemon.visibility.readable_run(run_id, user)
        try:
            await pages.daemon.approvals.decide(run_id, step_id, user, decision_body(fields))
        except Invalid as exc:
            errors = field_errors(exc)
            problem = exc.message if not exc.reasons else f"{exc.message}: {'; '.join(exc.reasons)}"
            values = RunPage(pages, run, user, session).values(fields, errors, problem)
            return pages.render(request, "run.html", 422, session=session, user=user, **values)
        except Conflict as exc:
            fresh = pages.daemon.visibility.readable_run(run_id, user)
            values = RunPage(pages, fresh, user, session).values(problem=exc.message)
            return pages.render(request, "run.html", 409, session=session, user=user, **values)
        except Forbidden:
            raise
        return RedirectResponse(f"/ui/runs/{run_id}?decided={step_id}#step-{step_id}", status_code=303)

    async def events(request: Request) -> Response:
        """Events after `after` (long poll up to `wait` seconds), for the page's live updates."""
        run_id = request.path_params["run_id"]
        user, _ = pages.signed_in(request, run_id)
        pages.daemon.visibility.readable_run(run_id, user)
        after = _number(request.query_params.get("after"), -1, 10**18)
        wait = min(float(_number(request.query_params.get("wait"), 0, 60)), EVENT_WAIT_SECONDS)
        found = await pages.daemon.polls.events_after(run_id, after, wait)
        run = pages.daemon.visibility.readable_run(run_id, user)
        return JSONResponse({"events": [{"seq": e.get("seq"), "type": e.get("type"), "step": e.get("step")}
                                        for e in found],
                             "next": found[-1]["seq"] if found else after, "status": run["status"]},
                            headers={"Cache-Control": "no-store"})

    return [
        Route("/runs/{run_id}", pages.guard(run_page), methods=["GET"]),
        Route("/runs/{run_id}/steps/{step_id}/decision", pages.guard(decide), methods=["POST"]),
        Route("/runs/{run_id}/events", pages.guard(events), methods=["GET"]),
    ]


def _number(text: str | None, default: int, high: int) -> int:
    if text is None or text == "":
        return default
    if not text.lstrip("-").isdigit() or not -1 <= int(text) <= high:
        raise Invalid(f"expected a whole number from -1 to {high}")
    return int(text)
