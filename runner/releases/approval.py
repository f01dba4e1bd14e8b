"""Release approval (four eyes): a new release of a flow under a rule waits until people other than its authors approve.

The rule is read from the flow's live release (runner.releases.rules), never from
the tag under review. What this module keeps, through the release `State`
(`load`/`save`/`append_history` only):

    approvals   "<flow> <tag>" -> the record of one release that needed approval:
                {flow, tag, version, commit, status, since, base: {tag, commit} | null,
                 rule: {approvers, min_approvals, allow_self_approval, notify, error, source},
                 authors: ["Name <email>"...], released_by, approvals: [{by, at, comment}],
                 rejection: {by, at, comment} | null, superseded_by, decided_at,
                 diff, diff_truncated, validation: {ok, errors}, announced_at,
                 replay: the tag's flow replayed against the live version's recent runs | null}
    accepted    flow -> tags that were live once (they may go live again, after a yank, without approval)

Statuses: `pending` (the live version does not change), `approved` (it goes live),
`rejected` (never live), `superseded` (a newer tag came first; never live),
`overridden` (an admin's pin made it live before the approvals were in).
Every decision is appended to the release history with who, when and the comment.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from runner.auth import User, Users, may_decide_release
from runner.errors import Conflict, NotFound
from runner.releases.repo import FlowRepo
from runner.releases.rules import RULE_FILE, Rule, rule_for
from runner.timeutil import Clock, rfc3339

RECORDS, ACCEPTED = "approvals", "accepted"
PENDING, APPROVED, REJECTED, SUPERSEDED, OVERRIDDEN = "pending", "approved", "rejected", "superseded", "overridden"
LIVE, WAIT, SKIP = "live", "wait", "skip"    # what the gate says of one candidate
DIFF_LIMIT = 64 * 1024


def record_key(flow: str, tag: str) -> str:
    return f"{flow} {tag}"


class Gate:
    """Asked by the Resolver, per flow and candidate release (newest first), whether it may go live now."""

    def __init__(self, repo: FlowRepo, state: Any, live_before: dict[str, Any], clock: Clock) -> None:
        self.repo, self.state, self.live_before, self.clock = repo, state, live_before, clock
        self.notes: list[dict[str, Any]] = []     # history entries, appended by save()
        self.records: dict[str, dict[str, Any]] = state.load(RECORDS, {})
        self.accepted: dict[str, list[str]] = state.load(ACCEPTED, None) or self._accepted_from_history()
        self._as_loaded = json.dumps([self.records, self.accepted], sort_keys=True)
        self.waiting: dict[str, str] = {}          # flow -> the tag that waits for it (the newest)
        self.created: list[dict[str, Any]] = []    # records made by this resolve
        self._rules: dict[str, bytes | None] = {}

    def _accepted_from_history(self) -> dict[str, list[str]]:
        """Once, when approval is first used: the tags the history says were live."""
        found: dict[str, list[str]] = {}
        for entry in self.state.history():
            if entry.get("flow") and entry.get("tag") and "previous" in entry:
                found.setdefault(entry["flow"], []).append(entry["tag"])
        return found

    def admit(self, flow: str, release: Any, verdict: dict[str, Any], *, pinned: bool) -> str:
        """LIVE (it may be live), WAIT (it waits for approval: look at older ones) or SKIP (never live)."""
        record = self.records.get(record_key(flow, release.tag))
        status = record["status"] if record else None
        if status == REJECTED:
            return SKIP
        if status == APPROVED or release.tag in self.accepted.get(flow, ()):
            return LIVE
        if pinned:
            return LIVE             # the admin's emergency lever: anything valid and not rejected
        if status == SUPERSEDED:
            return SKIP
        if flow in self.waiting:    # a newer release already waits: this one will never go live
            if record:
                self._settle(record, SUPERSEDED, superseded_by=self.waiting[flow])
            return SKIP
        if record is None:
            rule, source, base = self._rule_for(flow)
            if rule is None:
                return LIVE
            record = self._new_record(flow, release, rule, source, base, verdict)
        self.waiting[flow] = release.tag
        return WAIT

    def settle_flow(self, flow: str, live_tag: str | None, *, pinned: bool) -> list[dict[str, Any]]:
        """After the flow's choice: older pending records are superseded (not while pinned); the pending one."""
        for record in self.records.values():
            if record["flow"] != flow or record["status"] != PENDING:
                continue
            if record["tag"] == live_tag:
                self._settle(record, OVERRIDDEN)        # a pin made it live
            elif record["tag"] != self.waiting.get(flow) and not pinned:
                self._settle(record, SUPERSEDED, superseded_by=self.waiting.get(flow) or live_tag)
        return [r for r in self.records.values() if r["flow"] == flow and r["status"] == PENDING]

    def went_live(self, flow: str, tag: str | None) -> dict[str, Any] | None:
        """Note a tag that became live; returns its approval record, if it needed one."""
        if tag and tag not in self.accepted.setdefault(flow, []):
            self.accepted[flow].append(tag)
        return self.records.get(record_key(flow, tag)) if tag else None

    def save(self) -> None:
        """Keep what this resolve found (a resolve that does not record keeps nothing); unchanged, nothing."""
        if json.dumps([self.records, self.accepted], sort_keys=True) != self._as_loaded:
            self.state.save(RECORDS, self.records)
            self.state.save(ACCEPTED, self.accepted)
        for entry in self.notes:
            self.state.append_history(entry)

    # ---- a new pending release ----------------------------------------------------------

    def _rule_for(self, flow: str) -> tuple[Rule | None, dict[str, Any] | None, dict[str, Any] | None]:
        """(rule, where it was read, the live release compared against) from the flow's live release; a flow
        with nothing live yet is judged by the newest live release of any flow (none live: no rule)."""
        base = self.live_before.get(flow) or {}
        if not base.get("commit"):
            others = [entry for entry in self.live_before.values() if entry.get("commit")]
            if not others:
                return None, None, None
            base = max(others, key=lambda entry: (self.repo.committed_at(entry["commit"]), entry["commit"]))
        commit = base["commit"]
        if commit not in self._rules:
            self._rules[commit] = self.repo.file_at(commit, RULE_FILE)
        rule = rule_for(self._rules[commit], flow, f"{RULE_FILE}@{base.get('tag')}")
        source = {"tag": base.get("tag"), "commit": commit}
        own_base = self.live_before.get(flow) if (self.live_before.get(flow) or {}).get("commit") else None
        return rule, source, {"tag": own_base["tag"], "commit": own_base["commit"]} if own_base else source

    def _new_record(self, flow: str, release: Any, rule: Rule, source: dict, base: dict, verdict: dict) -> dict:
        author = release.tagger or self.repo.committer(release.commit)
        authors = list(dict.fromkeys([author, *self.repo.authors_since(base["commit"], release.commit)]))
        released_by = next((e.get("by") for e in reversed(self.state.history(release.flow))
                            if e.get("released") == release.tag and e.get("via") == "daemon"), None)
        diff, truncated = self._diff(flow, base["commit"], release.commit, base.get("tag"), release.tag)
        record = {"flow": flow, "tag": release.tag, "version": str(release.version), "commit": release.commit,
                  "status": PENDING, "since": rfc3339(self.clock.now()), "base": base,
                  "rule": {**rule.to_dict(), "source": source}, "authors": authors, "released_by": released_by,
                  "tagger": release.tagger, "message": release.message, "approvals": [], "rejection": None,
                  "superseded_by": None, "decided_at": None, "diff": diff, "diff_truncated": truncated,
                  "validation": {"ok": verdict["ok"], "errors": verdict["errors"]}, "announced_at": None,
                  "replay": None}
        self.records[record_key(flow, release.tag)] = record
        self.created.append(record)
        return record

    def _diff(self, flow: str, old: str, new: str, old_tag: str | None, new_tag: str) -> tuple[str, bool]:
        """The flow's file and the rule file, live against the tag (what approvers review)."""
        parts = []
        for label, read in ((f"flows/{flow}.yaml", lambda c: self.repo.flow_file(c, flow)),
                            (RULE_FILE, lambda c: self.repo.file_at(c, RULE_FILE))):
            before, after = read(old) or b"", read(new) or b""
            parts += difflib.unified_diff(before.decode(errors="replace").splitlines(keepends=True),
                                          after.decode(errors="replace").splitlines(keepends=True),
                                          fromfile=f"{label} (live {old_tag})", tofile=f"{label} ({new_tag})")
        text = "".join(parts)
        return (text[:DIFF_LIMIT], True) if len(text) > DIFF_LIMIT else (text, False)

    def _settle(self, record: dict[str, Any], status: str, **fields: Any) -> None:
        record.update(status=status, decided_at=rfc3339(self.clock.now()), **fields)
        self.notes.append({"at": record["decided_at"], "flow": record["flow"], "approval": status,
                                   "tag": record["tag"], "version": record["version"], **fields})


