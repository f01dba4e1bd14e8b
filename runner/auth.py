"""Users, groups, roles and bearer tokens.

Only token hashes are kept (sha256); a presented token is hashed and compared
with every user's hash in constant time. Roles: `run` (start and cancel own
runs), `approve` (decide approvals the flow lets them), `release` (make a
flow's release tag through the daemon), `admin` (everything, pin and yank
included, except bypassing an approval's quorum or self-approval rule).
With no users configured, one local admin gets a random token written 0600
to the data directory, where the CLI on the same machine finds it.

Who may read what is decided here and nowhere else (`may_see_run`): a run is
seen by admins, by the user who started it, and by the users with the
`approve` role whom its flow names among the approvers of any of its approval
steps; a resource by whoever may see a run that stored it. What a user may
not see does not exist for them (the API answers 404).

Who may decide an approval is decided here too (`may_decide`), for the decision
route, the approval kind, `pending` and the web pages alike: the `approve` role,
a place among the step's approvers, and, to approve, not being the run's starter
unless the step allows self-approval. A release waiting for approval is judged by
the same rules (`may_decide_release`): the approve role, a place among the release
rule's approvers, and, to approve, not being one of the release's own authors
(mapped from git identities to users by `Users.of_git`) unless the rule allows it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as random_tokens
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable, Mapping

from runner import secrets
from runner.datadir import make_dir
from runner.errors import ConfigError, Forbidden

ROLES = frozenset({"run", "approve", "release", "admin"})
# the role each change of what is live needs (admins have every role)
LIVE_CHANGE_ROLES = {"release": "release", "pin": "admin", "unpin": "admin", "yank": "admin", "unyank": "admin"}
LOCAL_USER = "local"
TOKEN_FILE = "token"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def can(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "roles": sorted(self.roles), "groups": sorted(self.groups)}


@dataclass
class Users:
    by_hash: dict[str, User] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)
    git_emails: dict[str, str] = field(default_factory=dict)   # lower-cased address -> user name
    git_names: dict[str, str] = field(default_factory=dict)    # author name -> user name

    def authenticate(self, token: str | None) -> User | None:
        if not token:
            return None
        presented = token_hash(token)
        found = None
        for known, user in self.by_hash.items():  # no early exit: timing does not tell which user matched
            if hmac.compare_digest(known, presented):
                found = user
        return found

    def members(self, group: str) -> set[str]:
        return set(self.groups.get(group, set()))

    def allowed(self, user: User, approvers: list[str]) -> bool:
        """Whether `user` is one of `approvers` (names or `group:<name>`)."""
        for entry in approvers:
            if entry.startswith("group:"):
                if entry[6:] in user.groups:
                    return True
            elif entry == user.name:
                return True
        return False

    def names(self) -> list[str]:
        return sorted(u.name for u in self.by_hash.values())

    def of_git(self, identity: str | None) -> str | None:
        """The user a git identity (`Name <email>`) belongs to: by the config's git_emails, then git_names,
        then `<user>@signoff.invalid` (the tagger of a tag the daemon made for that user); None if nobody."""
        if not identity:
            return None
        name, _, rest = identity.partition(" <")
        email = rest.rstrip(">").strip().lower()
        if email in self.git_emails:
            return self.git_emails[email]
        if name.strip() in self.git_names:
            return self.git_names[name.strip()]
        local, _, domain = email.partition("@")
        if domain == "signoff.invalid" and local in self.names():
            return local
        return None


def may_see_run(user: User, run: dict[str, Any], users: Users, approvers: Iterable[str] = ()) -> bool:
    """Whether `user` may read `run` (record, events, resources). `approvers`: every entry the run's own
    flow names in `approvers` of its approval steps (see `flow_approvers`)."""
    if user.can("admin") or run.get("started_by") == user.name:
        return True
    return user.can("approve") and users.allowed(user, list(approvers))


def flow_approvers(steps: Iterable[Any]) -> list[str]:
    """The approver entries of a flow's approval steps (`steps`: the flow's Step objects)."""
    return [entry for step in steps if step.kind == "approval" for entry in step.spec.get("approvers") or []]


class Refusal(StrEnum):
    """Why a user may not decide an approval step."""

    NO_APPROVE_ROLE = "no_approve_role"
    NOT_AN_APPROVER = "not_an_approver"
    OWN_RUN = "own_run"
    OWN_RELEASE = "own_release"


@dataclass(frozen=True)
class DecisionRight:
    """What `may_decide` found: true when the user may decide; else the refusal, said as a Forbidden."""

    refusal: Refusal | None = None
    message: str = ""
    hint: str | None = None

    def __bool__(self) -> bool:
        return self.refusal is None

    def check(self) -> None:
        """Raise the refusal as Forbidden (HTTP 403); nothing when the user may decide."""
        if self.refusal is not None:
            raise Forbidden(self.message, hint=self.hint)


def may_decide(user: User, run: Mapping[str, Any] | None = None, step_id: str | None = None,
               users: Users | None = None, *, decision: str = "approve",
               spec: Mapping[str, Any] | None = None) -> DecisionRight:
    """Whether `user` may take `decision` on the approval step `step_id` of `run`.

    With no run, only what holds for any run is checked (the approve role), so a request can be
    refused before the run is read. The step's approvers and `allow_self_approval` are read from its
    state in the run (what the wait recorded), else from its `spec`; with no `users` directory
    nobody is an approver.
    """
    if not user.can("approve"):
        return DecisionRight(Refusal.NO_APPROVE_ROLE, f"{user.name} may not decide approvals (needs the approve role)")
    if run is None or step_id is None:
        return DecisionRight()
    state = run["steps"].get(step_id) or {}
    spec = spec or {}
    approvers = state.get("approvers") or spec.get("approvers") or []
    if users is None or not users.allowed(user, approvers):
        shown = spec["approvers"] if spec.get("approvers") else approvers
        return DecisionRight(Refusal.NOT_AN_APPROVER, f"{user.name} is not an approver of step '{step_id}' "
                                                      f"(approvers: {', '.join(shown)})")
    allow_self = spec.get("allow_self_approval") if spec else state.get("allow_self_approval")
    if decision == "approve" and user.name == run.get("started_by") and not allow_self:
        return DecisionRight(Refusal.OWN_RUN, f"{user.name} started this run and may not approve it",
                             hint="another approver must decide (allow_self_approval is false)")
    return DecisionRight()


def may_decide_release(user: User, pending: Mapping[str, Any] | None = None, users: Users | None = None, *,
                       decision: str = "approve") -> DecisionRight:
    """Whether `user` may take `decision` on a release waiting for approval, by the rules of `may_decide`.

    `pending` is the waiting release as runner.releases.approval keeps it: its `rule` (approvers,
    allow_self_approval), its `authors` (git identities) and `released_by` (who made the tag through
    the daemon). With no `pending`, only the approve role is checked.
    """
    if not user.can("approve"):
        return DecisionRight(Refusal.NO_APPROVE_ROLE, f"{user.name} may not decide releases (needs the approve role)")
    if pending is None:
        return DecisionRight()
    rule = pending.get("rule") or {}
    approvers = list(rule.get("approvers") or [])
    what = f"{pending.get('flow')} {pending.get('tag')}"
    if users is None or not users.allowed(user, approvers):
        return DecisionRight(Refusal.NOT_AN_APPROVER, f"{user.name} is not an approver of the release {what} "
                                                      f"(approvers: {', '.join(approvers) or 'nobody'})",
                             hint="the live release's signoff-release.yaml names who may approve")
    if decision == "approve" and not rule.get("allow_self_approval") and user.name in release_authors(pending, users):
        return DecisionRight(Refusal.OWN_RELEASE, f"{user.name} authored the release {what} and may not approve it",
                             hint="another approver must decide (allow_self_approval is false)")
    return DecisionRight()


def release_authors(pending: Mapping[str, Any], users: Users) -> set[str]:
    """The users who authored a waiting release: its tagger (or committer), the authors of its new commits,
    and whoever released it through the daemon."""
    found = {users.of_git(identity) for identity in pending.get("authors") or []}
    found.add(pending.get("released_by"))
    return {name for name in found if name}


def may_change_live(user: User, change: str) -> bool:
    """Whether `user` may make this change of what is live (release, pin, unpin, yank, unyank)."""
    return user.can(LIVE_CHANGE_ROLES[change])


def local_token(data_dir: Path) -> str:
    """The local admin's token: made once, kept 0600 in the data directory."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    make_dir(data_dir)
    token = random_tokens.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def load_users(config_data: dict[str, Any], data_dir: Path, base_dir: Path | None = None) -> Users:
    users = Users()
    declared = config_data.get("users") or {}
    for group, spec in (config_data.get("groups") or {}).items():
        users.groups[group] = set(spec.get("members") or [])
    if not declared:
        user = User(LOCAL_USER, frozenset(ROLES), frozenset())
        users.by_hash[token_hash(local_token(data_dir))] = user
        return users
    for name, spec in declared.items():
        member_of = set(spec.get("groups") or []) | {g for g, members in users.groups.items() if name in members}
        for group in member_of:
            users.groups.setdefault(group, set()).add(name)
        user = User(name, frozenset(spec.get("roles") or []), frozenset(member_of))
        for email in spec.get("git_emails") or []:
            users.git_emails[email.lower()] = name
        for git_name in spec.get("git_names") or []:
            users.git_names[git_name] = name
        if spec.get("token_sha256"):
            digest = spec["token_sha256"].lower()
        elif spec.get("token") is not None:
            digest = token_hash(secrets.resolve(spec["token"], what=f"users.{name}.token", base_dir=base_dir))
        else:
            raise ConfigError(f"users.{name}: give token_sha256 or token")
        if digest in users.by_hash:
            raise ConfigError(f"users.{name}: the same token as users.{users.by_hash[digest].name}")
        users.by_hash[digest] = user
    return users
