"""Who may read what, applied to runs and resources (the rule itself: runner.auth.may_see_run).

What a user may not see does not exist for them: NotFound, the same answer as for a run
or resource that is not there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.auth import User, Users, flow_approvers, may_see_run
from runner.errors import Invalid, NotFound, SignoffError
from runner.runs.engine import Engine
from runner.runs.store import RUN_ID, Store
from runner.status import RunStatus

LIST_BATCH = 200  # runs read per page of the store while filtering by who may see them


def run_status(value: str | None) -> str | None:
    """A `status` filter: one of the run statuses, or none at all."""
    if value is None:
        return None
    if value not in {status.value for status in RunStatus}:
        raise Invalid(f"status {value!r} is not a run status",
                      [f"status must be one of: {', '.join(status.value for status in RunStatus)}"],
                      hint="leave status out to list runs of every status")
    return value


def page_start(before: str | None) -> str | None:
    """A `before` cursor: a run id (the `next` of the page before), or none."""
    if before is not None and not RUN_ID.match(before):
        raise Invalid(f"before must be a run id (the `next` of the page before); got {before[:40]!r}")
    return before


class Visibility:
    def __init__(self, *, engine: Engine, store: Store, users: Users) -> None:
        self.engine, self.store, self.users = engine, store, users

    def may_see(self, user: User, run: dict[str, Any]) -> bool:
        try:
            approvers = flow_approvers(self.engine.flow_of(run["id"], run.get("flow_sha256")).steps)
        except (SignoffError, OSError):
            approvers = []  # a run whose flow copy cannot be read: its starter and admins still see it
        return may_see_run(user, run, self.users, approvers)

    def readable_run(self, run_id: str, user: User) -> dict[str, Any]:
        """The run, if `user` may see it; otherwise NotFound, the same answer as for a run that does not exist."""
        try:
            run = self.store.read_run(run_id)
        except NotFound:
            run = None
        if run is None or not self.may_see(user, run):
            raise NotFound(f"no run {run_id}", hint="GET /api/v1/runs (or `signoff runs list`) lists the runs "
                                                    "you may see")
        return run

    def _may_see_id(self, user: User, run_id: str) -> bool:
        try:
            return self.may_see(user, self.store.read_run(run_id))
        except SignoffError:
            return False

    def visible_runs(self, user: User, *, limit: int, before: str | None = None, **filters: Any) -> list[dict]:
        """Up to `limit` runs (newest first, older than `before`) that `user` may see."""
        found: list[dict] = []
        batch = max(limit, LIST_BATCH)
        while len(found) < limit:
            runs = self.store.list_runs(limit=batch, before=before, **filters)
            found += [run for run in runs if self.may_see(user, run)]
            if len(runs) < batch:
                break
            before = runs[-1]["id"]
        return found[:limit]

    def readable_resource(self, ref: str, user: User) -> tuple[Path, dict[str, Any]]:
        """(path, metadata) of a resource that a run `user` may see stored; otherwise NotFound."""
        try:
            path, meta = self.store.resource_path(ref), self.store.resource_meta(ref)
            runs = self.store.resource_runs(ref)
        except NotFound:
            path, meta, runs = None, {}, []
        if path is not None and (user.can("admin") or any(self._may_see_id(user, run_id) for run_id in runs)):
            return path, meta
        raise NotFound(f"no resource {ref.removeprefix('res://')}",
                       hint="a resource is served to those who may see a run that stored it")
