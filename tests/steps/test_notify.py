"""Notifications (DESIGN §5; issue 3 item 7): real mail to a real aiosmtpd server on loopback and real
webhook POSTs to a real HTTP server, sent by the real daemon.

Channels: `mail` (smtp to the aiosmtpd server), `chat` (webhook to the local
receiver), `broken` (a webhook at a loopback port nobody listens on). The
daemon's public_url is https://signoff.example.test, so links in messages must
be built from it, not from the address it listens on.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from daemon_support import DaemonProcess, InProcessDaemon
from support import ManualClock, eventually, free_port, run_schema_errors, wait_until

from runner.runs.files import FileStore
from postgres_support import files_only

PUBLIC_URL = "https://signoff.example.test"
MAIL_FROM = "signoff@example.test"
MAIL_TO = ["reviewers@example.test", "ops@example.test"]

FLOWS_HERE = {
    "notify-approval": """
        name: notify-approval
        inputs:
          what: {type: string, default: the thing}
        steps:
          - id: review
            kind: approval
            approvers: [bob]
            context: "Please approve ${{ inputs.what }}"
            notify: [mail, chat]
            timeout: 1h
            on_timeout: reject
          - id: after
            kind: set
            values: {ok: true}
        """,
    "notify-step": """
        name: notify-step
        inputs:
          who: {type: string, default: world}
        steps:
          - id: tell-chat
            kind: notify
            channel: chat
            message: "Hello ${{ inputs.who }} from a notify step"
            links:
              - {title: docs, url: "https://docs.example.test/start"}
          - id: tell-mail
            kind: notify
            name: Mail the team
            channel: mail
            message: "Mail for ${{ inputs.who }}"
        """,
    "notify-broken": """
        name: notify-broken
        steps:
          - id: review
            kind: approval
            approvers: [bob]
            notify: [broken, chat]
            timeout: 1h
            on_timeout: reject
          - id: tell
            kind: notify
            channel: broken
            message: nobody will hear this
          - id: after
            kind: set
            values: {ok: true}
        """,
    "notify-remind": """
        name: notify-remind
        steps:
          - id: review
            kind: approval
            approvers: [bob]
            notify: [chat]
            remind_before: 3s
            timeout: 4s
            on_timeout: reject
        """,
    "notify-links": """
        name: notify-links
        inputs:
          ticket: {type: string, default: OPS-9}
          early: {type: string, default: 3s}
        steps:
          - id: plan
            kind: shell
            run: echo "the plan" > "$SIGNOFF_ARTIFACTS/plan.txt"
            timeout: 1m
          - id: review
            kind: approval
            approvers: [bob]
            context: read the plan first
            links:
              - {title: ticket, url: "https://tickets.example.test/${{ inputs.ticket }}"}
              - {title: plan, url: "${{ steps.plan.outputs.artifacts['plan.txt'] }}"}
            notify: [chat, mail]
            remind_before: ${{ inputs.early }}
            timeout: 4s
            on_timeout: reject
        """,
    "notify-timeout": """
        name: notify-timeout
        steps:
          - id: review
            kind: approval
            approvers: [bob]
            notify: [chat]
            timeout: 1s
            on_timeout: reject
        """,
}


class MailBox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, EmailMessage]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        mail = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.messages.append((envelope, mail))
        return "250 Message accepted for delivery"

    def about(self, needle: str) -> list[tuple[Any, EmailMessage]]:
        with self.lock:
            return [(env, mail) for env, mail in self.messages if needle in mail.get_content()]


class WebhookReceiver:
    """A real HTTP server on loopback that records JSON POSTs and answers 200."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.posts.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                           "json": json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/chat"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def about(self, needle: str) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if needle in json.dumps(p["json"])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def mailbox():
    box = MailBox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def chat():
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, mailbox, chat):
    _, smtp_port = mailbox
    channels = {
        "mail": {"kind": "smtp", "host": "127.0.0.1", "port": smtp_port, "from": MAIL_FROM, "to": MAIL_TO},
        "chat": {"kind": "webhook", "url": {"env": "CHAT_WEBHOOK_URL"}},
        "broken": {"kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/nobody-here"},
    }
    root = tmp_path_factory.mktemp("notify")
    with DaemonProcess(root, flows=FLOWS_HERE, channels=channels, public_url=PUBLIC_URL,
                       env={"CHAT_WEBHOOK_URL": chat.url}) as process:
        yield process


