"""What approvers of a pending release see and how they reach it, through the real daemon over a real repository.

When a tag under a release rule becomes pending, the daemon replays the live version's recent
ended runs against the flow as committed at the tag (nothing executed: a repaired step that
would write a file writes nothing) and keeps the summary with the pending release: the API,
`signoff releases --json` and the releases page show it, each run linked to its page. The
rule's channels get one signed link per approver; a link opens the release's own page for
that approver only (a GET never decides), whose form posts with CSRF.

Users (tests/daemon_support.py): alice (the repository's git identity, so the tagger), bob,
carol (finance), dave (run only), root (admin). The rule: one approval from group:finance.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from gitops_support import GitOpsDaemon, governed_daemon
from support import HttpServer, flow_text, git, json_reply, run_cli, wait_until, write_flow

from runner.daemon.web import links
from runner.daemon.web.context import Pages
from runner.errors import Unauthorized


def checked_flow(limit: int, *, touch: Path | None = None) -> str:
    """deploy: a shell check that passes for n under `limit` (the repair raises it, and would touch a file)."""
    command = f"test ${{{{ inputs.n }}}} -lt {limit}"
    if touch is not None:
        command = f"touch {touch} && {command}"
    return ("name: deploy\ndescription: deploy after a check\ninputs:\n  n: {type: number, default: 1}\n"
            f"steps:\n  - id: check\n    kind: shell\n    run: {command}\n"
            "  - id: mark\n    kind: set\n    values: {marker: done}\n")


def launch(root: Path, channels: dict) -> GitOpsDaemon:
    """deploy live at v1.0.0 under a rule (one approval from group:finance, told to `chat`); alice is the
    repository's author."""
    rule = flow_text({"all": {"approvers": ["group:finance"], "notify": ["chat"]}})
    return governed_daemon(root, checked_flow(5), rule, {"alice": ["author@example.com"]}, channels=channels)


def pending_with_replay(daemon: GitOpsDaemon, tag: str) -> dict:
    def found() -> dict | None:
        item = next((p for p in daemon.flows()["deploy"]["pending"] if p["tag"] == tag), None)
        return item if item and item.get("replay") else None
    return wait_until(found, 20, message=lambda: f"{tag} pending with its replay: {daemon.flows()['deploy']}")


@pytest.fixture
def daemons():
    started: list[GitOpsDaemon] = []
    yield started
    for daemon in started:
        daemon.close()


