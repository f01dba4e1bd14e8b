"""The pages' pure pieces: what an artifact is shown as, safe redirects, diff views, form errors."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from runner.daemon.web.artifacts import classify
from runner.daemon.web.decisions import decision_body, field_errors
from runner.daemon.web.signin import safe_next
from runner.daemon.web.views import diff_code_blocks, diff_lines, span, time_left
from runner.errors import Invalid

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


@pytest.mark.parametrize("name, media, head, kind", [
    ("dot.png", "application/octet-stream", PNG, "image"),
    ("fake.png", "image/png", b"<svg onload=alert(1)>", "download"),  # the bytes decide, not the name
    ("pic.svg", "image/svg+xml", b"<svg/>", "download"),
    ("page.html", "application/octet-stream", b"<html>", "download"),
    ("x", "text/html", b"<p>", "download"),
    ("notes.md", "application/octet-stream", b"# hi", "markdown"),
    ("run.log", "application/octet-stream", b"line\n", "text"),
    ("blob.bin", "application/octet-stream", b"\0\1\2", "download"),
])
def test_what_an_artifact_is_shown_as(name, media, head, kind):
    assert classify(name, media, head) == kind


@pytest.mark.parametrize("target, expected", [
    ("/ui/runs/r1", "/ui/runs/r1"), ("https://evil.example/", "/ui/"), ("//evil.example/ui/", "/ui/"),
    ("/ui//evil.example", "/ui/"), ("/ui/\\evil", "/ui/"), (None, "/ui/"), ("/api/v1/runs", "/ui/"),
])
def test_sign_in_goes_back_only_to_our_own_pages(target, expected):
    assert safe_next(target) == expected


def test_diff_views_keep_the_text_escaped():
    html = "<pre><code>--- a/x\n+++ b/x\n-&lt;script&gt;\n+new\n</code></pre>"
    shown = diff_code_blocks(html)
    assert '<span class="diff-del">-&lt;script&gt;</span>' in shown and "<script>" not in shown
    assert diff_code_blocks("<pre><code>just code</code></pre>") == "<pre><code>just code</code></pre>"
    assert [kind for kind, _ in diff_lines("@@ -1 +1 @@\n same")] == ["diff-hunk", "diff-same"]


def test_times_read_at_a_glance():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert time_left("2030-01-01T02:30:00Z", now) == "2h 30m left"
    assert time_left("2029-12-31T23:00:00Z", now) == "overdue"
    assert span(45) == "45s" and span(90061) == "1d 1h"


def test_the_form_becomes_the_apis_decision_body_and_its_errors_go_beside_the_fields():
    body = decision_body({"decision": "approve", "comment": "", "input.ticket": "12", "input.note": " ",
                          "csrf_token": "t", "context_sha256": "abc"})
    assert body == {"decision": "approve", "comment": None, "inputs": {"ticket": "12"}, "context_sha256": "abc"}
    error = Invalid("reviewer inputs are not valid", ["ticket: 'x' is not of type 'integer'"], fields=["inputs.ticket"])
    assert field_errors(error) == {"inputs.ticket": "'x' is not of type 'integer'"}
