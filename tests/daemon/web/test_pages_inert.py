"""Untrusted content renders inert, in a real Chromium against the real daemon app.

A context, a step name, a log and artifacts holding `<script>`, `<img onerror>`,
`javascript:` links and an SVG with script: no dialog fires, no script runs, the
CSP reports nothing, and the raw bytes of HTML and SVG are served as
attachments of type text/plain with nosniff. Images that are really images are
shown inline; a signed artifact link opens one artifact without a session.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from daemon.web.pages_support import Live, live_daemon, sign_in
from runner.daemon.web import links

ATTACKS = "<script>window.pwned=1;alert(1)</script> <img src=x onerror=\"window.pwned=2;alert(2)\">"
EVIL = f"""
name: evil
steps:
  - id: make
    name: "<img src=x onerror=alert(8)>"
    kind: shell
    run: |
      mkdir -p "$SIGNOFF_ARTIFACTS"
      cat > "$SIGNOFF_ARTIFACTS/page.html" <<"EOF"
      <html><body><script>window.pwned=3;alert(3)</script></body></html>
      EOF
      cat > "$SIGNOFF_ARTIFACTS/pic.svg" <<"EOF"
      <svg xmlns="http://www.w3.org/2000/svg" onload="alert(4)"><script>window.pwned=4;alert(4)</script></svg>
      EOF
      cat > "$SIGNOFF_ARTIFACTS/notes.md" <<"EOF"
      # Notes
      {ATTACKS}
      [click me](javascript:alert(5)) ![pixel](javascript:alert(6)) <a href="javascript:alert(7)">raw</a>
      EOF
      echo iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg== \\
        | base64 -d > "$SIGNOFF_ARTIFACTS/dot.png"
      echo '{ATTACKS}'
    timeout: 1m
  - id: review
    kind: approval
    approvers: [group:ops]
    context: |
      ## Untrusted
      {ATTACKS}
      [click me](javascript:alert(9)) [data](data:text/html,<script>alert(10)</script>)
      ![svg](${{{{ steps.make.outputs.artifacts['pic.svg'] }}}})
    links: [{{title: "<b>bold</b>", url: "javascript:alert(11)"}}]
    timeout: 1h
    on_timeout: reject
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with live_daemon(tmp_path_factory.mktemp("pages-inert"), {"evil": EVIL}) as running:
        yield running


def watch_dialogs(page: Any) -> list[str]:
    """Every dialog the page opens (dismissed at once), so a test can assert there was none."""
    opened: list[str] = []

    def on_dialog(dialog: Any) -> None:  # runs on the browser's loop
        opened.append(dialog.message)
        page._runner.loop.create_task(dialog.dismiss())

    page._runner.run(lambda: page._target.on("dialog", on_dialog))
    return opened


def assert_inert(page: Any, dialogs: list[str]) -> None:
    assert dialogs == []
    assert page.evaluate("window.pwned === undefined")
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert page.evaluate("document.querySelectorAll('[onerror], [onload], [onclick]').length") == 0
    assert page.evaluate("[...document.querySelectorAll('a[href], img[src]')].filter("
                         "e => /^(javascript|data):/i.test(e.getAttribute('href') || e.getAttribute('src'))).length") == 0
    assert page.csp_violations == [], page.csp_violations
    assert page.page_errors == []


def test_contexts_logs_and_artifacts_render_inert(page, live):
    run = live.start_run("evil", user="alice")
    waiting = live.wait_step(run["id"], "review")
    dialogs = watch_dialogs(page)
    sign_in(page, live, "bob", f"/ui/runs/{run['id']}")
    context = page.locator("#step-review .context")
    assert "<script>" in context.inner_text()  # shown as text, never run
    assert "<script>" in page.locator("#step-make pre").first.inner_text()
    assert "<img src=x" in page.locator("#step-make h3").inner_text()
    assert page.locator("#step-review ul.links a").get_attribute("href") == "#"
    assert_inert(page, dialogs)

    artifacts = waiting["steps"]["make"]["outputs"]["artifacts"]
    shas = {name: ref.removeprefix("res://") for name, ref in artifacts.items()}
    for name in ("notes.md", "page.html", "pic.svg", "dot.png"):
        page.goto(f"{live.url}/ui/resources/{shas[name]}")
        assert page.locator("main > h1").inner_text() == name
        assert_inert(page, dialogs)
    page.goto(f"{live.url}/ui/resources/{shas['notes.md']}")
    assert page.locator(".artifact-markdown h1").inner_text() == "Notes"
    page.goto(f"{live.url}/ui/resources/{shas['pic.svg']}")
    assert page.locator(".artifact img").count() == 0 and "not shown here" in page.locator(".artifact").inner_text()
    page.goto(f"{live.url}/ui/resources/{shas['dot.png']}")
    page.wait_for_function("document.querySelector('.artifact img').complete", timeout=10_000)
    assert page.evaluate("document.querySelector('.artifact img').naturalWidth") == 1


def test_raw_bytes_carry_a_safe_type_and_disposition(live):
    run = live.start_run("evil", user="alice")
    waiting = live.wait_step(run["id"], "review")
    shas = {name: ref.removeprefix("res://") for name, ref in waiting["steps"]["make"]["outputs"]["artifacts"].items()}
    with httpx.Client(base_url=live.url, timeout=30) as client:
        form = client.get("/ui/signin").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        client.post("/ui/signin", data={"csrf_token": csrf, "token": "bob", "next": "/ui/"})
        expected = {"page.html": ("text/plain", "attachment"), "pic.svg": ("text/plain", "attachment"),
                    "notes.md": ("text/plain", "inline"), "dot.png": ("image/png", "inline")}
        for name, (media, disposition) in expected.items():
            raw = client.get(f"/ui/resources/{shas[name]}/raw")
            assert raw.status_code == 200, name
            assert raw.headers["content-type"].startswith(media), (name, raw.headers["content-type"])
            assert raw.headers["content-disposition"].startswith(disposition), name
            assert raw.headers["x-content-type-options"] == "nosniff"
        assert client.get(f"/ui/resources/{shas['dot.png']}/raw").content.startswith(b"\x89PNG")
    with httpx.Client(base_url=live.url, timeout=30) as stranger:  # no session: sign in first
        assert stranger.get(f"/ui/resources/{shas['notes.md']}/raw").status_code == 303


def test_a_signed_artifact_link_opens_that_artifact_without_a_session(page, live):
    run = live.start_run("evil", user="alice")
    waiting = live.wait_step(run["id"], "review")
    sha = waiting["steps"]["make"]["outputs"]["artifacts"]["notes.md"].removeprefix("res://")
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    token = links.sign_resource(live.daemon.web_secrets, run["id"], sha, later)
    dialogs = watch_dialogs(page)
    assert page.goto(f"{live.url}/ui/artifacts/{token}").status == 200
    assert page.locator(".artifact-markdown h1").inner_text() == "Notes"
    assert_inert(page, dialogs)
    expired = links.sign_resource(live.daemon.web_secrets, run["id"], sha, datetime.now(timezone.utc))
    assert page.goto(f"{live.url}/ui/artifacts/{expired}").status == 401
    other = links.sign_resource(live.daemon.web_secrets, "20300101t000000z-00000000", sha, later)
    assert page.goto(f"{live.url}/ui/artifacts/{other}").status == 404  # not an artifact of that run
    decision = links.sign(live.daemon.web_secrets, run["id"], sha, "bob", later)
    assert page.goto(f"{live.url}/ui/artifacts/{decision}").status == 401  # a decision link is no artifact link
