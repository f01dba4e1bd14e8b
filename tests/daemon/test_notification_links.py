"""The links in notifications (issue 12): a page for every link, a signed decision link per approver.

The real daemon, built as `signoff serve` builds it, runs in the test's loop on a
ManualClock; its webhook channel posts to a real HTTP receiver on loopback, its
smtp channel mails a real aiosmtpd server and its log channel writes through
logging. Users (tests/daemon_support.py): alice, bob and carol have the approve
role and are in group ops; dave is in ops too but may not approve. alice starts every run, so she gets no link to approve it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller

from daemon_support import InProcessDaemon
from support import (HttpServer, ManualClock, all_file_bytes, eventually, free_port, json_reply, signoff_cmd,
                     signoff_env)

from runner.daemon.web.links import verify, verify_resource
from runner.errors import Forbidden, Unauthorized
from postgres_support import files_only

PUBLIC_URL = "https://signoff.example.test"
T0 = datetime(2030, 3, 4, 9, 0, tzinfo=timezone.utc)
DEADLINE = T0 + timedelta(hours=1)
SHIP = """
name: ship
steps:
  - id: plan
    kind: shell
    run: echo "the plan" > "$SIGNOFF_ARTIFACTS/plan.txt"
    timeout: 1m
  - id: review
    kind: approval
    approvers: [group:ops]
    context: read the plan first
    links:
      - {title: plan, url: "${{ steps.plan.outputs.artifacts['plan.txt'] }}"}
      - {title: ticket, url: "https://tickets.example.test/OPS-7"}
    notify: [chat, audit, mail]
    remind_before: 10m
    timeout: 1h
    on_timeout: fail
"""


class MailBox:
    """An aiosmtpd handler that keeps the text of every mail it receives."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.texts.append(message_from_bytes(envelope.content, policy=policy.default).get_content())
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def mail():
    box = MailBox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@pytest.fixture
def chat(mail):
    with HttpServer({"POST /chat": lambda request, nth: json_reply(200, {"ok": True})}) as server:
        server.mail_port = mail[1]
        yield server


def world_with(root: Path, chat: HttpServer, clock: ManualClock, flows: dict[str, str] | None = None,
               **server: Any) -> InProcessDaemon:
    """The daemon's world: the ship flow, the users, the chat webhook, the mail channel and `server` settings."""
    InProcessDaemon.lay_out(root, flows or {"ship": SHIP}, users=True)
    path = root / "signoff.yaml"
    config = yaml.safe_load(path.read_text())
    config["server"].update(public_url=PUBLIC_URL, **server)
    config["channels"]["chat"] = {"kind": "webhook", "url": f"{chat.url}/chat"}
    config["channels"]["mail"] = {"kind": "smtp", "host": "127.0.0.1", "port": chat.mail_port,
                                  "from": "signoff@example.test", "to": ["reviewers@example.test"]}
    path.write_text(json.dumps(config, indent=2))
    return InProcessDaemon(root, clock)


def posted(chat: HttpServer) -> list[dict]:
    return [request.json() for request in chat.requests if request.path == "/chat"]


def notified(world: InProcessDaemon, run_id: str) -> list[dict]:
    return [e for e in world.daemon.store.read_events(run_id) if e["type"] == "notification"]


def token_of(url: str, page: str) -> str:
    prefix = f"{PUBLIC_URL}/ui/{page}/"
    assert url.startswith(prefix), url
    return url[len(prefix):]


def decision_links(post: dict) -> dict[str, str]:
    """user -> token, from the `decide as` links of a webhook post."""
    found = {link["user"]: token_of(link["url"], "link") for link in post["links"] if link.get("user")}
    assert [link["title"] for link in post["links"] if link.get("user")] == [f"decide as {u}" for u in found]
    return found


async def wait_announced(world: InProcessDaemon, chat: HttpServer, count: int = 1) -> str:
    """Start a ship run as alice; its id once `count` webhooks about it arrived and their events are recorded."""
    run = await world.daemon.start_run("ship", {}, world.named("alice"))
    await eventually(lambda: len(posted(chat)) >= count and len(notified(world, run["id"])) >= 3 * count, 20,
                     "the notifications of the wait")
    return run["id"]


