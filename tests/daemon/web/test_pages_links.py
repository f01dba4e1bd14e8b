"""Per-approver signed links and forged decisions, in a real Chromium against the real daemon app.

A link is made as the notification side makes it: links.sign with the daemon's
web_secrets, expiring with the step's deadline. It opens the run page signed in
as its approver for that one step; it is refused for another step, after the
step ended and after it expired; a GET never changes anything. A non-approver
sees no form, and a forged POST (no CSRF token, another user's session) is 403.
The daemon's own log never shows a link's token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from daemon.web.pages_support import WAIT_MS, Live, live_daemon, sign_in
from daemon_support import DaemonProcess
from support import HttpServer, json_reply, wait_until
from runner.daemon.web import links
from runner.daemon.web.views import moment

TWO_STEPS = """
name: two-steps
steps:
  - id: first
    kind: approval
    approvers: [group:ops]
    context: the first question
    timeout: 1h
    on_timeout: reject
  - id: second
    kind: approval
    approvers: [group:ops]
    context: the second question
    timeout: 1h
    on_timeout: reject
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with live_daemon(tmp_path_factory.mktemp("pages-links"), {"two-steps": TWO_STEPS}) as running:
        yield running


def link(live: Live, run: dict, step: str, user: str, expires_at: datetime | None = None) -> str:
    expires_at = expires_at or moment(run["steps"][step]["deadline"])
    token = links.sign(live.daemon.web_secrets, run["id"], step, user, expires_at)
    return f"{live.url}/ui/link/{token}"


def waiting_run(live: Live) -> dict:
    run = live.start_run("two-steps", user="alice")
    return live.wait_step(run["id"], "first")


def without_marks(run: dict) -> dict:
    """A run record without `events` (how far its snapshot is: rewritten after the record it folds)."""
    return {key: value for key, value in run.items() if key != "events"}


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


@contextmanager
def signed_in_client(live: Live, user: str) -> Iterator[httpx.Client]:
    """A client signed in through the sign-in form, cookies kept, redirects not followed."""
    with httpx.Client(base_url=live.url, timeout=30) as client:
        form = client.get("/ui/signin")
        answer = client.post("/ui/signin", data={"csrf_token": csrf_of(form.text), "token": user, "next": "/ui/"})
        assert answer.status_code == 303, answer.text
        yield client


def test_a_signed_link_opens_the_step_as_its_approver_and_a_get_changes_nothing(page, live):
    run = waiting_run(live)
    before = live.run(run["id"])
    response = page.goto(link(live, run, "first", "bob"))
    assert response.status == 200
    assert page.url.endswith(f"/ui/runs/{run['id']}#step-first")
    assert "bob" in page.locator(".who").inner_text() and "this step only" in page.locator(".who").inner_text()
    assert page.locator("#step-first form.decision button.approve").count() == 1
    # opening the link decided nothing (the snapshot's marks of the log may have caught up meanwhile)
    assert without_marks(live.run(run["id"])) == without_marks(before)
    page.goto(f"{live.url}/ui/inbox")  # the link's session reaches this one step, not the rest
    assert "/ui/signin" in page.url and "why=limited" in page.url

    page.goto(link(live, run, "first", "bob"))
    page.fill("#comment-first", "fine by me")
    page.click("#step-first button.approve")
    page.locator("#step-second.status-waiting").wait_for(timeout=WAIT_MS)
    assert live.run(run["id"])["steps"]["first"]["decided_by"] == "bob"
    assert page.locator("#step-second form.decision").count() == 0  # the session is for the first step only


def test_links_are_refused_for_another_step_after_the_step_ended_and_after_expiry(page, live):
    run = waiting_run(live)
    now = datetime.now(timezone.utc)
    assert page.goto(link(live, run, "second", "bob", now + timedelta(hours=1))).status == 409  # not waiting
    assert "no longer waiting" in page.locator(".message").inner_text()
    assert page.goto(link(live, run, "first", "bob", now - timedelta(seconds=1))).status == 401
    assert "expired" in page.locator(".message").inner_text()
    assert page.goto(link(live, run, "first", "dave")).status in (403, 404)  # no approve role
    forged = link(live, run, "first", "bob")[:-3] + "xyz"
    assert page.goto(forged).status == 401
    other = waiting_run(live)
    # a link's session cannot decide another run's step, even a waiting one
    page.goto(link(live, run, "first", "bob"))
    token = page.locator("form.decision input[name=csrf_token]").first.get_attribute("value")
    answer = page.evaluate("""async ([url, token]) => {
        const body = new URLSearchParams({csrf_token: token, decision: "approve"});
        const response = await fetch(url, {method: "POST", body, redirect: "manual"});
        return response.status;
    }""", [f"/ui/runs/{other['id']}/steps/first/decision", token])
    assert answer == 403
    assert live.run(other["id"])["steps"]["first"]["status"] == "waiting"

    used = link(live, run, "first", "carol")
    page.goto("about:blank")  # the run page reloads itself when the run changes: not under the next goto
    with live.api("bob") as bob:
        assert bob.post(f"/api/v1/runs/{run['id']}/steps/first/decision", json={"decision": "reject"}).status_code == 200
    assert page.goto(used).status == 409  # the step has ended: the link no longer opens it
    events = live.run(run["id"])["events"]["count"]
    assert httpx.get(used, timeout=30).status_code == 409
    assert live.run(run["id"])["events"]["count"] == events


