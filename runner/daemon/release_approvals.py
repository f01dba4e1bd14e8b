"""Releases pending approval, as the daemon serves them: who may decide, deciding, and telling the rule's channels.

`decide()` is the one entry for every interface (the API's
`POST /api/v1/releases/{flow}/{version}/decision`, the CLI through it, the web
page's form; signed links and the MCP server call it too): the approve role is
checked before anything is read, then runner.releases.approval records the
decision under runner.auth.may_decide_release, and the live versions are read
again at once, so an approved release is live when the call returns.

When a release becomes pending, the channels its rule names (`notify`) are told
once (the record's `announced_at`, so a restart does not tell them again), with a
signed link per user who may decide it (announce.NotificationLinks.of_release); and
the live version's recent runs are replayed against it (daemon/release_replay.py).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from runner.auth import User, Users, may_decide_release
from runner.errors import Invalid
from runner.notify import Message, Notifier
from runner.releases.approval import PENDING, record_key
from runner.releases.live import Resolution

log = logging.getLogger(__name__)
DECISIONS = ("approve", "reject")
COMMENT_LIMIT = 10_000


def decision_fields(body: dict[str, Any]) -> tuple[str, str | None]:
    """(decision, comment) from a request body, checked."""
    unknown = sorted(set(body) - {"decision", "comment"})
    if unknown:
        raise Invalid(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                      hint='send {"decision": "approve" or "reject", "comment": "..."}')
    decision, comment = body.get("decision"), body.get("comment")
    if decision not in DECISIONS:
        raise Invalid("decision must be approve or reject", fields=["decision"])
    if comment is not None and (not isinstance(comment, str) or len(comment) > COMMENT_LIMIT):
        raise Invalid(f"comment must be a string of at most {COMMENT_LIMIT:,} characters", fields=["comment"])
    return decision, (comment or None)


class ReleaseApprovals:
    def __init__(self, *, gitops: Any, users: Users, notifier: Notifier, links: Any, replays: Any,
                 spawn: Callable[[Any], None]) -> None:
        self.gitops, self.users, self.notifier, self.links, self._spawn = gitops, users, notifier, links, spawn
        self.replays = replays
        self._announcing: set[str] = set()
        gitops.on_resolved = self.resolved

    def pending(self) -> list[dict[str, Any]]:
        """Every release pending approval, by flow."""
        resolution: Resolution | None = self.gitops.resolution
        if resolution is None:
            return []
        return [item for name in sorted(resolution.flows) for item in resolution.flows[name].pending]

    def pending_for(self, user: User) -> list[dict[str, Any]]:
        """The pending releases `user` may approve (or, if one of its authors, reject)."""
        return [{**item, "may_approve": bool(may_decide_release(user, item, self.users))}
                for item in self.pending() if may_decide_release(user, item, self.users, decision="reject")]

    def deciders(self, item: dict[str, Any]) -> list[str]:
        """The users who may approve a pending release now (for per-approver links)."""
        approved = {a["by"] for a in item.get("approvals") or []}
        return sorted(user.name for user in self.users.by_hash.values()
                      if user.name not in approved and may_decide_release(user, item, self.users))

    async def decide(self, flow: str, version: str, user: User, body: dict[str, Any]) -> dict[str, Any]:
        """Record `user`'s decision; JSON: {flow, tag, version, decision, status, final, release, live}."""
        may_decide_release(user).check()
        decision, comment = decision_fields(body)
        record = await self.gitops.decide_release(flow, version, user, self.users, decision, comment)
        live = self.gitops.resolution.flows.get(flow) if self.gitops.resolution else None
        log.info("release %s %s: %s by %s", flow, record["tag"], decision, user.name,
                 extra={"event": "release_decision", "flow": flow, "tag": record["tag"], "user": user.name})
        return {"flow": flow, "tag": record["tag"], "version": record["version"], "decision": decision,
                "status": record["status"], "final": record["status"] != PENDING, "release": record,
                "live": live.to_dict() if live else None}

    # ---- telling the rule's channels ----------------------------------------------------

    def resolved(self, resolution: Resolution) -> None:
        """After each read of the refs: announce the pending releases nobody was told of yet; replay them."""
        self.replays.resolved(resolution)
        for item in (i for flow in resolution.flows.values() for i in flow.pending):
            key = record_key(item["flow"], item["tag"])
            if item.get("announced_at") or key in self._announcing:
                continue
            self._announcing.add(key)
            self._spawn(self.announce(item, key))

    async def announce(self, item: dict[str, Any], key: str) -> None:
        rule = item["rule"]
        text = (f"{item['flow']} {item['tag']} waits for release approval ({rule['min_approvals']} of "
                f"{', '.join(rule['approvers']) or 'nobody'}); live stays {(item.get('base') or {}).get('tag')}. "
                f"Authors: {', '.join(item.get('authors') or []) or 'unknown'}.")
        try:
            channels = rule.get("notify") or []
            links, tokens = self.links.of_release(item, self.deciders(item)) if channels else ([], ())
            for channel in channels:
                message = Message(f"{item['flow']}: release {item['tag']} pending approval", text, links,
                                  flow=item["flow"], private=tokens)
                delivery = await self.notifier.send(channel, message)
                if not delivery.ok:
                    log.warning("could not tell %s of the pending release %s: %s", channel, key, delivery.error,
                                extra={"event": "release_notify_failed", "flow": item["flow"]})
            await self.gitops.announced([key])
        except Exception:  # a notification never stops the daemon; the next read tries again
            log.exception("announcing the pending release %s failed", key, extra={"event": "release_notify_failed"})
        finally:
            self._announcing.discard(key)