def notifications(daemon: DaemonProcess, run_id: str) -> list[dict]:
    return [e for e in daemon.events(run_id) if e["type"] == "notification"]


def test_an_approval_notifies_by_mail_and_webhook_with_a_link_to_the_run(daemon: DaemonProcess, mailbox,
                                                                         chat: WebhookReceiver) -> None:
    box, _ = mailbox
    run = daemon.start_run("notify-approval", {"what": "the blue deploy"})
    run_id = run["id"]
    link = f"{PUBLIC_URL}/ui/runs/{run_id}"

    mails = wait_until(lambda: box.about(run_id), 20, message="the approval mail")
    assert len(mails) == 1
    envelope, mail = mails[0]
    assert envelope.mail_from == MAIL_FROM
    assert sorted(envelope.rcpt_tos) == sorted(MAIL_TO)
    assert mail["From"] == MAIL_FROM
    assert {a.strip() for a in mail["To"].split(",")} == set(MAIL_TO)
    assert "notify-approval" in mail["Subject"] and "review" in mail["Subject"]
    body = mail.get_content()
    assert link in body
    assert "Please approve the blue deploy" in body
    assert "bob" in body

    posts = wait_until(lambda: chat.about(run_id), 20, message="the approval webhook")
    assert len(posts) == 1
    assert posts[0]["content_type"].startswith("application/json")
    hook = posts[0]["json"]
    assert isinstance(hook["text"], str) and link in hook["text"]
    assert "Please approve the blue deploy" in hook["text"]
    assert hook["run"] == run_id and hook["flow"] == "notify-approval" and hook["step"] == "review"

    recorded = wait_until(lambda: len(notifications(daemon, run_id)) == 2 and notifications(daemon, run_id), 20,
                          message="two notification events")
    assert {(n["channel"], n["ok"]) for n in recorded} == {("mail", True), ("chat", True)}
    assert all(n["step"] == "review" and n["attempts"] == 1 for n in recorded)

    assert daemon.decide(run_id, "review", "bob").status_code == 200
    assert daemon.wait_end(run_id)["status"] == "succeeded"


def test_a_notify_step_delivers(daemon: DaemonProcess, mailbox, chat: WebhookReceiver) -> None:
    box, _ = mailbox
    run = daemon.start_run("notify-step", {"who": "Ada"})
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    assert final["steps"]["tell-chat"]["outputs"]["delivered"] is True
    assert final["steps"]["tell-mail"]["outputs"]["delivered"] is True

    posts = chat.about("Hello Ada from a notify step")
    assert len(posts) == 1
    hook = posts[0]["json"]
    assert "Hello Ada from a notify step" in hook["text"]
    assert f"{PUBLIC_URL}/ui/runs/{run['id']}" in hook["text"]
    assert {"title": "docs", "url": "https://docs.example.test/start"} in hook["links"]

    mails = box.about("Mail for Ada")
    assert len(mails) == 1
    _, mail = mails[0]
    assert "Mail the team" in mail["Subject"]
    assert f"{PUBLIC_URL}/ui/runs/{run['id']}" in mail.get_content()