def test_each_approver_gets_a_signed_link_of_their_own(tmp_path: Path, chat: HttpServer, mail,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(T0)
    world = world_with(tmp_path, chat, clock)

    async def scenario() -> tuple[str, list[str], dict]:
        async with world as daemon:
            run_id = await wait_announced(world, chat)
            await world.settled()
            return run_id, list(daemon.web_secrets), daemon.store.read_run(run_id)

    with caplog.at_level(logging.INFO, logger="runner.notify"):
        run_id, secrets, run = asyncio.run(scenario())
    [post] = posted(chat)
    assert post["run"] == run_id and post["step"] == "review"

    links = decision_links(post)
    assert sorted(links) == ["bob", "carol"], "the group's approvers; not alice (she started it), not dave (no role)"
    for user, token in links.items():
        grant = verify(secrets, token, T0, run_id=run_id, step_id="review")
        assert (grant.user, grant.run_id, grant.step_id) == (user, run_id, "review")
        assert grant.expires_at == DEADLINE == datetime.fromisoformat(run["steps"]["review"]["deadline"])
        with pytest.raises(Unauthorized):
            verify(secrets, token, DEADLINE)  # the link ends with the step's deadline
        with pytest.raises(Forbidden):
            verify(secrets, token, T0, run_id=run_id, step_id="plan")  # and opens this one step only
        assert f"{PUBLIC_URL}/ui/link/{token}" in post["text"], "the text carries the links too"

    plan = next(link for link in post["links"] if link["title"] == "plan")
    sha = run["steps"]["plan"]["outputs"]["artifacts"]["plan.txt"].removeprefix("res://")
    assert plan["url"] == f"res://{sha}"
    artifact = verify_resource(secrets, token_of(plan["href"], "artifacts"), T0)
    assert (artifact.run_id, artifact.sha256, artifact.expires_at) == (run_id, sha, DEADLINE)
    assert {"title": "ticket", "url": "https://tickets.example.test/OPS-7"} in post["links"]
    assert post["links"][-1] == {"title": "run", "url": f"{PUBLIC_URL}/ui/runs/{run_id}#step-review"}

    tokens = [*links.values(), token_of(plan["href"], "artifacts")]
    events = notified(world, run_id)
    assert {(e["channel"], e["ok"]) for e in events} == {("chat", True), ("audit", True), ("mail", True)}
    [text] = [text for text in mail[0].texts if run_id in text]
    assert all(f"{PUBLIC_URL}/ui/link/{token}" in text for token in links.values()), "the mail carries them too"
    for event in events:
        assert event["links"] == ["plan", "ticket", "decide as bob", "decide as carol", "run"]
    for path, content in all_file_bytes(tmp_path / "data").items():  # run.json, events.jsonl, the index, ...
        assert not any(token.encode() in content for token in tokens), f"a link's token in {path}"
        if path.name != "link_secret":
            assert not any(secret.encode() in content for secret in secrets), f"the link secret in {path}"

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "decide as bob" in logged and f"{PUBLIC_URL}/ui/runs/{run_id}#step-review" in logged
    assert f"{PUBLIC_URL}/ui/link/[token " in logged, "the log channel shows where a token was, not the token"
    assert not any(token in logged for token in tokens)
    assert not any(secret in logged for secret in secrets)


def test_link_max_age_makes_links_expire_sooner_and_reminders_and_timeouts_carry_fresh_ones(
        tmp_path: Path, chat: HttpServer) -> None:
    clock = ManualClock(T0)
    world = world_with(tmp_path, chat, clock, link_max_age="5m")

    async def scenario() -> tuple[str, list[str]]:
        async with world as daemon:
            assert daemon.link_max_age == timedelta(minutes=5)
            run_id = await wait_announced(world, chat)
            clock.set(T0 + timedelta(minutes=50))  # the reminder is due
            await eventually(lambda: len(posted(chat)) >= 2, 20, "the reminder")
            await world.settled()
            clock.set(DEADLINE)  # nobody decided
            await eventually(lambda: len(posted(chat)) >= 3, 20, "the timeout notice")
            await world.settled()
            return run_id, list(daemon.web_secrets)

    run_id, secrets = asyncio.run(scenario())
    wait, reminder, timeout = posted(chat)
    assert "reminder" in reminder["subject"] and "timed out" in timeout["subject"]
    for post, sent in ((wait, T0), (reminder, T0 + timedelta(minutes=50))):
        links = decision_links(post)
        assert sorted(links) == ["bob", "carol"], post["subject"]
        for user, token in links.items():
            grant = verify(secrets, token, sent, run_id=run_id, step_id="review")
            assert grant.expires_at == sent + timedelta(minutes=5)
    assert decision_links(timeout) == {}, "nobody can decide a step that timed out"
    plan = next(link for link in timeout["links"] if link["title"] == "plan")
    assert verify_resource(secrets, token_of(plan["href"], "artifacts"), DEADLINE).expires_at == (
        DEADLINE + timedelta(minutes=5)), "the artifact stays readable a while after the timeout"
    assert timeout["links"][-1]["url"] == f"{PUBLIC_URL}/ui/runs/{run_id}#step-review"
    assert [e["links"] for e in notified(world, run_id) if e["channel"] == "chat"][-1] == ["plan", "ticket", "run"]


@files_only
def test_the_daemons_own_secret_is_kept_private_and_survives_a_restart(tmp_path: Path, chat: HttpServer) -> None:
    clock = ManualClock(T0)
    world = world_with(tmp_path, chat, clock)

    async def scenario() -> tuple[str, list[str], list[str]]:
        async with world as daemon:
            run_id = await wait_announced(world, chat)
            await world.settled()
            before = list(daemon.web_secrets)
        clock.set(T0 + timedelta(minutes=5))
        async with world as daemon:  # a restart on the same data directory
            after = list(daemon.web_secrets)
        return run_id, before, after

    run_id, before, after = asyncio.run(scenario())
    kept = tmp_path / "data" / "link_secret"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert before == after == [kept.read_text().strip()]
    assert len(before[0]) >= 43, "256 random bits, URL-safe"
    token = decision_links(posted(chat)[0])["bob"]
    grant = verify(after, token, T0 + timedelta(minutes=5), run_id=run_id, step_id="review")
    assert grant.user == "bob", "a link sent before the restart opens after it"


def test_a_configured_rotation_list_signs_with_the_newest(tmp_path: Path, chat: HttpServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = "o" * 40, "n" * 40
    monkeypatch.setenv("LINK_SECRET_OLD", old)
    (tmp_path / "new-secret").write_text(new + "\n")
    os.chmod(tmp_path / "new-secret", 0o600)
    world = world_with(tmp_path, chat, ManualClock(T0),
                       link_secret=[{"env": "LINK_SECRET_OLD"}, {"file": str(tmp_path / "new-secret")}])

    async def scenario() -> tuple[str, list[str]]:
        async with world as daemon:
            run_id = await wait_announced(world, chat)
            await world.settled()
            return run_id, list(daemon.web_secrets)

    run_id, secrets = asyncio.run(scenario())
    assert secrets == [old, new]
    assert not (tmp_path / "data" / "link_secret").exists(), "a configured secret needs no secret of its own"
    token = decision_links(posted(chat)[0])["carol"]
    assert verify([new], token, T0, run_id=run_id).user == "carol", "signed with the newest secret"
    with pytest.raises(Unauthorized):
        verify([old], token, T0)


def serve(tmp_path: Path, chat: HttpServer, env: dict[str, str], **server: Any) -> subprocess.CompletedProcess:
    """`signoff serve` with the config laid out and `server` settings added: a daemon that should not start."""
    world_with(tmp_path, chat, ManualClock(T0), **server)
    return subprocess.run(signoff_cmd("serve", "--config", str(tmp_path / "signoff.yaml")), cwd=tmp_path,
                          env=signoff_env(**env), capture_output=True, text=True, timeout=60)


@files_only
def test_a_missing_link_secret_stops_the_daemon_with_its_name(tmp_path: Path, chat: HttpServer) -> None:
    done = serve(tmp_path, chat, {}, link_secret={"env": "SIGNOFF_TEST_MISSING_LINK_SECRET"})
    assert done.returncode != 0
    assert "server.link_secret" in done.stderr and "SIGNOFF_TEST_MISSING_LINK_SECRET" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "link_secret").exists()


@files_only
def test_a_short_link_secret_is_refused(tmp_path: Path, chat: HttpServer) -> None:
    done = serve(tmp_path, chat, {"SHORT_LINK_SECRET": "hunter2"}, link_secret=[{"env": "SHORT_LINK_SECRET"}])
    assert done.returncode != 0
    assert "server.link_secret" in done.stderr and "at least 32 characters" in done.stderr, done.stderr
    assert "hunter2" not in done.stderr + done.stdout


REPORT = """
name: report
steps:
  - id: write
    kind: shell
    run: echo "the report" > "$SIGNOFF_ARTIFACTS/report.md"
    timeout: 1m
  - id: tell
    kind: notify
    channel: chat
    message: the report is ready
    links:
      - {title: report, url: "${{ steps.write.outputs.artifacts['report.md'] }}"}
"""


def test_a_notify_steps_artifact_link_is_signed_and_never_recorded(tmp_path: Path, chat: HttpServer) -> None:
    clock = ManualClock(T0)
    world = world_with(tmp_path, chat, clock, {"report": REPORT})

    async def scenario() -> tuple[dict, list[str]]:
        async with world as daemon:
            run = await daemon.start_run("report", {}, world.named("alice"))
            await eventually(lambda: posted(chat), 20, "the notify step's message")
            await world.settled()
            return daemon.store.read_run(run["id"]), list(daemon.web_secrets)

    run, secrets = asyncio.run(scenario())
    [post] = posted(chat)
    report = next(link for link in post["links"] if link["title"] == "report")
    sha = run["steps"]["write"]["outputs"]["artifacts"]["report.md"].removeprefix("res://")
    grant = verify_resource(secrets, token_of(report["href"], "artifacts"), T0)
    assert (grant.run_id, grant.sha256) == (run["id"], sha)
    assert grant.expires_at == T0 + timedelta(days=1), "no deadline to follow: a day"
    token = token_of(report["href"], "artifacts")
    for path, content in all_file_bytes(tmp_path / "data").items():
        assert token.encode() not in content, f"the artifact link's token in {path}"
