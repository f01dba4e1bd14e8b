"""Notification channels: webhook (Slack/Mattermost-compatible JSON), smtp, log.

Delivery is retried with backoff; a channel that keeps failing is reported in
the result, never raised: a notification must not fail or lose a run.

A message's links may carry tokens (a per-approver decision link, a signed
artifact link): the message names them in `private`. Webhook and smtp deliver
them, which is their purpose; the log channel, the log lines about failures and
whatever is recorded about a delivery see each one cut to a short marker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx

from runner.dryrun import refuse

log = logging.getLogger(__name__)


def token_marker(token: str) -> str:
    """What stands for a link's token where it must not appear: a short digest, enough to tell links apart."""
    return f"[token {hashlib.sha256(token.encode()).hexdigest()[:8]}]"


@dataclass
class Message:
    subject: str
    text: str
    links: list[dict[str, str]]
    run_id: str | None = None
    flow: str | None = None
    step: str | None = None
    private: tuple[str, ...] = ()  # the tokens in `links`: delivered, never logged nor recorded

    def body(self, *, redacted: bool = False) -> str:
        lines = [self.text]
        lines += [f"{link.get('title') or link['url']}: {link['url']}" + (f" ({link['href']})" if link.get("href") else "")
                  for link in (self.shown_links() if redacted else self.links)]
        return "\n".join(lines)

    def redact(self, text: str) -> str:
        """`text` with every token of the message's links cut to its marker."""
        for token in self.private:
            if token in text:
                text = text.replace(token, token_marker(token))
        return text

    def shown_links(self) -> list[dict[str, str]]:
        """The links as they may be logged or recorded: each token cut to its marker."""
        return [{key: self.redact(value) if isinstance(value, str) else value for key, value in link.items()}
                for link in self.links]


@dataclass
class Delivery:
    channel: str
    ok: bool
    attempts: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "ok": self.ok, "attempts": self.attempts, "error": self.error}


class Notifier:
    def __init__(self, channels: dict[str, dict], *, attempts: int = 3, backoff: float = 0.5,
                 timeout: float = 10.0) -> None:
        self.channels = channels
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout

    async def send(self, name: str, message: Message) -> Delivery:
        refuse(f"a notification to channel '{name}'")  # a replay never sends one
        channel = self.channels.get(name)
        if channel is None:
            return Delivery(name, False, 0, f"channel '{name}' is not defined in the config")
        error = None
        for attempt in range(1, self.attempts + 1):
            try:
                await self._send_once(channel, message)
                return Delivery(name, True, attempt)
            except Exception as exc:  # any failure of a channel is reported, never raised
                error = message.redact(f"{type(exc).__name__}: {exc}")[:300]
                log.warning("notification to %s failed (attempt %d): %s", name, attempt, error,
                            extra={"event": "notify_failed", "run_id": message.run_id, "step_id": message.step})
                if attempt < self.attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        return Delivery(name, False, self.attempts, error)

    async def _send_once(self, channel: dict, message: Message) -> None:
        kind = channel["kind"]
        if kind == "log":
            log.info("%s\n%s", message.subject, message.body(redacted=True),
                     extra={"event": "notification", "run_id": message.run_id, "step_id": message.step})
        elif kind == "webhook":
            payload = {"text": f"*{message.subject}*\n{message.body()}", "subject": message.subject,
                       "message": message.text, "links": message.links, "run": message.run_id,
                       "flow": message.flow, "step": message.step}
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(channel["url"], json=payload)
                response.raise_for_status()
        elif kind == "smtp":
            await asyncio.to_thread(self._mail, channel, message)
        else:
            raise ValueError(f"unknown channel kind {kind!r}")

    def _mail(self, channel: dict, message: Message) -> None:
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = channel["from"]
        mail["To"] = ", ".join(channel["to"])
        mail.set_content(message.body())
        with smtplib.SMTP(channel["host"], int(channel.get("port", 25)), timeout=self.timeout) as smtp:
            if channel.get("starttls"):
                smtp.starttls()
            if channel.get("username"):
                smtp.login(channel["username"], channel.get("password", ""))
            smtp.send_message(mail)
