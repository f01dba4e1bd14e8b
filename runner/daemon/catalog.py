"""The flows the daemon offers and changes of what is live (release, pin, unpin, yank, unyank)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runner.auth import LIVE_CHANGE_ROLES, User, may_change_live
from runner.errors import Forbidden
from runner.flows.load import check_file, expand_paths
from runner.releases import changes as liveops

log = logging.getLogger(__name__)
LIVE_CHANGES = tuple(liveops.CHANGES)  # each has its route: POST /api/v1/flows/{flow}/<change>


class Catalog:
    def __init__(self, *, gitops: Any, config: Any, work_dir: Path) -> None:
        self.gitops, self.config, self.work_dir = gitops, config, work_dir

    def flows(self) -> dict[str, Any]:
        """Live versions (with refusals) when the repo has release tags; else the working tree's flows."""
        if self.gitops.tagged:
            flows = self.gitops.resolution.to_dict()["flows"]
            for entry in flows:
                entry["drafts"] = self.gitops.drafts.get(entry["flow"], [])
            return {"tagged": True, "flows": flows}
        folder = self.work_dir / "flows"
        reports = [check_file(p, config=self.config) for p in expand_paths([folder])] if folder.is_dir() else []
        return {"tagged": False, "flows": [
            {"flow": r.name or Path(r.file).stem, "live": None,
             "working_tree": {"file": Path(r.file).name, "ok": r.ok, "errors": [p.to_dict() for p in r.errors],
                              "description": r.flow.description if r.flow else None,
                              "inputs": r.flow.inputs if r.flow else {}}} for r in reports]}

    async def change_live(self, change: str, flow: str, body: dict[str, Any], user: User) -> dict[str, Any]:
        """release, pin, unpin, yank or unyank, by a user who holds the role for it; recorded with who and why."""
        if not may_change_live(user, change):
            raise Forbidden(f"{user.name} may not {change} (needs the {LIVE_CHANGE_ROLES[change]} role)",
                            hint="ask someone with that role, or an admin")
        fields = liveops.request_fields(change, body)
        actor = liveops.Actor(user.name, "daemon", fields.get("reason"))
        document = await self.gitops.change(change, flow, fields, actor)
        log.info("%s of %s by %s", change, flow, user.name, extra={"event": "live_change", "change": change,
                                                                 "flow": flow, "user": user.name})
        return document
