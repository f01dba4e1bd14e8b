"""Changes of what is live: release (a new tag), pin, unpin, yank, unyank.

One place for what each change checks and records, used by the daemon's API
(`POST /api/v1/flows/{flow}/<change>`, which first asks `runner.auth` whether
the caller holds the role for it) and by the CLI when no daemon is configured
and it works on the repository directly. Every change is appended to the
release history with who made it (`by`), when (`at`), why (`reason`) and how
(`via`: `daemon` or `repository`), and the activation it causes carries the
same three, so the history of live versions always says who moved them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import semver

from runner.errors import Conflict, FlowInvalid, Invalid, NotFound, SignoffError, UsageError
from runner.flows.load import check_bytes
from runner.releases import approval
from runner.releases.live import Resolver, State
from runner.releases.repo import FlowRepo
from runner.timeutil import Clock, rfc3339

CHANGES = ("release", "pin", "unpin", "yank", "unyank")
WITH_VERSION = frozenset({"release", "pin", "yank", "unyank"})


@dataclass(frozen=True)
class Actor:
    """Who makes a change, how, and why."""

    by: str
    via: str                    # "daemon" (authenticated, authorized) or "repository" (the CLI on the files)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "via": self.via, "reason": self.reason}


def request_fields(change: str, body: dict[str, Any]) -> dict[str, Any]:
    """The fields of an API request for `change`, checked: version, reason, and for a release ref and rollback."""
    allowed = {"version", "reason", "message", "ref", "rollback"} if change == "release" else {"version", "reason"}
    if change == "unpin":
        allowed = {"reason"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(f"unknown field{'s' if len(unknown) > 1 else ''} for {change}: {', '.join(unknown)}",
                      hint=f"{change} takes {', '.join(sorted(allowed))}")
    for name in ("version", "reason", "message", "ref"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise Invalid(f"{name} must be a string")
    if body.get("rollback") is not None and not isinstance(body["rollback"], bool):
        raise Invalid("rollback must be true or false")
    if change in WITH_VERSION and not body.get("version"):
        raise Invalid(f"{change} needs a version", hint='send {"version": "1.4.0"}')
    fields = dict(body)
    if change == "release":  # the tag message is the release's reason
        fields["reason"] = fields.get("reason") or fields.get("message")
    return fields


def parse_version(version: str) -> semver.Version:
    try:
        return semver.Version.parse(version.removeprefix("v"))
    except ValueError:
        raise UsageError(f"{version!r} is not a semantic version", hint="write e.g. 1.4.0") from None


def apply(change: str, repo_path: Path, data_dir: "Path | State", flow: str, fields: dict[str, Any], actor: Actor, *,
          config: Any = None, clock: Clock | None = None, mirror: bool = False) -> dict[str, Any]:
    """Make one change of what is live (fields as `request_fields` returns them)."""
    if change == "release":
        return release(repo_path, data_dir, flow, fields["version"], actor, ref=fields.get("ref") or "HEAD",
                       message=fields.get("message"), rollback=bool(fields.get("rollback")), config=config,
                       clock=clock, mirror=mirror)
    return override(repo_path, data_dir, change, flow, fields.get("version"), actor, config=config, clock=clock)


def release(repo_path: Path, data_dir: "Path | State", flow: str, version: str, actor: Actor, *, ref: str = "HEAD",
            message: str | None = None, rollback: bool = False, config: Any = None, clock: Clock | None = None,
            mirror: bool = False) -> dict[str, Any]:
    """Validate FLOW at REF, then create the annotated tag FLOW/vVERSION and push it where there is a remote.

    Through the daemon the tagger is the signoff user. With `mirror` (the daemon's bare mirror of a clone
    URL) a tag the remote refuses is removed again, so the mirror never holds a release the remote lacks.
    JSON: {flow, tag, version, commit, pushed_to, push_error, previous, by, via, reason, at, live}.
    """
    clock = clock or Clock()
    wanted = parse_version(version)
    tag = f"{flow}/v{wanted}"
    with FlowRepo(repo_path) as git_repo:
        full, commit = git_repo.resolve(ref)
        source = git_repo.flow_file(commit, flow)
        if source is None:
            raise NotFound(f"flows/{flow}.yaml does not exist at {full} ({commit[:12]})")
        report = check_bytes(source, f"flows/{flow}.yaml@{full}", expect_name=flow, config=config)
        if not report.ok:
            raise FlowInvalid(f"flows/{flow}.yaml at {full} is invalid; nothing was tagged\n"
                              + "\n".join(str(p) for p in report.errors), report.errors)
    resolver = Resolver(repo_path, data_dir, config=config, clock=clock)
    current = resolver.resolve().flows.get(flow)
    previous = current.release if current else None
    if previous and wanted <= previous.version and not rollback:
        raise UsageError(f"{tag} is not higher than the live {previous.tag}",
                         hint="pick a higher version (a rollback is a higher tag on an older commit), "
                              "or pass --rollback")
    tagger = (actor.by, f"{actor.by}@signoff.invalid") if actor.via == "daemon" else None
    pushed, push_error = None, None
    with FlowRepo(repo_path) as git_repo:
        git_repo.create_tag(tag, commit, message or f"Release {flow} {wanted}", tagger=tagger)
        try:
            pushed = git_repo.push_tag(tag)
        except SignoffError as exc:
            if mirror:
                git_repo.delete_tag(tag)
                raise Conflict(f"the remote did not take {tag}, so nothing was released ({exc.message})",
                               hint="check the daemon's push access to the repository") from None
            push_error = exc.message
    at = rfc3339(clock.now())
    with resolver.state.locked():
        resolver.state.append_history({"at": at, "flow": flow, "released": tag, "version": str(wanted),
                                       "commit": commit, "previous": previous.tag if previous else None,
                                       **actor.to_dict()})
    live = resolver.resolve(cause=actor.to_dict()).flows.get(flow)
    return {"flow": flow, "tag": tag, "version": str(wanted), "commit": commit, "pushed_to": pushed,
            "push_error": push_error, "previous": previous.tag if previous else None, **actor.to_dict(), "at": at,
            "live": live.to_dict() if live else None}


def override(repo_path: Path, data_dir: "Path | State", kind: str, flow: str, version: str | None, actor: Actor, *,
             config: Any = None, clock: Clock | None = None) -> dict[str, Any]:
    """Pin, unpin, yank or unyank (a pin only to a release that passed validation).

    JSON: {flow, overrides, live, by, via, reason, at}.
    """
    clock = clock or Clock()
    resolver = Resolver(repo_path, data_dir, config=config, clock=clock)
    if kind == "pin":
        known = resolver.resolve(record=False).flows.get(flow)
        if known is None or version.removeprefix("v") not in known.versions:
            raise NotFound(f"{flow} has no release {version}",
                           hint=f"its releases: {', '.join(known.versions) if known and known.versions else 'none'}")
        if approval.is_rejected(resolver.state, flow, version):
            raise UsageError(f"{flow} {version} was rejected in release approval, so it cannot be pinned",
                             hint="pin a release that was approved or live before")
        verdict = resolver.verdict_for(flow, version) or {}
        if not verdict.get("ok"):
            first = (verdict.get("errors") or [{}])[0]
            raise UsageError(f"{flow} {version} was refused, so it cannot be pinned: {first.get('message', '')}",
                             hint="pin a release that passed validation")
    at = rfc3339(clock.now())
    overrides = resolver.set_override(kind, flow, version, actor=actor.to_dict())
    live = resolver.resolve(cause=actor.to_dict()).flows.get(flow)
    return {"flow": flow, "overrides": overrides, "live": live.to_dict() if live else None, **actor.to_dict(),
            "at": at}