def test_approvers_see_the_replay_summary_and_decide_through_their_signed_link(tmp_path: Path, daemons) -> None:
    told: list[dict] = []
    touched = tmp_path / "the-repair-ran"
    with HttpServer({"POST /chat": lambda request, n: (told.append(request.json()), json_reply(200, {}))[1]}) as chat:
        daemon = launch(tmp_path, {"chat": {"kind": "webhook", "url": f"{chat.url}/chat"}})
        daemons.append(daemon)
        passed = daemon.wait_end(daemon.start_run("deploy", {"n": 1})["id"])
        failed = daemon.wait_end(daemon.start_run("deploy", {"n": 7})["id"])
        assert (passed["status"], failed["status"]) == ("succeeded", "failed")

        write_flow(daemon.repo, "deploy", checked_flow(50, touch=touched))
        git(daemon.repo, "commit", "-q", "-am", "raise the limit")
        daemon.tag("v1.1.0", message="ship the repair")
        assert daemon.push_webhook().status_code == 202
        item = pending_with_replay(daemon, "v1.1.0")
        wait_until(lambda: told, 15, what="the rule's channel to be told")

    # the replay: the failed run reaches succeeded with the repaired step changed; nothing ran
    replay = item["replay"]
    assert replay["error"] is None and replay["against"] == {"tag": "v1.1.0", "commit": item["commit"]}
    summary = replay["summary"]
    assert (summary["runs"], summary["statuses"], summary["recorded_statuses"]) == (
        2, {"succeeded": 2}, {"failed": 1, "succeeded": 1})
    assert summary["outcome_changed"] == [failed["id"]] and summary["verdicts"]["changed"] == 2
    first = replay["runs"][0]  # failed runs first
    assert (first["run"], first["recorded"], first["status"]) == (failed["id"], "failed", "succeeded")
    assert first["url"] == f"{daemon.url}/ui/runs/{failed['id']}"
    check = next(s for s in first["steps"] if s["step"] == "check")
    assert (check["verdict"], check["old_status"], check["status"], check["assumed"]) == (
        "changed", "failed", "succeeded", True)
    assert not touched.exists()  # the repair's command was never executed
    assert daemon.live_tag("deploy") == "v1.0.0"

    shown = daemon.api("carol").get("/api/v1/releases/pending").json()["pending"]
    assert shown[0]["replay"] == replay
    if (Path(daemon.data) / "releases" / "approvals.json").exists():  # the release state is in the data dir
        code, out, err, doc = run_cli(["releases", "--json", "--repo", daemon.repo, "--data", daemon.data])
        assert code == 0, err
        assert next(f for f in doc["flows"] if f["flow"] == "deploy")["pending"][0]["replay"] == replay
        code, out, err, _ = run_cli(["releases", "--repo", daemon.repo, "--data", daemon.data])
        assert "PENDING APPROVAL v1.1.0 (0/1) replayed 2 run(s): would end 2 succeeded" in out, out + err

    daemon.restart()  # the summary is kept with the pending release, not made again
    assert pending_with_replay(daemon, "v1.1.0")["replay"] == replay

    # the notification: a signed link for carol (the one approver), none for alice (the tagger)
    titles = [link["title"] for link in told[0]["links"]]
    assert "decide as carol" in titles and "decide as alice" not in titles
    link = next(link["url"] for link in told[0]["links"] if link["title"] == "decide as carol")
    assert link.startswith(f"{daemon.url}/ui/release-link/")

    with httpx.Client(base_url=daemon.url, timeout=30.0) as browser:
        assert browser.get(link.replace("/release-link/", "/release-link/x")).status_code == 401  # forged
        opened = browser.get(link)
        assert opened.status_code == 303 and opened.headers["location"] == "/ui/releases/deploy/1.1.0"
        page = browser.get("/ui/releases/deploy/1.1.0")
        html = page.text
        assert page.status_code == 200 and "Approve release" in html and "(this release only)" in html
        assert f'<a href="/ui/runs/{failed["id"]}">{failed["id"]}</a>' in html
        assert "check: changed (assumed)" in html and "2 run(s) replayed against v1.1.0" in html
        assert daemon.live_tag("deploy") == "v1.0.0"  # opening the link decided nothing
        # the link's session reaches this release only
        assert "why=limited" in browser.get("/ui/releases").headers["location"]
        assert "why=limited" in browser.get(f"/ui/runs/{failed['id']}").headers["location"]
        assert browser.get("/ui/releases/deploy/9.9.9").status_code == 303
        assert browser.post("/ui/releases/deploy/1.1.0/decision", data={"decision": "approve"}).status_code == 403
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        answer = browser.post("/ui/releases/deploy/1.1.0/decision",
                              data={"csrf_token": csrf, "decision": "approve", "comment": "replay is clean"})
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/releases/deploy/1.1.0?decided=1"
        done = browser.get(answer.headers["location"]).text
        assert "Your decision was recorded" in done and "approved" in done and "replay is clean" in done
        assert daemon.live_tag("deploy") == "v1.1.0"
        assert browser.get(link).status_code == 409  # the release no longer waits
    assert not touched.exists()


def test_the_replay_summary_on_the_page_is_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    replay = {"error": None, "last": 10, "against": {"tag": "v1.1.0"}, "runs": [
        {"run": hostile, "recorded": "failed", "status": "failed", "error": hostile, "stopped_at": None,
         "steps": [{"step": hostile, "visit": 1, "verdict": "changed", "assumed": False}]}],
        "summary": {"runs": 1, "verdicts": {"changed": 1}, "statuses": {"failed": 1},
                    "recorded_statuses": {"failed": 1}}}
    html = str(Pages(None).env.get_template("release_parts.html").module.replay_summary(replay))
    assert "<script>" not in html and html.count("&lt;script&gt;") == 4
    failed = str(Pages(None).env.get_template("release_parts.html").module.replay_summary(
        {"error": hostile, "runs": []}))
    assert "<script>" not in failed and "Not replayed: &lt;script&gt;" in failed


def test_a_release_token_is_scoped_to_its_purpose() -> None:
    secret, now = ["old-secret", "new-secret"], datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    later = now + timedelta(days=7)
    token = links.sign_release(secret, "deploy", "v1.1.0", "carol", later)
    grant = links.verify_release(secret, token, now)
    assert (grant.flow, grant.tag, grant.user) == ("deploy", "v1.1.0", "carol") and grant.expires_at == later
    assert links.verify_release(["new-secret"], token, now).user == "carol"  # signed with the newest
    with pytest.raises(Unauthorized, match="expired"):
        links.verify_release(secret, token, later)
    with pytest.raises(Unauthorized, match="not valid"):  # a release token never opens a step, nor back
        links.verify(secret, token, now)
    with pytest.raises(Unauthorized, match="not valid"):
        links.verify_release(secret, links.sign(secret, "run-1", "review", "carol", later), now)
