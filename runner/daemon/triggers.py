"""Triggers for live flows: cron schedules (once per slot, across restarts) and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from runner.errors import Unauthorized
from runner.flows.model import Flow
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
    """The first cron slot strictly after `after`, in the schedule's time zone.

    A slot is a wall-clock match: the hour a fall-back day repeats brings no new
    slots (a daily `30 1 * * *` fires at the first 01:30 only), as in cron
    implementations that skip the repeated hour.
    """
    zone = ZoneInfo(schedule.get("timezone") or "UTC")
    moment = after.astimezone(zone)
    while True:
        moment = croniter(schedule["cron"], moment).get_next(datetime)
        if not _repeated(moment):
            return moment


def previous_slot(schedule: dict[str, Any], at: datetime) -> datetime:
    """The latest slot at or before `at`; a repeated wall-clock time is its first occurrence."""
    zone = ZoneInfo(schedule.get("timezone") or "UTC")
    moment = croniter(schedule["cron"], at.astimezone(zone)).get_prev(datetime)
    return moment.replace(fold=0) if _repeated(moment) else moment


def _repeated(moment: datetime) -> bool:
    """Whether this wall-clock time already happened earlier that day (the second pass of a fall-back)."""
    first = moment.replace(fold=0)
    return moment.fold == 1 and first.astimezone(timezone.utc) < moment.astimezone(timezone.utc)


class ScheduleState:
    """The last slot claimed per (flow, trigger), so a slot fires exactly once, even across restarts.

    `<data>/schedules.json` maps `flow#index` to `{"slot", "run", "creating"}`. A claim
    names the run id it is about to create and is fsynced first (`creating: true`); once
    the run exists the flag is cleared. A claim still `creating` at start-up was cut
    short by a crash: `half_done()` lists it and the daemon creates its run then, under
    the id the claim names, unless that run already exists (see `runner.daemon.scheduler`).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "schedules.json"
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            loaded = {}
        # an older file kept only the slot: {"flow#0": "<slot>"}
        self.claims: dict[str, dict[str, Any]] = {
            key: value if isinstance(value, dict) else {"slot": value, "run": None, "creating": False}
            for key, value in (loaded.items() if isinstance(loaded, dict) else ())}

    def key(self, flow: str, index: int) -> str:
        return f"{flow}#{index}"

    def last(self, flow: str, index: int) -> datetime | None:
        claim = self.claims.get(self.key(flow, index))
        return datetime.fromisoformat(claim["slot"]) if claim and claim.get("slot") else None

    def claim(self, flow: str, index: int, slot: datetime, run_id: str) -> bool:
        """Record (fsynced) that `slot` fires as run `run_id`; False if it (or a later one) already did."""
        last = self.last(flow, index)
        if last is not None and last >= slot:
            return False
        self.claims[self.key(flow, index)] = {"slot": slot.isoformat(), "run": run_id, "creating": True}
        self._write()
        return True

    def created(self, flow: str, index: int) -> None:
        """The claimed slot's run exists (or could not be made and was reported): nothing left to redo."""
        claim = self.claims.get(self.key(flow, index))
        if claim and claim.get("creating"):
            claim["creating"] = False
            self._write()

    def half_done(self) -> list[tuple[str, int, datetime, str]]:
        """(flow, index, slot, run id) of every claim whose run was not known to exist."""
        found = []
        for key, claim in self.claims.items():
            flow, _, index = key.rpartition("#")
            if claim.get("creating") and claim.get("run") and index.isdigit():
                found.append((flow, int(index), datetime.fromisoformat(claim["slot"]), claim["run"]))
        return found

    def _write(self) -> None:
        make_dir(self.path.parent)
        write_atomic(self.path, json.dumps(self.claims, indent=1, sort_keys=True).encode())  # file and name fsynced

    def first_due(self, flow: str, index: int, schedule: dict[str, Any], now: datetime) -> datetime:
        """The slot to wait for: one missed while the daemon was down fires at once if it is
        within `catchup` (default off); otherwise the next slot after now."""
        last = self.last(flow, index)
        missed = previous_slot(schedule, now)
        window = parse_duration(schedule["catchup"]) if schedule.get("catchup") else 0
        if window and last is not None and missed > last and now - missed <= timedelta(seconds=window):
            return missed
        return next_slot(schedule, now)
