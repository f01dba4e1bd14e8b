"""Which version of each flow is live (DESIGN §3).

    v<semver>           releases every flow in the repository at that commit
    <flow>/v<semver>    releases one flow; once a flow has such a tag it follows only its own
    -rc.1 and the like  pre-releases, never live

Order is semver precedence. A candidate is live only if it passed validation;
a whole-repo tag is all-or-nothing. Verdicts are cached per commit (never
retried), tags are remembered as first seen (a moved or deleted tag is
reported and keeps the version it had), and pins and yanks from the data
directory override the choice. Every change of a live version is appended
to a history.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import semver

from runner.datadir import FILE_MODE, make_dir, open_append, write_atomic
from runner.errors import NotFound, UsageError
from runner.flows.load import check_bytes
from runner.releases.approval import LIVE, WAIT, Gate
from runner.releases.repo import FlowRepo, Refs
from runner.releases.rules import RULE_FILE, check_rules
from runner.timeutil import Clock, rfc3339

log = logging.getLogger(__name__)
VERSION = r"v(?P<version>(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)"
REPO_TAG = re.compile(rf"^{VERSION}$")
FLOW_TAG = re.compile(rf"^(?P<flow>[a-z0-9][a-z0-9-]*)/{VERSION}$")


@dataclass
class Release:
    tag: str                    # short name: v1.2.0 or refund/v1.2.0
    flow: str | None            # None for a whole-repo tag
    version: semver.Version
    commit: str
    tagger: str | None = None
    date: str | None = None
    message: str | None = None

    @property
    def prerelease(self) -> bool:
        return bool(self.version.prerelease)

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "version": str(self.version), "commit": self.commit, "tagger": self.tagger,
                "date": self.date, "message": self.message, "scope": "flow" if self.flow else "repo"}


def parse_tag(short: str) -> tuple[str | None, semver.Version] | None:
    """`v1.2.0` -> (None, 1.2.0); `refund/v1.2.0` -> ('refund', 1.2.0); anything else -> None."""
    match = REPO_TAG.match(short) or FLOW_TAG.match(short)
    if not match:
        return None
    return match.groupdict().get("flow"), semver.Version.parse(match.group("version"))


class State:
    """The release state kept under <data>/releases (JSON files, replaced atomically, under a lock)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "releases"

    @contextmanager
    def locked(self) -> Iterator["State"]:
        make_dir(self.dir)
        with open(os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE), "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return default

    def save(self, name: str, value: Any) -> None:
        make_dir(self.dir)
        write_atomic(self.dir / f"{name}.json", (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())

    def append_history(self, entry: dict[str, Any]) -> None:
        make_dir(self.dir)
        with open_append(self.dir / "history.jsonl") as handle:
            handle.write((json.dumps(entry, sort_keys=True) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())

    def history_by_flow(self) -> dict[str | None, list[dict[str, Any]]]:
        grouped: dict[str | None, list[dict[str, Any]]] = {}
        for entry in self.history():
            grouped.setdefault(entry.get("flow"), []).append(entry)
        return grouped

    def history(self, flow: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = (self.dir / "history.jsonl").read_text().splitlines()
        except OSError:
            return []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if flow is None or e.get("flow") == flow]


@dataclass
class LiveFlow:
    name: str
    release: Release | None = None
    pinned: str | None = None
    yanked: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    prereleases: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)   # every non-pre-release candidate, newest first
    removed: bool = False       # the newest valid release no longer contains the flow
    pending: list[dict[str, Any]] = field(default_factory=list)   # releases waiting for approval (approval.py)

    def to_dict(self) -> dict[str, Any]:
        return {"flow": self.name, "live": self.release.to_dict() if self.release else None,
                "pinned": self.pinned, "yanked": self.yanked, "refused": self.refused,
                "prereleases": self.prereleases, "versions": self.versions, "removed": self.removed,
                "pending": self.pending}


@dataclass
class Resolution:
    flows: dict[str, LiveFlow]
    problems: list[dict[str, Any]]
    tagged: bool                # the repository has any release tag at all
    ignored: list[str]          # tags that are not release tags

    def to_dict(self) -> dict[str, Any]:
        return {"tagged": self.tagged, "flows": [f.to_dict() for f in sorted(self.flows.values(), key=lambda f: f.name)],
                "problems": self.problems, "ignored_tags": self.ignored}


class Resolver:
    """Computes the live version of every flow from refs, verdicts, seen tags and overrides."""

    def __init__(self, repo_path: Path, data_dir: "Path | State", *, config: Any = None,
                 clock: Clock | None = None) -> None:
        self.repo_path = repo_path
        # a data dir (the state under <data>/releases), or a state of its own (in the database)
        self.state = data_dir if isinstance(data_dir, State) else State(data_dir)
        self.tag_words: dict[str, dict[str, Any]] = {}
        self.config = config
        self.clock = clock or Clock()

    def resolve(self, *, record: bool = True, cause: dict[str, Any] | None = None) -> Resolution:
        """The live version of every flow; `cause` (who, how, why) is recorded with any activation it finds."""
        with self.state.locked(), FlowRepo(self.repo_path) as repo:
            refs = repo.refs()
            seen: dict[str, str] = self.state.load("seen", {})
            verdicts: dict[str, Any] = self.state.load("verdicts", {})
            overrides = self.state.load("overrides", {"pins": {}, "yanks": {}})
            self.tag_words = self.state.load("tag_words", {})
            releases, problems, ignored = self._releases(refs, seen)
            self.gate = Gate(repo, self.state, self.state.load("live", {}), self.clock)
            flows = self._choose(repo, releases, verdicts, overrides)
            if record:
                self.state.save("seen", seen)
                self.state.save("tag_words", self.tag_words)
                self.state.save("verdicts", verdicts)
                self._record_changes(flows, cause or {})
                self.gate.save()
        return Resolution(flows, problems, bool(releases), ignored)

    # ---- tags -----------------------------------------------------------------------

    def _releases(self, refs: Refs, seen: dict[str, str]) -> tuple[list[Release], list[dict], list[str]]:
        releases, problems, ignored = [], [], []
        now = {name[len("refs/tags/"):]: info for name, info in refs.tags.items()}
        for short, info in sorted(now.items()):
            parsed = parse_tag(short)
            if parsed is None:
                ignored.append(short)
                continue
            first = seen.setdefault(short, info.commit)
            words = self.tag_words.setdefault(short, {"tagger": info.tagger, "date": info.date,
                                                      "message": info.message})  # as first seen, like the commit
            if first != info.commit:
                problems.append({"tag": short, "problem": "moved", "message": f"tag {short} was moved from "
                                 f"{first[:12]} to {info.commit[:12]}; the release stays at {first[:12]}"})
            releases.append(Release(short, parsed[0], parsed[1], first, words["tagger"], words["date"],
                                    words["message"]))
        for short, commit in sorted(seen.items()):
            if short not in now and parse_tag(short):
                problems.append({"tag": short, "problem": "deleted", "message": f"tag {short} was deleted; the "
                                 f"release it made ({commit[:12]}) is kept"})
                flow, version = parse_tag(short)
                releases.append(Release(short, flow, version, commit))
        return releases, problems, ignored

    def verdict(self, repo: FlowRepo, release: Release, verdicts: dict[str, Any]) -> dict[str, Any]:
        """Validate what a tag releases, once per commit: every flow for a repo tag, one for a flow tag."""
        key = f"{release.flow or '*'}@{release.commit}"
        if key in verdicts:
            return verdicts[key]
        if release.flow is None:
            files = repo.flow_files(release.commit)
        else:  # one flow: read just its file
            data = repo.flow_file(release.commit, release.flow)
            files = {release.flow: data} if data is not None else {}
        errors = []
        if release.flow is not None and not files:
            errors.append({"file": f"flows/{release.flow}.yaml", "message": "the flow does not exist at this tag"})
        for name, data in sorted(files.items()):
            report = check_bytes(data, f"flows/{name}.yaml@{release.tag}", expect_name=name, config=self.config)
            errors += [p.to_dict() for p in report.errors]
        rules = repo.file_at(release.commit, RULE_FILE)  # it becomes the live rule: it must be valid too
        if rules is not None:
            errors += [p.to_dict() for p in check_rules(rules, f"{RULE_FILE}@{release.tag}")]
        verdicts[key] = {"ok": not errors, "errors": errors[:50], "flows": sorted(files),
                         "checked_at": rfc3339(self.clock.now())}
        if errors:
            first = errors[0]
            log.warning("release %s refused: %s:%s: %s", release.tag, first.get("file"), first.get("line", ""),
                        first.get("message"), extra={"event": "release_refused", "tag": release.tag})
            self.state.append_history({"at": rfc3339(self.clock.now()), "flow": release.flow, "refused": release.tag,
                                       "commit": release.commit, "errors": errors[:5]})
        return verdicts[key]

    def _choose(self, repo: FlowRepo, releases: list[Release], verdicts: dict, overrides: dict) -> dict[str, LiveFlow]:
        repo_tags = sorted((r for r in releases if r.flow is None), key=lambda r: r.version, reverse=True)
        own: dict[str, list[Release]] = {}
        for release in releases:
            if release.flow is not None:
                own.setdefault(release.flow, []).append(release)
        names = set(own)
        listed: dict[str, list[str]] = self.state.load("flow_names", {})  # a commit's flows never change
        for commit in {r.commit for r in repo_tags if not r.prerelease}:
            if commit not in listed:
                listed[commit] = sorted(repo.flow_names(commit))
            names.update(listed[commit])
        self.state.save("flow_names", listed)
        flows = {}
        for name in sorted(names):
            # a flow follows its own tags once it has a real release of its own (pre-releases change nothing)
            mine = own.get(name) or []
            candidates = mine if any(not r.prerelease for r in mine) else repo_tags + mine
            candidates = sorted(candidates, key=lambda r: r.version, reverse=True)
            flows[name] = self._choose_one(repo, name, candidates, verdicts, overrides)
        return flows

    def _choose_one(self, repo: FlowRepo, name: str, candidates: list[Release], verdicts: dict,
                    overrides: dict) -> LiveFlow:
        live = LiveFlow(name, pinned=overrides["pins"].get(name), yanked=sorted(overrides["yanks"].get(name, [])))
        live.prereleases = [c.tag for c in candidates if c.prerelease]
        live.versions = [str(c.version) for c in candidates if not c.prerelease]
        for candidate in candidates:
            if candidate.prerelease or str(candidate.version) in live.yanked:
                continue
            if live.pinned and str(candidate.version) != live.pinned:
                continue
            verdict = self.verdict(repo, candidate, verdicts)
            if not verdict["ok"]:
                live.refused.append({"tag": candidate.tag, "commit": candidate.commit, "errors": verdict["errors"]})
                continue
            if name not in verdict["flows"]:
                # the newest valid release lacks the flow: removed, if an older release had it
                older = candidates[candidates.index(candidate) + 1:]
                live.removed = any(repo.flow_blob_id(c.commit, name) for c in older)
                break
            admitted = self.gate.admit(name, candidate, verdict, pinned=bool(live.pinned))
            if admitted == LIVE:
                live.release = candidate
                break
            if admitted == WAIT:  # pending approval: the live version is an older one
                continue
        live.pending = self.gate.settle_flow(name, live.release.tag if live.release else None,
                                             pinned=bool(live.pinned))
        return live

    def _record_changes(self, flows: dict[str, LiveFlow], cause: dict[str, Any]) -> None:
        current: dict[str, Any] = self.state.load("live", {})
        changed = False
        for name, live in flows.items():
            tag = live.release.tag if live.release else None
            commit = live.release.commit if live.release else None
            before = current.get(name) or {}
            if before.get("tag") != tag or before.get("commit") != commit:
                approval = self.gate.went_live(name, tag) or {}
                approved_by = [a["by"] for a in approval.get("approvals") or []] or None
                self.state.append_history({"at": rfc3339(self.clock.now()), "flow": name, "tag": tag,
                                           "commit": commit, "previous": before.get("tag"),
                                           "pinned": live.pinned, **cause,
                                           **({"approved_by": approved_by} if approved_by else {})})
                current[name] = {"tag": tag, "commit": commit}
                changed = True
        if changed:
            self.state.save("live", current)

    def verdict_for(self, flow: str, version: str) -> dict[str, Any] | None:
        """The validation verdict of the release of `flow` at `version` (None if there is no such release)."""
        with self.state.locked(), FlowRepo(self.repo_path) as repo:
            seen: dict[str, str] = self.state.load("seen", {})
            verdicts: dict[str, Any] = self.state.load("verdicts", {})
            self.tag_words = self.state.load("tag_words", {})
            releases, _, _ = self._releases(repo.refs(), seen)
            mine = [r for r in releases if r.flow == flow]
            pool = mine if any(not r.prerelease for r in mine) else [r for r in releases if r.flow is None] + mine
            for release in pool:
                if str(release.version) == version.removeprefix("v"):
                    verdict = self.verdict(repo, release, verdicts)
                    self.state.save("verdicts", verdicts)
                    return verdict
        return None

    # ---- overrides --------------------------------------------------------------------

    def set_override(self, kind: str, flow: str, version: str | None, *,
                     actor: dict[str, Any] | None = None) -> dict[str, Any]:
        """Pin, unpin, yank or unyank; the history entry carries `actor` (by, via, reason)."""
        if version is not None:
            try:
                semver.Version.parse(version.removeprefix("v"))
            except ValueError:
                raise UsageError(f"{version!r} is not a semantic version", hint="write e.g. 1.4.0") from None
            version = version.removeprefix("v")
        with self.state.locked():
            overrides = self.state.load("overrides", {"pins": {}, "yanks": {}})
            if kind == "pin":
                overrides["pins"][flow] = version
            elif kind == "unpin":
                if flow not in overrides["pins"]:
                    raise NotFound(f"{flow} is not pinned")
                del overrides["pins"][flow]
            elif kind == "yank":
                overrides["yanks"][flow] = sorted(set(overrides["yanks"].get(flow, [])) | {version})
            elif kind == "unyank":
                overrides["yanks"][flow] = [v for v in overrides["yanks"].get(flow, []) if v != version]
            self.state.save("overrides", overrides)
            self.state.append_history({"at": rfc3339(self.clock.now()), "flow": flow, "override": kind,
                                       "version": version, **(actor or {})})
        return overrides


def drafts(repo_path: Path, resolution: Resolution,
           listings: dict[str, dict[str, str]] | None = None) -> dict[str, list[dict[str, str]]]:
    """Per flow, the branches whose version of it differs from the live one: [{branch, commit}].

    `listings` caches each commit's flow blobs (commits never change), for a caller that asks often.
    """
    listings = {} if listings is None else listings
    found: dict[str, list[dict[str, str]]] = {}
    with FlowRepo(repo_path) as repo:

        def blobs(commit: str) -> dict[str, str]:
            if commit not in listings:
                listings[commit] = repo.flow_blobs(commit)
            return listings[commit]

        live = {name: blobs(flow.release.commit).get(name) if flow.release else None
                for name, flow in resolution.flows.items()}
        for branch, commit in repo.refs().branches.items():
            for name, blob in blobs(commit).items():
                if blob != live.get(name):
                    found.setdefault(name, []).append({"branch": branch, "commit": commit})
    return found