def find_record(records: dict[str, dict[str, Any]], flow: str, version: str) -> dict[str, Any] | None:
    """The approval record of `flow` at `version` (`1.2.0` or `v1.2.0`): a pending one first, else the latest."""
    wanted = version.removeprefix("v")
    found = [r for r in records.values() if r["flow"] == flow and r["version"] == wanted]
    found.sort(key=lambda r: (r["status"] == PENDING, r["since"]))
    return found[-1] if found else None


def decide(state: Any, flow: str, version: str, user: User, users: Users, decision: str, comment: str | None, *,
           clock: Clock, via: str = "daemon") -> dict[str, Any]:
    """Record one decision on a pending release (runner.auth.may_decide_release says who may); the record.

    The quorum counts different people; one rejection rejects. The caller re-resolves what is live.
    """
    with state.locked():
        records = state.load(RECORDS, {})
        record = find_record(records, flow, version)
        if record is None:
            raise NotFound(f"{flow} has no release {version} that needed approval",
                           hint="`signoff releases` lists the releases pending approval")
        if record["status"] != PENDING:
            raise Conflict(f"{flow} {record['tag']} is {record['status']}, not pending approval")
        may_decide_release(user, record, users, decision=decision).check()
        if record["rule"].get("error"):
            raise Conflict(f"the live release rule cannot be read, so nobody may approve: {record['rule']['error']}",
                           hint="an admin may pin a release that was live before, whose rule file is valid")
        if decision == "approve" and user.name in {a["by"] for a in record["approvals"]}:
            raise Conflict(f"{user.name} already approved {flow} {record['tag']}",
                           hint="another approver must approve it")
        at = rfc3339(clock.now())
        entry = {"by": user.name, "at": at, "comment": comment}
        if decision == "approve":
            record["approvals"].append(entry)
            if len(record["approvals"]) >= record["rule"]["min_approvals"]:
                record.update(status=APPROVED, decided_at=at)
        else:
            record.update(status=REJECTED, rejection=entry, decided_at=at)
        state.save(RECORDS, records)
        state.append_history({"at": at, "flow": flow, "release_decision": decision, "tag": record["tag"],
                              "version": record["version"], "by": user.name, "via": via, "comment": comment,
                              "status": record["status"]})
    return record


def mark_announced(state: Any, keys: list[str], at: str) -> None:
    """Note that the pending releases `keys` were announced (a restart does not announce them again)."""
    with state.locked():
        records = state.load(RECORDS, {})
        for key in keys:
            if key in records:
                records[key]["announced_at"] = at
        state.save(RECORDS, records)


def note_replay(state: Any, key: str, commit: str, replay: dict[str, Any]) -> bool:
    """Keep the replay summary with the release `key` made at `commit`; False if there is no such record."""
    with state.locked():
        records = state.load(RECORDS, {})
        record = records.get(key)
        if record is None or record["commit"] != commit:
            return False
        record["replay"] = replay
        state.save(RECORDS, records)
    return True


def is_rejected(state: Any, flow: str, version: str) -> bool:
    record = find_record(state.load(RECORDS, {}), flow, version)
    return bool(record and record["status"] == REJECTED)
