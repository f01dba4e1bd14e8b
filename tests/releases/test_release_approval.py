"""Four-eyes release approval, through the real daemon (a subprocess on loopback) over a real repository.

`signoff-release.yaml` in the flows repository says who must approve a new release; the rule
in force is read from the live release, never from the tag under review. A tag under a rule is
`pending approval` (the live version stays) until enough approvers other than its authors (its
tagger or committer, and whoever authored a commit since the live release, mapped to users by
`git_emails`) approve. A rejected release never goes live; a newer tag supersedes a pending one.

Users (tests/daemon_support.py): alice, bob, carol (run, approve; all in ops; carol in finance),
dave (run), rita (release), root (admin). The repository's git identity, "Test Author
<author@example.com>", is alice's; bob commits as bob@example.com. Polling is set to an hour, so
a tag reaches the daemon through the signed push webhook and a decision takes effect on its own.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from gitops_support import GitOpsDaemon, governed_daemon
from support import HttpServer, flow_text, git, json_reply, run_cli, simple_flow, wait_until, write_flow
from postgres_support import files_only

BOB = {"GIT_AUTHOR_NAME": "Bob Builder", "GIT_AUTHOR_EMAIL": "bob@example.com"}


def rules(**rule) -> str:
    return flow_text({"all": rule})


def launch(root: Path, rule: str, **kwargs) -> GitOpsDaemon:
    """deploy live at v1.0.0 (whose signoff-release.yaml is `rule`), the daemon started; alice and bob known
    to it by their git e-mail addresses."""
    return governed_daemon(root, simple_flow("deploy"), rule,
                           {"alice": ["author@example.com"], "bob": ["Bob@Example.com"]}, **kwargs)


def change(daemon: GitOpsDaemon, marker: str, *, rule: str | None = None, env: dict | None = None) -> str:
    write_flow(daemon.repo, "deploy", simple_flow("deploy", marker))
    if rule is not None:
        (daemon.repo / "signoff-release.yaml").write_text(rule)
    git(daemon.repo, "add", "-A")
    git(daemon.repo, "commit", "-q", "-m", f"deploy {marker}", env=env)
    return git(daemon.repo, "rev-parse", "HEAD")


def release(daemon: GitOpsDaemon, tag: str) -> dict:
    """Tag (annotated: alice is its tagger), tell the daemon, and wait until it is pending; the pending item."""
    daemon.tag(tag, message=f"ship {tag}")
    assert daemon.push_webhook().status_code == 202

    def pending() -> dict | None:
        return next((p for p in daemon.flows()["deploy"]["pending"] if p["tag"] == tag), None)

    return wait_until(pending, 15, message=lambda: f"{tag} pending; flows: {daemon.flows()['deploy']}")


def decide(daemon: GitOpsDaemon, user: str, version: str, decision: str = "approve", **body) -> httpx.Response:
    return daemon.api(user).post(f"/api/v1/releases/deploy/{version}/decision", json={"decision": decision, **body})


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    return response.json()["error"]["message"]


def releases_json(daemon: GitOpsDaemon) -> dict:
    code, out, err, doc = run_cli(["releases", "--json", "--repo", daemon.repo, "--data", daemon.data])
    assert code == 0, f"{out}\n{err}"
    return next(f for f in doc["flows"] if f["flow"] == "deploy")


@contextmanager
def signed_in(daemon: GitOpsDaemon, user: str) -> Iterator[httpx.Client]:
    """A browser's session on the web pages (cookies kept), signed in with `user`'s token."""
    with httpx.Client(base_url=daemon.url, timeout=30.0) as client:
        form = client.get("/ui/signin").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        answer = client.post("/ui/signin", data={"csrf_token": csrf, "token": daemon.tokens[user], "next": "/ui/"})
        assert answer.status_code == 303, answer.text
        yield client


@pytest.fixture
def daemons():
    started: list[GitOpsDaemon] = []
    yield started
    for daemon in started:
        daemon.close()


@files_only
def test_a_tag_under_a_rule_stays_pending_until_an_approver_other_than_its_tagger_approves(
        tmp_path: Path, daemons: list) -> None:
    told: list[dict] = []
    with HttpServer({"POST /chat": lambda request, n: (told.append(request.json()), json_reply(200, {}))[1]}) as chat:
        daemon = launch(tmp_path, rules(approvers=["alice", "group:finance"], notify=["chat"]),
                        channels={"chat": {"kind": "webhook", "url": f"{chat.url}/chat"}})
        daemons.append(daemon)
        commit = change(daemon, "two")
        item = release(daemon, "v1.1.0")
        wait_until(lambda: told, 15, what="the rule's channel to be told")
    assert "deploy v1.1.0 waits for release approval" in told[0]["message"]
    assert daemon.live_tag("deploy") == "v1.0.0"
    assert daemon.health()["repo"]["pending_approval"] == {"deploy": ["v1.1.0"]}
    assert (item["commit"], item["status"], item["base"]["tag"]) == (commit, "pending", "v1.0.0")
    assert item["rule"]["approvers"] == ["alice", "group:finance"] and item["rule"]["source"]["tag"] == "v1.0.0"
    assert "+    values: {marker: two}" in item["diff"] and item["validation"] == {"ok": True, "errors": []}
    assert item["authors"] == ["Test Author <author@example.com>"]
    assert daemon.start_run("deploy")["version"] == "v1.0.0"  # the live version did not change

    shown = releases_json(daemon)["pending"]
    assert [(p["tag"], p["status"], p["approvals"]) for p in shown] == [("v1.1.0", "pending", [])]
    code, out, err, _ = run_cli(["releases", "--repo", daemon.repo, "--data", daemon.data])
    assert code == 0 and "PENDING APPROVAL v1.1.0 (0/1)" in out, out + err

    assert "authored the release" in refused(decide(daemon, "alice", "1.1.0"), 403)
    assert "not an approver" in refused(decide(daemon, "bob", "1.1.0"), 403)
    assert "approve role" in refused(decide(daemon, "dave", "1.1.0"), 403)
    refused(decide(daemon, "root", "1.1.0", "maybe"), 422)
    refused(decide(daemon, "carol", "9.9.9"), 404)
    assert [p["tag"] for p in daemon.api("carol").get("/api/v1/releases/pending").json()["pending"]] == ["v1.1.0"]
    assert daemon.api("bob").get("/api/v1/releases/pending").json()["pending"] == []
    assert daemon.live_tag("deploy") == "v1.0.0"

    with signed_in(daemon, "carol") as page:  # carol decides on the releases page (CSRF-checked form)
        html = page.get("/ui/releases").text
        assert "pending approval" in html and "Approve release" in html and "{marker: two}" in html
        csrf = re.search(r'action="/ui/releases/deploy/1.1.0/decision"[^>]*>\s*<input type="hidden" '
                         r'name="csrf_token" value="([^"]+)"', html).group(1)
        assert page.post("/ui/releases/deploy/1.1.0/decision",
                         data={"decision": "approve", "comment": "looks right"}).status_code == 403  # no CSRF
        answer = page.post("/ui/releases/deploy/1.1.0/decision",
                           data={"csrf_token": csrf, "decision": "approve", "comment": "looks right"})
        assert answer.status_code == 303, answer.text
    assert daemon.live_tag("deploy") == "v1.1.0"  # at once, not at the next poll
    assert daemon.start_run("deploy")["version"] == "v1.1.0"
    refused(decide(daemon, "carol", "1.1.0"), 409)  # decided already

    history = releases_json(daemon)["history"]
    decision = next(h for h in history if h.get("release_decision"))
    assert (decision["by"], decision["comment"], decision["status"], decision["tag"]) == (
        "carol", "looks right", "approved", "v1.1.0") and decision["at"].endswith("Z")
    assert history[-1]["tag"] == "v1.1.0" and history[-1]["approved_by"] == ["carol"]
    assert releases_json(daemon)["pending"] == []


def test_a_tag_that_lowers_its_own_bar_is_judged_by_the_live_rule(tmp_path: Path, daemons: list) -> None:
    daemon = launch(tmp_path, rules(approvers=["group:ops"], min_approvals=2))
    daemons.append(daemon)
    change(daemon, "two", rule=rules(approvers=["group:ops"], min_approvals=1, allow_self_approval=True))
    item = release(daemon, "v1.1.0")
    assert item["rule"]["min_approvals"] == 2 and item["rule"]["allow_self_approval"] is False
    assert "+  allow_self_approval: true" in item["diff"]  # approvers see the rule change too

    assert "authored the release" in refused(decide(daemon, "alice", "1.1.0"), 403)
    first = daemon.cli("release-approve", "deploy", "1.1.0", "-m", "one of two", "--json", user="bob")
    assert first.returncode == 0, first.stderr
    assert '"status": "pending"' in first.stdout
    assert daemon.live_tag("deploy") == "v1.0.0"  # one approval is not the live rule's two
    refused(decide(daemon, "bob", "1.1.0"), 409)  # the same person twice is not two
    assert decide(daemon, "carol", "1.1.0").json()["status"] == "approved"
    assert daemon.live_tag("deploy") == "v1.1.0"

    change(daemon, "three")  # now v1.1.0's rule is live: one approval, self-approval allowed
    release(daemon, "v1.2.0")
    assert decide(daemon, "alice", "1.2.0").json()["status"] == "approved"
    assert daemon.live_tag("deploy") == "v1.2.0"


@files_only
def test_a_newer_tag_supersedes_a_pending_one_and_a_rejected_release_never_goes_live(
        tmp_path: Path, daemons: list) -> None:
    daemon = launch(tmp_path, rules(approvers=["group:ops"]))
    daemons.append(daemon)
    change(daemon, "two", env=BOB)  # bob wrote the change; alice tags it
    item = release(daemon, "v1.1.0")
    assert item["authors"] == ["Test Author <author@example.com>", "Bob Builder <bob@example.com>"]
    assert "authored the release" in refused(decide(daemon, "bob", "1.1.0"), 403)

    change(daemon, "three")
    release(daemon, "v1.2.0")
    entry = releases_json(daemon)
    assert [p["tag"] for p in entry["pending"]] == ["v1.2.0"]
    assert "superseded" in refused(decide(daemon, "carol", "1.1.0"), 409)
    superseded = next(h for h in entry["history"] if h.get("approval") == "superseded")
    assert (superseded["tag"], superseded["superseded_by"]) == ("v1.1.0", "v1.2.0")

    rejected = decide(daemon, "carol", "v1.2.0", "reject", comment="breaks refunds")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected", rejected.text
    assert daemon.live_tag("deploy") == "v1.0.0"
    assert daemon.push_webhook().status_code == 202
    daemon.wait_live("deploy", "v1.0.0")
    assert daemon.health()["repo"]["pending_approval"] == {}
    refused(decide(daemon, "bob", "1.2.0"), 409)
    assert "rejected" in refused(daemon.api("root").post("/api/v1/flows/deploy/pin", json={"version": "1.2.0"}), 422)
    decision = next(h for h in releases_json(daemon)["history"] if h.get("release_decision") == "reject")
    assert (decision["by"], decision["comment"], decision["tag"]) == ("carol", "breaks refunds", "v1.2.0")
    assert daemon.live_tag("deploy") == "v1.0.0"