def test_a_non_approver_sees_no_form_and_forged_posts_are_refused(page, live):
    run = waiting_run(live)
    sign_in(page, live, "root", f"/ui/runs/{run['id']}")  # an admin sees every run, but is no approver
    assert page.locator("#step-first .context").count() == 1
    assert page.locator("form.decision").count() == 0
    assert "may see this step but not decide" in page.locator("#step-first").inner_text()

    url = f"/ui/runs/{run['id']}/steps/first/decision"
    with signed_in_client(live, "bob") as bob, signed_in_client(live, "carol") as carol, \
            signed_in_client(live, "root") as root:
        assert bob.post(url, data={"decision": "approve"}).status_code == 403  # no CSRF token
        carol_token = csrf_of(carol.get(f"/ui/runs/{run['id']}").text)
        assert bob.post(url, data={"decision": "approve", "csrf_token": carol_token}).status_code == 403
        root_token = csrf_of(root.get("/ui/inbox").text)
        refused = root.post(url, data={"decision": "approve", "csrf_token": root_token})
        assert refused.status_code == 403 and "not an approver" in refused.text
        assert httpx.post(f"{live.url}{url}", data={"decision": "approve"}).status_code == 403  # no session
    assert live.run(run["id"])["steps"]["first"]["status"] == "waiting"


def test_every_page_has_the_strict_headers_and_errors_are_pages(live):
    run = waiting_run(live)
    with signed_in_client(live, "bob") as bob:
        for path in ("/ui/", "/ui/inbox", f"/ui/runs/{run['id']}", "/ui/runs", "/ui/releases", "/ui/nowhere",
                     "/ui/runs/20300101t000000z-00000000", "/ui/runs?status=bogus", "/ui/static/live.js",
                     "/ui/link/not-a-token", "/ui/artifacts/not-a-token", "/ui/resources/" + "0" * 64):
            response = bob.get(path)
            assert response.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.status_code < 500, (path, response.status_code)
            if response.headers["content-type"].startswith("text/html"):
                assert "Traceback" not in response.text and "<script>" not in response.text
                assert " style=" not in response.text, path
        assert bob.get("/ui/runs?status=bogus").status_code == 422
        assert bob.get("/ui/nowhere").status_code == 404
    # a sign-in form posted from elsewhere comes without the form's own cookie: refused
    assert httpx.post(f"{live.url}/ui/signin", data={"token": "bob", "csrf_token": "x"}, timeout=30).status_code == 403


def test_the_daemons_log_never_shows_a_links_token(tmp_path):
    secret_path = "tok3n-that-must-not-be-logged"
    with DaemonProcess(tmp_path, flows={"two-steps": TWO_STEPS}) as daemon:
        for path in (f"/ui/link/{secret_path}", f"/ui/artifacts/{secret_path}-2"):
            assert httpx.get(f"{daemon.url}{path}", timeout=30).status_code == 401
        assert httpx.get(f"{daemon.url}/ui/", timeout=30).status_code == 303
    assert secret_path not in daemon.log_path.read_text(errors="replace")


ANNOUNCED = """
name: announced
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    context: a change to look at
    notify: [chat]
    timeout: 1h
    on_timeout: reject
"""


def test_a_link_from_a_captured_webhook_notification_opens_the_page_as_that_approver(page, tmp_path):
    """The whole way: the daemon posts the wait's notification to a chat webhook; bob's own link from it
    opens the run page signed in as bob, for that step; his approval from the page ends the run."""
    with HttpServer({"POST /chat": lambda request, nth: json_reply(200, {"ok": True})}) as chat, \
            live_daemon(tmp_path, {"announced": ANNOUNCED},
                        channels={"chat": {"kind": "webhook", "url": f"{chat.url}/chat"}}) as live:
        run = live.start_run("announced", user="alice")
        live.wait_step(run["id"], "review")
        posts = wait_until(lambda: [r.json() for r in chat.requests if r.path == "/chat"] or None, timeout=20,
                           what="the wait's notification")
        mine = [link["url"] for link in posts[0]["links"] if link.get("user") == "bob"]
        assert len(mine) == 1 and mine[0].startswith(f"{live.url}/ui/link/"), posts[0]["links"]
        assert not any(link.get("user") == "alice" for link in posts[0]["links"])  # the starter gets none
        page.goto(mine[0])
        page.wait_for_url(f"**/ui/runs/{run['id']}*", timeout=WAIT_MS)
        assert "/ui/link/" not in page.url  # the token leaves the address bar at once
        assert page.locator("header .who").inner_text().strip() == "bob (this step only)"
        page.fill("#comment-review", "looks right")
        page.click("form.decision button.approve")
        ended = live.wait_end(run["id"])
        assert ended["status"] == "succeeded"
        assert ended["steps"]["review"]["decided_by"] == "bob"
        assert ended["steps"]["review"]["comment"] == "looks right"
