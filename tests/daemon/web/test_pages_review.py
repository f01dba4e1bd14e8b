"""A reviewer's way through the pages in a real Chromium, against the real daemon app on a loopback port.

Sign in, find the approval in the inbox, read its context, diff and artifact,
decide it (reject with a comment; approve with reviewer inputs the next step
uses), a quorum that needs two different people, and a run page that follows
the run by itself when a callback resumes it. The screenshots in
docs/screenshots/ are taken here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.web.pages_support import WAIT_MS, Live, live_daemon, shown, sign_in

SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"

CHANGE = """
name: change
description: Prepare a config change, review its diff, apply it
steps:
  - id: prepare
    kind: shell
    run: |
      mkdir -p "$SIGNOFF_ARTIFACTS"
      printf '# Rollout plan\\n\\nSet **max** to 200, one host at a time.\\n' > "$SIGNOFF_ARTIFACTS/plan.md"
      printf -- '--- a/app.conf\\n+++ b/app.conf\\n@@ -1,2 +1,2 @@\\n name = app\\n-max = 100\\n+max = 200\\n'
    timeout: 1m
  - id: review
    kind: approval
    name: Review the change
    approvers: [group:ops]
    scope: apply
    context: |
      ## Change to app.conf

      Raise the connection limit. Read [the rollout plan](${{ steps.prepare.outputs.artifacts['plan.md'] }}).

      ```diff
      ${{ steps.prepare.outputs.stdout }}
      ```
    inputs:
      ticket: {type: integer, required: true, description: The change ticket this belongs to}
    require_comment: reject
    links: [{title: Runbook, url: "https://runbooks.example.com/app"}]
    timeout: 4h
    on_timeout: reject
  - id: apply
    kind: shell
    run: echo applying for ticket ${{ steps.review.outputs.inputs.ticket }}
    timeout: 1m
"""
QUORUM = """
name: quorum
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    min_approvals: 2
    context: two people, please
    timeout: 1h
    on_timeout: reject
  - id: after
    kind: set
    values: {ok: true}
"""
WORKER = """
name: worker
steps:
  - id: start
    kind: set
    values: {job: 42}
  - id: done
    kind: callback
    timeout: 1h
    on_timeout: fail
  - id: report
    kind: set
    values: {result: "${{ steps.done.outputs.payload.result }}"}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with live_daemon(tmp_path_factory.mktemp("pages-review"),
                     {"change": CHANGE, "quorum": QUORUM, "worker": WORKER}) as running:
        yield running


@contextmanager
def another_page(browser: Any) -> Iterator[Any]:
    """A second browser context: another person at another computer (cookies of their own)."""
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def test_sign_in_inbox_context_diff_artifact_then_reject_with_a_comment(page, live):
    run = live.start_run("change", user="alice")
    live.wait_step(run["id"], "review")
    sign_in(page, live, "bob")
    card = page.locator(f"li.card[data-run='{run['id']}']")
    assert card.count() == 1
    assert "0 of 1" in card.locator(".quorum").inner_text()
    assert "left" in card.locator(".left").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "inbox.png"), full_page=True)

    card.locator("a.open").click()
    page.wait_for_url(f"**/ui/runs/{run['id']}*", timeout=WAIT_MS)
    step = page.locator("#step-review")
    assert "Change to app.conf" in step.locator(".context h2").inner_text()
    assert "+max = 200" in step.locator(".context pre").inner_text()  # the diff in the context
    assert step.locator(".scope").inner_text() == "apply"
    assert "timeout never approves" in step.inner_text()
    diff = page.locator("#step-prepare pre.diff")
    assert diff.locator(".diff-add").first.inner_text() == "+max = 200"
    assert diff.locator(".diff-del").first.inner_text() == "-max = 100"
    assert page.locator("#step-prepare ul.artifacts a", has_text="plan.md").count() == 1
    page.set_viewport_size({"width": 375, "height": 900})
    step.screenshot(path=str(SCREENSHOTS / "decision.png"))
    page.set_viewport_size({"width": 1280, "height": 900})

    step.locator(".context a", has_text="the rollout plan").click()  # the res:// link of the context
    page.wait_for_url("**/ui/resources/*", timeout=WAIT_MS)
    assert page.locator(".artifact-markdown h1").inner_text() == "Rollout plan"
    assert page.locator(".artifact-markdown strong").inner_text() == "max"
    page.go_back()

    page.fill("#comment-review", "")  # a rejection needs a comment: the server says so beside the field
    page.click("#step-review button.reject")
    shown(page, "#error-comment", "comment is required")
    assert page.locator("#comment-review").get_attribute("aria-invalid") == "true"
    assert live.run(run["id"])["steps"]["review"]["status"] == "waiting"

    page.fill("#comment-review", "not during the freeze")
    page.click("#step-review button.reject")
    shown(page, "#run-status", "rejected")
    ended = live.wait_end(run["id"])
    assert ended["status"] == "rejected"
    assert ended["steps"]["review"]["comment"] == "not during the freeze"
    assert "not during the freeze" in page.locator("#step-review .decisions").inner_text()
    assert page.locator("#step-review form.decision").count() == 0
    assert page.csp_violations == [] and page.page_errors == []


