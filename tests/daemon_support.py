"""The real signoff daemon as a subprocess, for the daemon tests.

`DaemonProcess(root, flows=...)` lays out, under `root`:

    root/repo/            a real git repository (branch main) with flows/<name>.yaml, committed
    root/data/            the daemon's data directory (kept across restarts)
    root/signoff.yaml     the config: loopback host, a free port, users, groups, channels
    root/daemon.log       the daemon's stdout and stderr (shown when it fails to start)

and runs `python -m runner serve --config root/signoff.yaml`. Users alice,
bob, carol and dave get random bearer tokens handed over in the child's
environment (`token: {env: ...}`); only their hashes reach the daemon.

    alice  roles run, approve        groups ops
    bob    roles run, approve        groups ops, editors
    carol  roles run, approve        groups ops, editors, finance
    dave   roles run (no approve)    groups ops
    rita   roles release             (no groups)
    root   roles admin               (no groups)

The helpers that only observe (`run`, `events`, `wait_*`) read as `root` (an
admin sees every run), so a test's own reads never depend on who may see what.
`start()` polls GET /api/v1/health until the daemon answers (deadline 15 s);
`stop()` sends SIGTERM and waits (SIGKILL after 10 s); `kill()` is `kill -9`;
`restart()` is stop + start on the same data dir and port. `public_url` may
name the port as `{port}` (e.g. "http://localhost:{port}"). `api(user)` gives
an httpx.Client with that user's token (closed by `close()`), `cli(...)` runs
the real CLI against the daemon with SIGNOFF_SERVER / SIGNOFF_TOKEN.
Nothing is mocked: real git, real sockets, real processes.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
from postgres_support import on_postgres, shared_server
from support import eventually, flow_text, free_port, git, make_repo, run_schema_errors, signoff_env, wait_until

REPO_MESSAGE = "flows for the daemon tests"
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0
TERMINAL = frozenset({"succeeded", "failed", "rejected", "cancelled", "timed_out"})

USERS: dict[str, dict[str, Any]] = {
    "alice": {"roles": ["run", "approve"], "groups": ["ops"]},
    "bob": {"roles": ["run", "approve"], "groups": ["ops"]},
    "carol": {"roles": ["run", "approve"], "groups": ["ops"]},
    "dave": {"roles": ["run"], "groups": ["ops"]},
    "rita": {"roles": ["release"]},
    "root": {"roles": ["admin"]},
}
_databases = itertools.count(1)
OBSERVER = "root"  # who the observing helpers read as: an admin, who may see every run
GROUPS: dict[str, dict[str, Any]] = {
    "editors": {"members": ["bob", "carol"]},
    "finance": {"members": ["carol"]},
}


class DaemonProcess:
    """One real daemon (a subprocess) over its own repo, data dir, config and port."""

    def __init__(self, root: Path, *, flows: dict[str, str | dict] | None = None, copy: Iterable[str] = (),
                 channels: dict[str, dict] | None = None, public_url: str | None = None,
                 limits: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 store: dict[str, Any] | None = None, repo: Path | None = None,
                 tokens: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # several daemons of one database share a repository and the users' tokens
        self.repo = repo or make_repo(self.root / "repo", flows or {}, copy=copy, message=REPO_MESSAGE)
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.public_url = (public_url or self.url).format(port=self.port)
        self.tokens = tokens or {name: secrets.token_urlsafe(24) for name in USERS}
        self.log_path = self.root / "daemon.log"
        self.config_path = self.root / "signoff.yaml"
        self.extra_env = dict(env or {})
        if store is None and on_postgres():
            store = {"kind": "postgres", "dsn": {"env": "SIGNOFF_DSN"}}
            self.extra_env.setdefault("SIGNOFF_DSN", shared_server().database())
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port, "public_url": self.public_url},
            "repo": {"path": str(self.repo)},
            "data": str(self.data),
            "users": {name: {"token": {"env": f"{name.upper()}_TOKEN"}, **spec} for name, spec in USERS.items()},
            "groups": GROUPS,
            "channels": {"audit": {"kind": "log"}, **(channels or {})},
        }
        if limits:
            config["limits"] = limits
        if store:
            config["store"] = store
        self.config_path.write_text(flow_text(config), encoding="utf-8")
        self.process: subprocess.Popen | None = None
        self._log = None
        self._clients: dict[str, httpx.Client] = {}
        self.starts = 0
        self.started_at = self.ready_after = 0.0  # of the latest start: perf_counter at Popen, seconds to health

    # ---- lifecycle ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        environ = signoff_env(**{f"{name.upper()}_TOKEN": token for name, token in self.tokens.items()})
        environ.update(self.extra_env)
        return environ

    def start(self, *, program: list[str] | None = None, poll: float = 0.05,
              deadline: float = START_DEADLINE) -> "DaemonProcess":
        """Start `signoff serve` (or `program` + the serve arguments) and wait until health answers 200.

        Sets `started_at` (perf_counter at Popen) and `ready_after` (seconds until that 200).
        """
        assert self.process is None, "the daemon is already running"
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {self.starts + 1} =====\n".encode())
        self._log.flush()
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            [*(program or [sys.executable, "-m", "runner"]), "serve", "--config", str(self.config_path)],
            cwd=self.root, env=self.env(), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        give_up = time.monotonic() + deadline
        with httpx.Client(timeout=2.0) as probe:
            while True:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    self._reap()
                    raise AssertionError(f"the daemon exited with {code} before it was ready:\n{self.log_tail()}")
                try:
                    if probe.get(f"{self.url}/api/v1/health").status_code == 200:
                        self.ready_after = time.perf_counter() - self.started_at
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > give_up:
                    self.kill()
                    raise AssertionError(f"the daemon was not ready within {deadline:.0f}s:\n{self.log_tail()}")
                time.sleep(poll)

    def stop(self) -> int | None:
        """SIGTERM, wait for a graceful exit (SIGKILL after 10 s); the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_DEADLINE)
        return self._reap()

    def kill(self) -> int | None:
        """kill -9: no chance to finish anything."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_DEADLINE)
        return self._reap()

    def restart(self, *, hard: bool = False) -> "DaemonProcess":
        self.kill() if hard else self.stop()
        return self.start()

    def _reap(self) -> int | None:
        code = self.process.returncode if self.process else None
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self.stop()

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- HTTP -----------------------------------------------------------------

    def api(self, user: str | None = "alice") -> httpx.Client:
        """An httpx.Client on the daemon's URL with `user`'s bearer token (None: no token)."""
        key = user or ""
        if key not in self._clients:
            headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
            self._clients[key] = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)
        return self._clients[key]

    def new_client(self, user: str | None = "alice", *, asynchronous: bool = False):
        """A fresh client (the caller closes it), for concurrent requests."""
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        kind = httpx.AsyncClient if asynchronous else httpx.Client
        return kind(base_url=self.url, headers=headers, timeout=30.0)

    def start_run(self, flow: str, inputs: dict | None = None, user: str = "alice", **body: Any) -> dict:
        response = self.api(user).post(f"/api/v1/flows/{flow}/runs", json={"inputs": inputs or {}, **body})
        assert response.status_code == 201, f"start {flow}: {response.status_code} {response.text}"
        return response.json()

    def run(self, run_id: str, user: str = OBSERVER) -> dict:
        response = self.api(user).get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def events(self, run_id: str, user: str = OBSERVER) -> list[dict]:
        response = self.api(user).get(f"/api/v1/runs/{run_id}/events")
        assert response.status_code == 200, response.text
        return response.json()["events"]

    def wait_for(self, run_id: str, predicate: Callable[[dict], Any], timeout: float = 20.0,
                 what: str = "the run") -> dict:
        last: dict[str, Any] = {}

        def check() -> dict | None:
            last["run"] = self.run(run_id)
            return last["run"] if predicate(last["run"]) else None

        return wait_until(check, timeout, message=lambda: f"{what}; last seen: {_summary(last.get('run'))}\n"
                                                          f"daemon log:\n{self.log_tail(20)}")

    def wait_status(self, run_id: str, *statuses: str, timeout: float = 20.0) -> dict:
        return self.wait_for(run_id, lambda run: run["status"] in statuses, timeout,
                             what=f"run {run_id} to be {' or '.join(statuses)}")

    def wait_end(self, run_id: str, timeout: float = 20.0) -> dict:
        return self.wait_status(run_id, *TERMINAL, timeout=timeout)

    def wait_step(self, run_id: str, step: str, status: str = "waiting", timeout: float = 20.0) -> dict:
        return self.wait_for(run_id, lambda run: run["steps"][step]["status"] == status, timeout,
                             what=f"step {step} of run {run_id} to be {status}")

    def decide(self, run_id: str, step: str, user: str, decision: str = "approve", **body: Any) -> httpx.Response:
        return self.api(user).post(f"/api/v1/runs/{run_id}/steps/{step}/decision",
                                   json={"decision": decision, **body})

    def callback_url(self, run: dict, step: str) -> str:
        return f"{self.url}/callbacks/{run['callbacks'][step]}"

    def post_callback(self, url_or_token: str, body: bytes | dict, **kwargs: Any) -> httpx.Response:
        """POST a callback (no token needed: the URL is the credential) to a full URL or a bare token."""
        url = url_or_token if "://" in url_or_token else f"{self.url}/callbacks/{url_or_token}"
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.api(None).post(url, content=content, headers={"Content-Type": "application/json"}, **kwargs)

    # ---- files and the CLI --------------------------------------------------------

    def run_json(self, run_id: str) -> dict:
        """The run's snapshot as the store keeps it: run.json, or its row in the database."""
        dsn = self.extra_env.get("SIGNOFF_DSN")
        if dsn:
            import psycopg

            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT snapshot::text FROM runs WHERE id = %s", (run_id,)).fetchone()
            assert row and row[0], f"run {run_id} has no snapshot in the database"
            return json.loads(row[0])
        return json.loads((self.data / "runs" / run_id / "run.json").read_text())

    def assert_record_valid(self, run_id: str) -> None:
        """The run's run.json matches schema/run.schema.json (DESIGN section 4)."""
        problems = run_schema_errors(self.run_json(run_id))
        assert not problems, "run.json does not match schema/run.schema.json:\n" + "\n".join(problems)

    def cli_env(self, user: str | None = "alice", env: dict[str, str | None] | None = None) -> dict[str, str]:
        """The CLI's environment: SIGNOFF_SERVER, SIGNOFF_TOKEN of `user`; `env` adds to it (None removes)."""
        environ = signoff_env()
        environ["SIGNOFF_SERVER"] = self.url
        environ["SIGNOFF_DATA"] = str(self.root / "cli-data")  # never the daemon's token file
        if user:
            environ["SIGNOFF_TOKEN"] = self.tokens[user]
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        return environ

    def cli(self, *args: str, user: str | None = "alice", timeout: float = 60,
            env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
        """The real `signoff` CLI against this daemon (SIGNOFF_SERVER / SIGNOFF_TOKEN; `env` as in cli_env)."""
        environ = self.cli_env(user, env)
        return subprocess.run([sys.executable, "-m", "runner", *args], cwd=self.root, env=environ,
                              capture_output=True, text=True, timeout=timeout)


def _summary(run: dict | None) -> str:
    if not run:
        return "nothing"
    steps = {k: v.get("status") for k, v in (run.get("steps") or {}).items()}
    return f"status={run.get('status')} current={run.get('current_step')} steps={steps} error={run.get('error')}"


def event_types(events: list[dict], step: str | None = None) -> list[str]:
    return [e["type"] for e in events if step is None or e.get("step") == step]


# ---- the daemon in the test's own event loop ---------------------------------------------


class InProcessDaemon:
    """The real daemon, built as `signoff serve` builds it, started and stopped in the test's event loop.

    For what needs an injected clock (a ManualClock: its timers fire when the test
    moves it). `lay_out(root, flows, tag=...)` makes repo/ (the flows committed,
    released as `tag` if given), signoff.yaml (no users: the local user does
    everything; one channel, `audit`, of kind log) and data/. No HTTP server: the test calls the daemon. Each
    `async with` is a new daemon on the same data dir, so two in a row are a
    restart. With `users=True` the config names the users of USERS (each one's
    token is its own name), for tests of who may do what; `named(name)` is one.
    `drain()` runs until no run is being advanced (arq's `run_check` idea).
    """

    def __init__(self, root: Path, clock: Any) -> None:
        """On a `root` that `lay_out` prepared."""
        self.root, self.clock = Path(root), clock
        self.data = self.root / "data"
        self.config_path = self.root / "signoff.yaml"
        self.daemon: Any = None

    @staticmethod
    def lay_out(root: Path, flows: dict[str, str | dict], *, tag: str | None = None, users: bool = False) -> Path:
        repo = make_repo(Path(root) / "repo", flows, message=REPO_MESSAGE)
        if tag:
            git(repo, "tag", tag)
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 8080}, "repo": {"path": str(repo), "poll_interval": "1h"},
            "data": str(Path(root) / "data"), "channels": {"audit": {"kind": "log"}}}
        if users:
            config["users"] = {name: {"token_sha256": hashlib.sha256(name.encode()).hexdigest(), **spec}
                               for name, spec in USERS.items()}
            config["groups"] = GROUPS
        if on_postgres():  # the daemon runs in this process: its database is named in this environment
            variable = f"SIGNOFF_TEST_DSN_{next(_databases)}"
            os.environ[variable] = shared_server().database()
            config["store"] = {"kind": "postgres", "dsn": {"env": variable}}
        (Path(root) / "signoff.yaml").write_text(flow_text(config), encoding="utf-8")
        return Path(root)

    async def __aenter__(self) -> Any:
        from runner.cli.app import Env
        from runner.daemon.serve import build

        self.daemon, _, _, _ = build(Env(None, str(self.root / "repo"), str(self.config_path)), clock=self.clock)
        await self.daemon.start()
        return self.daemon

    async def __aexit__(self, *exc: object) -> None:
        await self.daemon.stop()
        gc.unfreeze()  # what the daemon's start froze is the test process's own

    @property
    def user(self) -> Any:
        """The local user (all roles), as the daemon knows it."""
        return next(iter(self.daemon.users.by_hash.values()))

    def named(self, name: str) -> Any:
        """A user of USERS (laid out with `users=True`)."""
        return self.daemon.users.authenticate(name)

    async def drain(self, timeout: float = 20.0) -> None:
        """Until no run is being advanced (bounded)."""
        async with asyncio.timeout(timeout):
            while self.daemon._tasks:
                await asyncio.wait(list(self.daemon._tasks.values()))

    async def settled(self, timeout: float = 10.0) -> None:
        """Every timer due on the clock has fired and what it set off has finished."""
        daemon, now = self.daemon, self.clock.now().timestamp()
        await eventually(lambda: not daemon._side_tasks and not daemon._tasks
                         and all(when > now for when, _, _ in daemon._timers), timeout, "the due timers to fire")
