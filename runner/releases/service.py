"""The daemon's view of the flows repository: what is live, and where a run's flow comes from.

Git is touched from one worker thread at a time (GitPython is not thread-safe).
`reconcile()` refreshes the mirror (for a clone URL), re-reads the refs and
recomputes the live versions; a failure keeps the last good state and is
reported in health. Polling runs every `poll_interval` (with jitter); a push
webhook only asks for an earlier reconcile, and bursts merge into one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runner.releases import approval, changes as liveops
from runner.errors import NotFound
from runner.flows.load import find_flow_file, load_flow_bytes
from runner.releases.live import Resolution, Resolver, drafts
from runner.flows.model import Flow
from runner.releases.repo import FlowRepo, Source, working_tree
from runner.timeutil import Clock, rfc3339
from runner.releases.mirror import RepoSource, describe_git_error

log = logging.getLogger(__name__)
FLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


@dataclass
class FlowOrigin:
    """Where a run's flow came from: what the run record keeps."""

    flow: Flow
    ref: str | None
    commit: str | None
    version: str | None
    draft: bool
    dirty: bool = False  # the working tree's flow differs from `commit`


class GitOps:
    def __init__(self, *, source: RepoSource, data_dir: Path, config: Any, poll_interval: float,
                 clock: Clock | None = None, on_change: Callable[[Resolution], None] | None = None,
                 webhook_secret: str | None = None) -> None:
        self.source = source
        self.webhook_secret = webhook_secret
        self.config = config
        self.poll_interval = poll_interval
        self.clock = clock or Clock()
        self.data_dir = data_dir
        self.resolver = Resolver(source.path, data_dir, config=config, clock=self.clock)
        self.resolution: Resolution | None = None
        self.drafts: dict[str, list[dict[str, str]]] = {}  # per flow, branches that differ from live
        self._listings: dict[str, dict[str, str]] = {}  # flow blobs per commit, for the drafts
        self.error: str | None = None
        self.last_ok: str | None = None
        self.on_change = on_change
        self.on_resolved: Callable[[Resolution], None] | None = None  # after every good read (release approval)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.pool: Executor | None = None  # the thread git runs on, its owner's (None: the loop's default executor)

    async def git(self, func: Callable, *args: Any) -> Any:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self.pool, func, *args)

    async def reconcile(self, reason: str = "poll") -> Resolution | None:
        fetch_error = None
        try:
            await self.git(self.source.refresh)
        except Exception as exc:  # unreachable remote: go on with the refs the mirror already has
            fetch_error = describe_git_error(exc)
        try:
            resolution = await self.git(self.resolver.resolve)
        except Exception as exc:  # no mirror yet, or a broken repository: keep the last good state
            self.error = fetch_error or getattr(exc, "message", None) or describe_git_error(exc)
            log.warning("reconcile (%s) failed: %s", reason, self.error, extra={"event": "reconcile_failed"})
            if self.resolution is None and not self.source.remote:
                self.resolution = Resolution({}, [], False, [])  # no git here: the working tree runs, as drafts
            return self.resolution
        if fetch_error:
            log.warning("cannot reach %s (%s); serving the refs last fetched", self.source.url, fetch_error,
                        extra={"event": "fetch_failed"})
        changed = self.resolution is None or _live_map(self.resolution) != _live_map(resolution)
        try:
            self.drafts = await self.git(drafts, self.source.path, resolution, self._listings)
        except Exception as exc:  # the live versions still hold; drafts are shown again next time
            log.warning("could not list drafts: %s", describe_git_error(exc), extra={"event": "drafts_failed"})
        self.resolution, self.error = resolution, fetch_error
        if not fetch_error:
            self.last_ok = rfc3339(self.clock.now())
        for problem in resolution.problems:
            log.warning("%s", problem["message"], extra={"event": "tag_" + problem["problem"]})
        if changed:
            log.info("live versions: %s", _live_map(resolution), extra={"event": "live_changed"})
            if self.on_change:
                self.on_change(resolution)
        if self.on_resolved:
            self.on_resolved(resolution)
        return resolution

    def nudge(self) -> None:
        """Ask for a reconcile soon (a push webhook); many nudges before it runs make one."""
        self._wake.set()

    async def watch(self) -> None:
        while True:
            self._wake.clear()
            await self.reconcile("poll")
            delay = self.poll_interval * random.uniform(0.8, 1.2)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def change(self, change: str, flow: str, fields: dict[str, Any], actor: liveops.Actor) -> dict[str, Any]:
        """Make a change of what is live (authorized by the caller), then re-read the live versions at once."""
        if not FLOW_NAME.match(flow):
            raise NotFound(f"no flow named {flow!r}", hint="flow names are lower-case letters, digits and -")
        document = await self.git(lambda: liveops.apply(change, self.source.path, self.data_dir, flow, fields, actor,
                                                        config=self.config, clock=self.clock,
                                                        mirror=self.source.remote))
        await self.reconcile(change)
        return document

    async def decide_release(self, flow: str, version: str, user: Any, users: Any, decision: str,
                             comment: str | None) -> dict[str, Any]:
        """Record a decision on a release pending approval, then re-read the live versions at once."""
        if not FLOW_NAME.match(flow):
            raise NotFound(f"no flow named {flow!r}", hint="flow names are lower-case letters, digits and -")
        record = await self.git(lambda: approval.decide(self.resolver.state, flow, version, user, users, decision,
                                                        comment, clock=self.clock))
        await self.reconcile("release decision")
        return record

    async def announced(self, keys: list[str]) -> None:
        await self.git(approval.mark_announced, self.resolver.state, keys, rfc3339(self.clock.now()))

    # ---- where a run's flow comes from ------------------------------------------------

    @property
    def tagged(self) -> bool:
        return bool(self.resolution and self.resolution.tagged)

    async def origin(self, name: str, ref: str | None) -> FlowOrigin:
        """The live version of a flow, or with `ref` a draft pinned to the ref's commit."""
        if not isinstance(name, str) or not FLOW_NAME.match(name):
            raise NotFound(f"no flow named {name!r}", hint="flow names are lower-case letters, digits and -")
        if ref:
            source = await self.git(_read_at, self.source.path, ref, name)
            return FlowOrigin(self._load(source, name), source.ref, source.commit, None, True)
        if self.resolution is None:
            raise NotFound("the flows repository has not been read yet", hint=f"health says why: {self.error}")
        if not self.tagged:
            if self.source.remote:
                source = await self.git(_read_at, self.source.path, "HEAD", name)
            else:  # no release tags yet: the working tree runs, as a draft
                source = await self.git(working_tree, self.source.path,
                                        find_flow_file(self.source.path / "flows", name))
            return FlowOrigin(self._load(source, name), source.ref, source.commit, None, True, source.dirty)
        live = self.resolution.flows.get(name) if self.resolution else None
        if live is None or live.release is None:
            why = "it was removed in the newest release" if live and live.removed else "it has no live release"
            if live and live.refused:
                why += f" (refused: {', '.join(r['tag'] for r in live.refused)})"
            raise NotFound(f"flow {name} cannot start: {why}",
                           hint=f"release it (signoff release {name} <version>) or run a draft with --ref BRANCH")
        release = live.release
        source = await self.git(_read_at, self.source.path, release.commit, name)
        return FlowOrigin(self._load(source, name), f"refs/tags/{release.tag}", release.commit, release.tag, False)

    def _load(self, source: Source, name: str) -> Flow:
        return load_flow_bytes(source.data, source.label, expect_name=name,
                               config=self.config if getattr(self.config, "declared", False) else None)

    def live_flows(self) -> list[str]:
        if not self.resolution:
            return []
        return [name for name, live in self.resolution.flows.items() if live.release is not None]

    def health(self) -> dict[str, Any]:
        live = _live_map(self.resolution) if self.resolution else {}
        pending = {name: [item["tag"] for item in flow.pending]
                   for name, flow in (self.resolution.flows.items() if self.resolution else ()) if flow.pending}
        return {"source": self.source.url or str(self.source.path), "tagged": self.tagged, "live": live,
                "pending_approval": pending, "error": self.error, "last_reconciled": self.last_ok,
                "problems": self.resolution.problems if self.resolution else []}


def _live_map(resolution: Resolution) -> dict[str, str | None]:
    return {name: live.release.tag if live.release else None for name, live in resolution.flows.items()}


def _read_at(repo_path: Path, ref: str, name: str) -> Source:
    with FlowRepo(repo_path) as repo:
        full, commit = repo.resolve(ref)
        data = repo.flow_file(commit, name)
        if data is None:
            raise NotFound(f"flows/{name}.yaml does not exist at {full} ({commit[:12]})")
        return Source(data, f"flows/{name}.yaml@{full}", full, commit)
