"""A real Daemon composed in the test's own event loop, for races a subprocess cannot aim at.

Everything is real (config, store on disk, users, git repository, engine, inbox); only the
HTTP layer is left out, and the clock can be injected. `drain()` runs until no run task is
left (arq's `run_check` idea), so tests wait for work by condition, never by sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from daemon_support import GROUPS, USERS, flow_text, make_repo

from runner.auth import load_users
from runner.config import load_config
from runner.daemon import Daemon
from runner.gitops import GitOps
from runner.store import Store
from runner.timeutil import Clock
from runner.watcher import RepoSource


class InProcessDaemon:
    def __init__(self, root: Path, flows: dict[str, str | dict], *, clock: Clock | None = None) -> None:
        self.root = Path(root)
        self.repo = make_repo(self.root / "repo", flows)
        self.data = self.root / "data"
        self.clock = clock
        config_path = self.root / "signoff.yaml"
        config_path.write_text(flow_text({
            "repo": {"path": str(self.repo)}, "data": str(self.data), "groups": GROUPS,
            "users": {name: {"token_sha256": hashlib.sha256(name.encode()).hexdigest(), **spec}
                      for name, spec in USERS.items()},
            "channels": {"audit": {"kind": "log"}}}), encoding="utf-8")
        self.config = load_config(config_path)
        self.daemon: Daemon | None = None

    def compose(self) -> Daemon:
        store = Store(self.data)
        users = load_users(self.config.data, self.data, self.root)
        gitops = GitOps(source=RepoSource(path=self.repo), data_dir=self.data, config=self.config,
                        webhook_secret=None, poll_interval=3600)
        self.daemon = Daemon(config=self.config, store=store, users=users, gitops=gitops, work_dir=self.repo,
                             public_url="http://127.0.0.1:9", clock=self.clock)
        return self.daemon

    def user(self, name: str) -> Any:
        assert self.daemon is not None
        return self.daemon.users.authenticate(name)

    async def start(self) -> Daemon:
        daemon = self.compose()
        await daemon.start()
        return daemon

    async def drain(self, timeout: float = 20.0) -> None:
        """Until no run is being advanced (bounded)."""
        assert self.daemon is not None
        async with asyncio.timeout(timeout):
            while self.daemon._tasks:
                await asyncio.wait(list(self.daemon._tasks.values()))

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()
            self.daemon = None