def test_a_failing_channel_is_retried_and_recorded_and_the_run_still_succeeds(daemon: DaemonProcess,
                                                                              chat: WebhookReceiver) -> None:
    run = daemon.start_run("notify-broken")
    run_id = run["id"]
    daemon.wait_step(run_id, "review", "waiting")
    recorded = wait_until(lambda: len(notifications(daemon, run_id)) == 2 and notifications(daemon, run_id), 30,
                          message="both notification events")
    by_channel = {n["channel"]: n for n in recorded}
    assert by_channel["broken"]["ok"] is False
    assert by_channel["broken"]["attempts"] == 3, "retried with backoff before giving up"
    assert by_channel["broken"]["error"]
    assert by_channel["chat"]["ok"] is True, "one failing channel does not stop the others"
    assert chat.about(run_id)
    assert daemon.run(run_id)["status"] == "waiting"

    assert daemon.decide(run_id, "review", "bob").status_code == 200
    final = daemon.wait_end(run_id, timeout=30)
    assert final["status"] == "succeeded"
    tell = final["steps"]["tell"]
    assert tell["status"] == "succeeded"
    assert tell["outputs"]["delivered"] is False
    assert tell["outputs"]["attempts"] == 3
    assert tell["outputs"]["error"]
    assert final["steps"]["after"]["outputs"] == {"ok": True}

    metrics = daemon.api(None).get("/metrics").text
    assert any(line.startswith("signoff_notifications") and 'channel="broken"' in line and 'ok="false"' in line
               for line in metrics.splitlines())


def test_a_reminder_is_sent_before_the_deadline(daemon: DaemonProcess, chat: WebhookReceiver) -> None:
    run_id = daemon.start_run("notify-remind")["id"]
    reminders = wait_until(lambda: [p for p in chat.about(run_id) if "reminder" in p["json"]["subject"]], 20,
                           message="the reminder webhook")
    assert len(reminders) == 1
    assert f"{PUBLIC_URL}/ui/runs/{run_id}" in reminders[0]["json"]["text"]
    final = daemon.wait_end(run_id)
    assert final["status"] == "rejected" and final["steps"]["review"]["status"] == "timed_out"
    kinds = [p["json"]["subject"] for p in chat.about(run_id)]
    assert kinds[0].endswith("waiting at review")


def test_a_timeout_is_notified(daemon: DaemonProcess, chat: WebhookReceiver) -> None:
    run_id = daemon.start_run("notify-timeout")["id"]
    final = daemon.wait_end(run_id)
    assert final["steps"]["review"]["status"] == "timed_out"
    wait_until(lambda: len(chat.about(run_id)) >= 2, 5, message="a second message, about the timeout")


def test_every_notification_of_a_wait_carries_the_steps_links(daemon: DaemonProcess, mailbox,
                                                              chat: WebhookReceiver) -> None:
    box, _ = mailbox
    run_id = daemon.start_run("notify-links", {"ticket": "OPS-11"})["id"]
    posts = wait_until(lambda: len(chat.about(run_id)) >= 3 and chat.about(run_id), 30,
                       message="the waiting, reminder and timeout webhooks")
    plan = daemon.run(run_id)["steps"]["plan"]["outputs"]["artifacts"]["plan.txt"]
    sha = plan.removeprefix("res://")
    # the targets are the web pages: a signed artifact link for res://, a decision link for bob while the
    # wait is on (not in the timeout notice), the step on the run's page (tests/daemon/test_notification_links.py)
    expected = [{"title": "ticket", "url": "https://tickets.example.test/OPS-11"},
                {"title": "plan", "url": plan, "href": f"{PUBLIC_URL}/ui/artifacts/"},
                {"title": "decide as bob", "url": f"{PUBLIC_URL}/ui/link/", "user": "bob"},
                {"title": "run", "url": f"{PUBLIC_URL}/ui/runs/{run_id}#step-review"}]
    subjects = [p["json"]["subject"] for p in posts]
    assert subjects[0].endswith("waiting at review")
    assert any("reminder" in s for s in subjects) and any("timed out" in s for s in subjects)
    for post in posts:
        wanted = [link for link in expected if "timed out" not in post["json"]["subject"] or "user" not in link]
        assert [_without_tokens(link) for link in post["json"]["links"]] == wanted, post["json"]["subject"]
        assert sha not in post["json"]["links"][1]["href"], "the artifact link is signed, not the API's address"
        assert "https://tickets.example.test/OPS-11" in post["json"]["text"]
    mails = wait_until(lambda: box.about(run_id), 20, message="the approval mail")
    assert "ticket: https://tickets.example.test/OPS-11" in mails[0][1].get_content()
    final = daemon.wait_end(run_id)
    assert final["status"] == "rejected" and final["steps"]["review"]["status"] == "timed_out"