def test_approve_with_reviewer_inputs_and_the_next_step_uses_them(page, live):
    run = live.start_run("change", user="alice")
    live.wait_step(run["id"], "review")
    sign_in(page, live, "carol", f"/ui/runs/{run['id']}")
    page.fill("#input-ticket", "forty-two")  # not an integer: refused on the server, shown beside the field
    page.click("#step-review button.approve")
    shown(page, "#error-ticket", "not a valid integer")
    assert page.locator("#input-ticket").input_value() == "forty-two"  # what was typed is kept
    page.fill("#input-ticket", "4242")
    page.click("#step-review button.approve")
    ended = live.wait_end(run["id"])
    assert ended["status"] == "succeeded", ended
    assert ended["steps"]["review"]["inputs"] == {"ticket": 4242}
    assert "applying for ticket 4242" in ended["steps"]["apply"]["outputs"]["stdout"]
    shown(page, "#run-status", "succeeded")
    page.locator("#step-apply pre", has_text="applying for ticket 4242").wait_for(timeout=WAIT_MS)
    page.locator("section.timeline-box").screenshot(path=str(SCREENSHOTS / "timeline.png"))
    assert page.csp_violations == [] and page.page_errors == []


def test_a_quorum_of_two_needs_two_different_people(page, browser, live):
    run = live.start_run("quorum", user="alice")
    live.wait_step(run["id"], "review")
    sign_in(page, live, "bob", f"/ui/runs/{run['id']}")
    page.click("#step-review button.approve")
    shown(page, "#step-review .quorum", "1 of 2")
    assert "bob" in page.locator("#step-review .quorum").inner_text()
    assert page.locator("#step-review form.decision").count() == 0  # bob has had his say
    assert "You approved" in page.locator("#step-review").inner_text()
    assert live.run(run["id"])["steps"]["review"]["status"] == "waiting"
    page.goto(f"{live.url}/ui/inbox")
    assert page.locator(f"li.card[data-run='{run['id']}']").count() == 0

    with another_page(browser) as carol:
        sign_in(carol, live, "carol", "/ui/inbox")
        assert "1 of 2" in carol.locator(f"li.card[data-run='{run['id']}'] .quorum").inner_text()
        carol.goto(f"{live.url}/ui/runs/{run['id']}")
        carol.click("#step-review button.approve")
    assert live.wait_end(run["id"])["status"] == "succeeded"
    assert [a["by"] for a in live.run(run["id"])["steps"]["review"]["approvals"]] == ["bob", "carol"]


def test_the_run_page_follows_the_run_when_a_callback_resumes_it(page, live):
    run = live.start_run("worker", user="alice")
    waiting = live.wait_step(run["id"], "done")
    sign_in(page, live, "alice", f"/ui/runs/{run['id']}")
    assert page.locator("#run-status").inner_text() == "waiting"
    assert page.locator("script[src='/ui/static/live.js']").count() == 1
    token = waiting["callbacks"]["done"]
    answer = httpx.post(f"{live.url}/callbacks/{token}", json={"result": "green"}, timeout=30)
    assert answer.status_code == 202, answer.text
    shown(page, "#run-status", "succeeded")  # nobody reloaded: the page's script did
    assert "green" in page.locator("#step-done .callbacks").inner_text()
    assert page.csp_violations == [] and page.page_errors == []


def test_runs_list_filters_and_the_releases_page(page, live):
    live.start_run("quorum", user="bob")
    sign_in(page, live, "bob", "/ui/runs")
    page.select_option("#f-status", "waiting")
    page.fill("#f-by", "bob")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/ui/runs?*status=waiting*", timeout=WAIT_MS)
    rows = page.locator("table.runs tbody tr")
    assert rows.count() >= 1
    for index in range(rows.count()):
        text = rows.nth(index).inner_text()
        assert "waiting" in text and "bob" in text
    page.goto(f"{live.url}/ui/releases")
    assert page.locator("article.release#flow-change").count() == 1


def test_phone_width_labels_keyboard_and_sign_out(page, live):
    run = live.start_run("change", user="alice")
    live.wait_step(run["id"], "review")
    page.set_viewport_size({"width": 375, "height": 800})
    sign_in(page, live, "bob", f"/ui/runs/{run['id']}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than a phone
    for field in page.locator("form.decision input:not([type=hidden]), form.decision select, "
                              "form.decision textarea").all():
        assert page.locator(f"label[for='{field.get_attribute('id')}']").count() == 1
    page.focus("#input-ticket")
    page.keyboard.type("77")
    page.keyboard.press("Tab")  # to the comment
    page.keyboard.press("Tab")  # to Approve
    assert page.evaluate("document.activeElement.className") == "approve"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # visible focus
    page.keyboard.press("Enter")
    assert live.wait_end(run["id"])["steps"]["review"]["inputs"] == {"ticket": 77}

    page.click("form.signout button")
    page.wait_for_url("**/ui/signin?why=signedout", timeout=WAIT_MS)
    page.goto(f"{live.url}/ui/inbox")
    assert "/ui/signin" in page.url
