"""The timeline SVG in a real Chromium under the pages' strict CSP: it renders, and nothing is refused."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from runner.daemon.web.timeline import timeline_svg
from runner.timeutil import rfc3339

from browser_support import STRICT_CSP, serve_app

T0 = datetime(2030, 1, 2, 3, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> str:
    return rfc3339(T0 + timedelta(seconds=seconds))


EVENTS = [
    {"type": "run_created", "at": at(0),
     "run": {"id": "r1", "flow": "demo", "step_ids": ["build", "<script>", "review"]}},
    {"type": "step_started", "at": at(0), "step": "build", "attempt": 1},
    {"type": "step_retrying", "at": at(20), "step": "build", "attempt": 1, "error": "exit 1", "retry_at": at(30)},
    {"type": "step_started", "at": at(30), "step": "build", "attempt": 2},
    {"type": "step_finished", "at": at(60), "step": "build", "status": "succeeded"},
    {"type": "step_skipped", "at": at(60), "step": "<script>", "reason": "its `if` was false"},
    {"type": "step_started", "at": at(60), "step": "review", "attempt": 1},
    {"type": "step_waiting", "at": at(61), "step": "review", "wake_at": at(3600), "reason": "approval"},
]
RUN = {"id": "r1", "flow": "demo", "status": "waiting", "steps": {}}


def page_html(body: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>run r1</title></head>"
            f"<body>{body}</body></html>")


def app_with(body: str) -> Starlette:
    async def show(request):
        return HTMLResponse(page_html(body), headers={"Content-Security-Policy": STRICT_CSP})

    return Starlette(routes=[Route("/ui/runs/r1", show)])


def test_the_timeline_renders_under_the_strict_csp(page):
    svg = timeline_svg(RUN, EVENTS, datetime.fromisoformat(at(900)))
    with serve_app(app_with(f"<h1>Run r1</h1>{svg}")) as base:
        response = page.goto(f"{base}/ui/runs/r1")
        assert response.status == 200 and response.headers["content-security-policy"] == STRICT_CSP
        bars = page.locator("svg.timeline g.span rect")
        assert bars.count() >= 4  # two attempts, a backoff, a wait (outline and hatch)
        for index in range(bars.count()):
            box = bars.nth(index).bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] > 0, index
        wait = page.locator('svg.timeline g.wait[data-step="review"] rect').first.bounding_box()
        work = page.locator('svg.timeline g.work[data-step="build"] rect').first.bounding_box()
        assert wait["width"] > work["width"]
        assert page.locator("svg.timeline g.row").count() == 3
        assert page.locator("svg.timeline text", has_text="<script>").count() == 1  # a name, shown as text
        assert page.evaluate("document.querySelectorAll('script').length") == 0
        assert page.csp_violations == [], page.csp_violations
        assert page.page_errors == []


def test_the_csp_check_sees_a_violation_when_there_is_one(page):
    """The detector itself: an inline style the CSP refuses is reported, so an empty list above means something."""
    with serve_app(app_with('<p style="color: red">inline style</p>')) as base:
        page.goto(f"{base}/ui/runs/r1")
        page.wait_for_function("window.__cspViolations.length > 0", timeout=10_000)
        assert any("style-src" in str(v) for v in page.csp_violations), page.csp_violations


def test_asyncio_run_still_works_beside_the_browser(page):
    """Page tests run engines and daemons in-process: the browser must not leave a running loop behind."""
    page.goto("about:blank")
    assert asyncio.run(asyncio.sleep(0, result="ran")) == "ran"
    assert page.evaluate("1 + 1") == 2
