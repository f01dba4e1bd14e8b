"""The real daemon app on a loopback port for the page tests, with the daemon object at hand.

`live_daemon(root, flows)` lays the flows out as InProcessDaemon.lay_out does
(users of tests/daemon_support.py, each one's token is its own name), builds the
daemon and its app exactly as `signoff serve` does, and serves the app with
uvicorn in a thread, lifespan on, so the daemon starts and runs on the server's
own loop. The test holds the Daemon (for `web_secrets`, to sign links as the
notification side does) and talks to it over HTTP, as a browser and the CLI do.
"""

from __future__ import annotations

import gc
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from daemon_support import TERMINAL, InProcessDaemon
from support import wait_until

START_TIMEOUT = 30.0  # seconds: safety nets for a loaded machine, not performance checks
WAIT_MS = 20_000  # Playwright's bound on each wait in the page tests, as a safety net too


@dataclass
class Live:
    daemon: Any
    url: str

    def api(self, user: str = "root") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {user}"}, timeout=30.0)

    def start_run(self, flow: str, inputs: dict | None = None, user: str = "alice") -> dict:
        with self.api(user) as client:
            response = client.post(f"/api/v1/flows/{flow}/runs", json={"inputs": inputs or {}})
        assert response.status_code == 201, response.text
        return response.json()

    def run(self, run_id: str) -> dict:
        with self.api() as client:
            response = client.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, run_id: str, predicate: Any, what: str, timeout: float = 20.0) -> dict:
        seen: dict[str, Any] = {}

        def check() -> dict | None:
            seen["run"] = self.run(run_id)
            return seen["run"] if predicate(seen["run"]) else None

        return wait_until(check, timeout, message=lambda: f"{what}; last seen {seen.get('run', {}).get('status')} "
                                                          f"{ {k: v['status'] for k, v in seen.get('run', {}).get('steps', {}).items()} }")

    def wait_step(self, run_id: str, step: str, status: str = "waiting") -> dict:
        return self.wait_for(run_id, lambda run: run["steps"][step]["status"] == status,
                             f"step {step} of {run_id} to be {status}")

    def wait_end(self, run_id: str) -> dict:
        return self.wait_for(run_id, lambda run: run["status"] in TERMINAL, f"run {run_id} to end")


@contextmanager
def live_daemon(root: Path, flows: dict[str, str | dict], channels: dict[str, dict] | None = None) -> Iterator[Live]:
    """The daemon serving `flows`, reached at its own public URL; `channels` are added to its config."""
    from runner.cli.app import Env
    from runner.daemon.serve import build

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    InProcessDaemon.lay_out(root, flows, users=True)
    config_path = root / "signoff.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.setdefault("server", {})["public_url"] = f"http://127.0.0.1:{port}"  # the links it sends lead here
    config.setdefault("channels", {}).update(channels or {})
    config_path.write_text(json.dumps(config, indent=2))
    daemon, app, _, _ = build(Env(None, str(root / "repo"), str(config_path)))
    # no access log: page URLs may carry decision-link tokens, which are never logged
    # a browser keeps its connections open: the shutdown does not wait for it to hang up
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           loop="asyncio", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"pages-test-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=START_TIMEOUT,
                   what=f"the daemon on port {port} to start")
        assert server.started, f"the daemon on port {port} stopped before it started"
        yield Live(daemon, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT)
        sock.close()
        gc.unfreeze()  # what the daemon's start froze is the test process's own


def sign_in(page: Any, live: Live, user: str, then: str = "/ui/") -> None:
    page.goto(f"{live.url}{then}")
    assert "/ui/signin" in page.url  # a page without a session asks for one
    page.fill("#token", user)
    page.click("form[action='/ui/signin'] button[type=submit]")
    page.wait_for_url(f"**{then}*", timeout=WAIT_MS)


def shown(page: Any, css: str, text: str) -> None:
    page.locator(css, has_text=text).first.wait_for(timeout=WAIT_MS)