def _without_tokens(link: dict) -> dict:
    """A link with the token of a signed URL cut off (what follows /ui/artifacts/ or /ui/link/)."""
    def cut(url: str) -> str:
        for page in ("/ui/artifacts/", "/ui/link/"):
            if page in url:
                assert url.split(page, 1)[1], f"a signed link without its token: {url}"
                return url.split(page, 1)[0] + page
        return url
    return {key: cut(value) if key in ("url", "href") else value for key, value in link.items()}


# ---- reminders across restarts (the daemon in this process, on a manual clock) ---------------------

REVIEW = """
name: review-later
steps:
  - id: review
    kind: approval
    approvers: [someone-else]
    notify: [audit]
    remind_before: 10m
    timeout: 1h
    on_timeout: fail
"""
T0 = datetime(2030, 1, 2, 9, 0, tzinfo=timezone.utc)  # the wait begins; the reminder is due at 09:50


def reminders(world: InProcessDaemon, run_id: str) -> list[dict]:
    return [e for e in world.daemon.store.read_events(run_id) if e["type"] == "notification" and e.get("reminder")]


async def park(world: InProcessDaemon) -> str:
    """Start a review-later run and let it park at its approval: the run id."""
    async with world as daemon:
        run = await daemon.start_run("review-later", {}, world.user)
        await eventually(lambda: daemon.store.read_run(run["id"])["status"] == "waiting", 10, "the wait")
        return run["id"]


@pytest.mark.parametrize("down_until", [T0 + timedelta(minutes=30), T0 + timedelta(minutes=55)],
                         ids=["restarted before the reminder is due", "the reminder fell due while down"])
@files_only
def test_a_reminder_survives_a_restart_and_is_sent_once(tmp_path: Path, down_until: datetime) -> None:
    clock = ManualClock(T0)
    world = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"review-later": REVIEW}), clock)

    async def scenario() -> tuple[str, list[dict], list[dict]]:
        run_id = await park(world)
        clock.set(down_until)
        async with world:
            clock.set(max(down_until, T0 + timedelta(minutes=50)))
            sent = await eventually(lambda: reminders(world, run_id), 10, "the reminder")
            await world.settled()
        clock.set(T0 + timedelta(minutes=58))
        async with world:  # a restart after the reminder: it is not sent again
            await world.settled()
            again = reminders(world, run_id)
        return run_id, sent, again

    run_id, sent, again = asyncio.run(scenario())
    assert len(sent) == 1 and sent[0]["ok"] is True and sent[0]["step"] == "review"
    assert again == sent, "the reminder went out once"
    run = FileStore(tmp_path / "data").read_run(run_id)
    assert run["status"] == "waiting" and run["steps"]["review"]["reminded_at"] == sent[0]["at"]
    assert run_schema_errors(run) == []


def test_a_reminder_whose_deadline_passed_while_down_is_not_sent(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    world = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"review-later": REVIEW}), clock)

    async def scenario() -> tuple[str, dict]:
        run_id = await park(world)
        clock.set(T0 + timedelta(hours=2))
        async with world as daemon:
            ended = await eventually(lambda: (lambda r: r if r["status"] == "timed_out" else None)(
                daemon.store.read_run(run_id)), 10, "the timeout")
            await world.settled()
        return run_id, ended

    run_id, ended = asyncio.run(scenario())
    assert ended["steps"]["review"]["status"] == "timed_out"
    assert reminders(world, run_id) == [], "after the deadline the timeout is the news, not a reminder"
