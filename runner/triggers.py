"""Triggers for live flows: cron schedules (once per slot, across restarts) and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from runner.errors import Unauthorized
from runner.model import Flow
from runner.datadir import make_dir, write_atomic
from runner.timeutil import parse_duration


def verify_signature(secret: str, body: bytes, header: str | None) -> None:
    """GitHub-style `X-Hub-Signature-256: sha256=<hex>` over the raw body, compared in constant time."""
    if not header or not header.startswith("sha256="):
        raise Unauthorized("missing X-Hub-Signature-256 (sha256=<hmac of the body>)")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, header.strip()):
        raise Unauthorized("the signature does not match the body")


def schedules(flow: Flow) -> list[tuple[int, dict[str, Any]]]:
    return [(i, t["schedule"]) for i, t in enumerate(flow.triggers) if isinstance(t, dict) and "schedule" in t]


def webhook_secret_name(flow: Flow) -> str | None:
    for trigger in flow.triggers:
        if isinstance(trigger, dict) and isinstance(trigger.get("webhook"), dict):
            return trigger["webhook"].get("secret")
    return None


def next_slot(schedule: dict[str, Any], after: datetime) -> datetime:
    """The first cron slot strictly after `after`, in the schedule's time zone."""
    zone = ZoneInfo(schedule.get("timezone") or "UTC")
    return croniter(schedule["cron"], after.astimezone(zone)).get_next(datetime)


def previous_slot(schedule: dict[str, Any], at: datetime) -> datetime:
    zone = ZoneInfo(schedule.get("timezone") or "UTC")
    return croniter(schedule["cron"], at.astimezone(zone)).get_prev(datetime)


class ScheduleState:
    """The last slot fired per (flow, trigger), so a slot fires once even across restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "schedules.json"
        try:
            self.fired: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.fired = {}

    def key(self, flow: str, index: int) -> str:
        return f"{flow}#{index}"

    def last(self, flow: str, index: int) -> datetime | None:
        value = self.fired.get(self.key(flow, index))
        return datetime.fromisoformat(value) if value else None

    def claim(self, flow: str, index: int, slot: datetime) -> bool:
        """Record `slot` as fired; False if it (or a later one) already was."""
        last = self.last(flow, index)
        if last is not None and last >= slot:
            return False
        self.fired[self.key(flow, index)] = slot.isoformat()
        make_dir(self.path.parent)
        write_atomic(self.path, json.dumps(self.fired, indent=1, sort_keys=True).encode())
        return True

    def first_due(self, flow: str, index: int, schedule: dict[str, Any], now: datetime) -> datetime:
        """The slot to wait for: one missed while the daemon was down fires at once if it is
        within `catchup` (default off); otherwise the next slot after now."""
        last = self.last(flow, index)
        missed = previous_slot(schedule, now)
        window = parse_duration(schedule["catchup"]) if schedule.get("catchup") else 0
        if window and last is not None and missed > last and now - missed <= timedelta(seconds=window):
            return missed
        return next_slot(schedule, now)
