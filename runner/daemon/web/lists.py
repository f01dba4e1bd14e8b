"""The inbox (approvals waiting for me), the runs list, and the releases page.

The inbox is the daemon's `pending_for`, which applies runner.auth.may_decide;
the runs list is the visibility service's `visible_runs`, so a page never
shows a run the API would hide; the releases page reads the catalog and the
release history the daemon keeps.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runner.auth import may_decide_release
from runner.daemon.visibility import page_start, run_status
from runner.daemon.web.context import Pages
from runner.daemon.web.views import moment, time_left
from runner.errors import Invalid
from runner.status import RunStatus

PAGE_SIZE = 25
FILTERS = ("flow", "status", "draft", "started_by")
HISTORY_SHOWN = 20


def inbox_items(pages: Pages, user: Any) -> list[dict[str, Any]]:
    """What waits for `user`, oldest deadline first, with time left and N of M."""
    now = pages.now()
    items = []
    for item in pages.daemon.pending_for(user):
        deadline = moment(item.get("deadline"))
        items.append({**item, "time_left": time_left(item.get("deadline"), now),
                      "overdue": bool(deadline and deadline <= now), "approved": len(item.get("approvals") or []),
                      "needed": item.get("min_approvals") or 1, "sort": deadline.timestamp() if deadline else 1e18})
    return sorted(items, key=lambda item: (item["sort"], item["run"]))


def run_filters(request: Request) -> dict[str, Any]:
    """The runs list's filters from the query, checked as the API checks them."""
    query = request.query_params
    flow = (query.get("flow") or "").strip() or None
    status = run_status((query.get("status") or "").strip() or None)
    draft_text = query.get("draft") or ""
    if draft_text not in ("", "true", "false"):
        raise Invalid("draft must be true (drafts), false (live releases) or left out")
    draft = {"true": True, "false": False}.get(draft_text)
    started_by = (query.get("started_by") or "").strip() or None
    return {"flow": flow, "status": status, "draft": draft, "started_by": started_by}


def page_of_runs(pages: Pages, user: Any, filters: dict[str, Any], before: str | None) -> tuple[list[dict], str | None]:
    """One page of runs the user may see, newest first, and the cursor of the next page."""
    wanted, found, cursor = PAGE_SIZE + 1, [], before
    store_filters = {k: filters[k] for k in ("flow", "status", "draft")}
    while len(found) < wanted:
        # started_by is not a store filter: read visible runs in batches and keep the matching ones
        batch = pages.daemon.visibility.visible_runs(user, limit=wanted * 4, before=cursor, **store_filters)
        found += [run for run in batch if not filters["started_by"] or run.get("started_by") == filters["started_by"]]
        if len(batch) < wanted * 4:
            break
        cursor = batch[-1]["id"]
    shown = found[:PAGE_SIZE]
    return shown, shown[-1]["id"] if len(found) > PAGE_SIZE else None


def release_rows(pages: Pages, user: Any = None) -> dict[str, Any]:
    """Per flow: what is live (tag, tagger, message), pins, yanks, refusals, releases pending approval (with
    what `user` may decide of each, by runner.auth.may_decide_release) and its history with who."""
    catalog = pages.daemon.catalog.flows()
    try:
        history = pages.daemon.gitops.resolver.state.history_by_flow()
    except (OSError, ValueError):
        history = {}
    rows = []
    for entry in catalog["flows"]:
        pending = [{**item, "form": pending_form(pages, user, item)} for item in entry.get("pending") or []]
        rows.append({**entry, "pending": pending,
                     "history": list(reversed(history.get(entry["flow"], [])[-HISTORY_SHOWN:]))})
    health = pages.daemon.gitops.health()
    return {"tagged": catalog["tagged"], "flows": rows, "problems": health.get("problems") or [],
            "error": health.get("error"), "repo_history": list(reversed(history.get(None, [])[-HISTORY_SHOWN:]))}


def pending_form(pages: Pages, user: Any, item: dict[str, Any]) -> dict[str, Any] | None:
    """The decision form of a pending release for `user`: None if they may decide nothing of it."""
    if user is None:
        return None
    users = pages.daemon.users
    if not may_decide_release(user, item, users, decision="reject"):
        return None
    approve = may_decide_release(user, item, users)
    already = user.name in {a["by"] for a in item.get("approvals") or []}
    return {"approve": bool(approve) and not already, "already": already,
            "approve_refusal": "You approved it; it waits for other approvers." if already else approve.message}


def routes(pages: Pages) -> list[Route]:
    async def inbox(request: Request) -> Response:
        user, session = pages.signed_in(request)
        return pages.render(request, "inbox.html", session=session, user=user, items=inbox_items(pages, user))

    async def runs(request: Request) -> Response:
        user, session = pages.signed_in(request)
        filters = run_filters(request)
        before = page_start(request.query_params.get("before") or None)
        shown, after = page_of_runs(pages, user, filters, before)
        query = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in filters.items()}
        return pages.render(request, "runs.html", session=session, user=user, runs=shown, next_page=after,
                            filters=query, statuses=[s.value for s in RunStatus], first_page=before is None)

    async def releases(request: Request) -> Response:
        user, session = pages.signed_in(request)
        return pages.render(request, "releases.html", session=session, user=user, **release_rows(pages, user))

    return [
        Route("/", pages.guard(inbox), methods=["GET"]),
        Route("/inbox", pages.guard(inbox), methods=["GET"]),
        Route("/runs", pages.guard(runs), methods=["GET"]),
        Route("/releases", pages.guard(releases), methods=["GET"]),
    ]
