"""What the inspection commands read through the API: a run's verification and logs, the releases, a diff.

The documents are the ones the CLI prints when it reads files itself (runner.runs.logs,
runner.releases.reports, the store's verify): only the source differs. A run a user
may not see does not exist for them (runner.daemon.visibility). Blocking reads run on
the daemon's file threads, git on its git thread.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from runner.auth import User
from runner.daemon.pools import in_pool
from runner.daemon.visibility import Visibility
from runner.releases.live import Resolution
from runner.releases.reports import diff_document, releases_document
from runner.releases.service import GitOps
from runner.runs.logs import step_logs
from runner.runs.store import Store


class Inspection:
    def __init__(self, *, store: Store, visibility: Visibility, gitops: GitOps, pool: Executor) -> None:
        self.store, self.visibility, self.gitops, self.pool = store, visibility, gitops, pool

    async def verify(self, run_id: str, user: User) -> dict[str, Any]:
        """{run, ok, events, problems}: the run's event chain checked, and its snapshot against the chain."""
        self.visibility.readable_run(run_id, user)
        result = await in_pool(self.pool, self.store.verify, run_id)
        return result.to_dict()

    async def logs(self, run_id: str, user: User, step: str | None = None) -> dict[str, Any]:
        """{run, steps: [{step, status, attempts, stdout, stderr}]}; an unknown step is NotFound."""
        run = self.visibility.readable_run(run_id, user)
        return await in_pool(self.pool, step_logs, self.store, run, step)

    async def releases(self, flow: str | None = None) -> dict[str, Any]:
        """The live versions as last reconciled, with drafts and history (the `signoff releases` document)."""
        resolution = self.gitops.resolution or Resolution({}, [], False, [])  # not read yet: nothing is live
        history = await in_pool(self.pool, self.gitops.resolver.state.history_by_flow)
        return releases_document(resolution, self.gitops.drafts, history, flow=flow)

    async def diff(self, flow: str, ref: str | None) -> dict[str, Any]:
        """A draft against the live version (the `signoff diff` document); with no ref the repository's working
        tree, or for a mirror of a clone URL its HEAD."""
        source = self.gitops.source
        live = self.gitops.resolution.flows.get(flow) if self.gitops.resolution else None
        working_tree = None if source.remote else source.path
        return await self.gitops.git(diff_document, source.path, live, flow, ref, working_tree)
