"""The replay summary of a release pending approval: the tag's flow fed the live version's recent runs.

When a release becomes pending, the daemon replays the last `REPLAYED_RUNS` ended live
runs of its flow (runner.runs.replay: failed ones first) against the flow as committed
at the tag's commit, on its replay thread (never on the event loop), and keeps a
summary with the pending record (runner.releases.approval.note_replay, through the
release state only, so it may live in PostgreSQL). Approvers see it wherever they see
the pending release: the API, `signoff releases`, the releases page and MCP.

Nothing in a replay touches the world: runner.dryrun's guard holds in the replay's
thread. The summary keeps counts, final statuses and each run's step verdicts, never a
step's outputs or rendered command: those stay on the run's page, for whoever may see
the run. A daemon that stops before a summary is kept replays again when it next reads
the refs (the record still has none).
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from typing import Any, Callable

from runner.daemon.pools import in_pool
from runner.errors import SignoffError
from runner.releases.approval import note_replay, record_key
from runner.releases.live import Resolution
from runner.runs.replay import replay_recent
from runner.runs.store import Store
from runner.timeutil import Clock, rfc3339

log = logging.getLogger(__name__)
REPLAYED_RUNS = 10
STEP_FIELDS = ("step", "kind", "visit", "verdict", "status", "old_status", "assumed")
ERROR_SHOWN = 500


class ReleaseReplays:
    def __init__(self, *, gitops: Any, store: Store, config: Any, pool: Executor, spawn: Callable[[Any], None],
                 run_url: Callable[[str], str], clock: Clock) -> None:
        self.gitops, self.store, self.config, self.pool = gitops, store, config, pool
        self._spawn, self.run_url, self.clock = spawn, run_url, clock
        self._replaying: set[str] = set()

    def resolved(self, resolution: Resolution) -> None:
        """After each read of the refs: replay for every pending release that has no summary yet."""
        for item in (i for flow in resolution.flows.values() for i in flow.pending):
            key = record_key(item["flow"], item["tag"])
            if item.get("replay") is not None or key in self._replaying:
                continue
            self._replaying.add(key)
            self._spawn(self.replay(item, key))

    async def replay(self, item: dict[str, Any], key: str) -> None:
        """Replay, keep the summary with the record, and show it at once (the item is the served one)."""
        try:
            summary = await self.summary(item)
            if await self.gitops.git(note_replay, self.gitops.resolver.state, key, item["commit"], summary):
                item["replay"] = summary
            log.info("release %s %s replayed against %d run(s)", item["flow"], item["tag"], len(summary["runs"]),
                     extra={"event": "release_replayed", "flow": item["flow"], "tag": item["tag"]})
        except Exception:  # a replay never stops the daemon; the next read of the refs tries again
            log.exception("replaying the pending release %s failed", key, extra={"event": "release_replay_failed"})
        finally:
            self._replaying.discard(key)

    async def summary(self, item: dict[str, Any]) -> dict[str, Any]:
        """{at, against: {tag, commit}, live, last, error, summary, runs: [...]} (see `compact` for a run)."""
        base = {"at": rfc3339(self.clock.now()), "against": {"tag": item["tag"], "commit": item["commit"]},
                "live": item.get("base"), "last": REPLAYED_RUNS}
        try:
            origin = await self.gitops.origin(item["flow"], item["commit"])
            result = await in_pool(self.pool, replay_recent, self.store, item["flow"], origin.flow,
                                   last=REPLAYED_RUNS, config=self.config)
        except SignoffError as exc:  # the flow cannot be read at the tag: the approvers are told why
            return {**base, "error": _cut(exc.message), "summary": None, "runs": []}
        return {**base, "error": None, "summary": result["summary"],
                "runs": [self.compact(report) for report in result["runs"]]}

    def compact(self, report: dict[str, Any]) -> dict[str, Any]:
        """One run's replay as approvers see it: {run, url, recorded, status, error, stopped_at, counts,
        steps: [{step, kind, visit, verdict, status, old_status, assumed}]}."""
        return {"run": report["run"], "url": self.run_url(report["run"]), "recorded": report["recorded"]["status"],
                "status": report["status"], "error": _cut(report.get("error")), "stopped_at": report.get("stopped_at"),
                "counts": report["counts"], "steps": [{name: entry.get(name) for name in STEP_FIELDS}
                                                      for entry in report["steps"]]}


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= ERROR_SHOWN else text[:ERROR_SHOWN] + "..."
