"""The one module of helpers the tests share (the daemon, GitOps and sshd helpers build on it).

Plain functions and classes (no fixtures), so each test module states what it
uses. Everything here is a real part: files in temp dirs, a real git, a real
HTTP server on loopback, real subprocesses. The one stand-in is `FakeClock`,
the injectable clock the engine is designed to take.

- the project: `PROJECT_ROOT`, `PROJECT_FLOWS` (its flows/ directory)
- processes: `clean_environ()`, `signoff_env(**extra)` (plus the project on
  PYTHONPATH), `run_cli(args, cwd=, env=)` -> `CliResult`, `free_port()`
- git: `git(cwd, *args)`, `identify(repo)`, `init_repo(path)`,
  `make_repo(path, flows, copy=...)`
- flow files: `flow_text(content)`, `write_flow(root, name, content)`,
  `load_test_flow(tmp_path, text)` (a `Flow`); factories over copy-pasted YAML:
  `simple_flow`, `broken_flow` (text), `flow_doc` with `set_step`,
  `approval_step`, `callback_step` (dicts)
- engine and store: `FakeClock`, `ManualClock`, `Harness`, `harness_with_config`
- waiting: `wait_until` (threads), `eventually` (the test's own event loop)
- a real HTTP server: `HttpServer`, `Request`, `json_reply`
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple
from urllib.parse import parse_qs, urlsplit

from runner.config import load_config
from runner.runs.engine import Engine
from runner.flows.load import load_flow
from runner.flows.inputs import resolve_inputs
from runner.flows.model import Flow
from runner.runs.files import FileStore
from runner.runs.store import Store
from runner.timeutil import Clock
from yamlcompat import YAML

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FLOWS = PROJECT_ROOT / "flows"


# ---- time ---------------------------------------------------------------------


class FakeClock(Clock):
    """Virtual wall time that moves only when something sleeps; `sleep` returns at once.

    Every sleep is recorded in `slept` (seconds asked), so tests can check backoff
    and timer lengths without waiting for them.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.start = start or datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc)
        self.offset = timedelta(0)
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.start + self.offset

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.offset += timedelta(seconds=max(0.0, seconds))
        await asyncio.sleep(0)


class ManualClock(Clock):
    """Wall time that moves only when the test moves it (`set`); whatever sleeps or waits on it wakes then.

    For a daemon run in the test's own event loop: its timers fire when the test
    moves the clock past them, never on their own.
    """

    def __init__(self, start: datetime) -> None:
        self.current = start
        self._moved: asyncio.Event | None = None

    def now(self) -> datetime:
        return self.current

    def set(self, moment: datetime) -> None:
        self.current = moment
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def sleep(self, seconds: float) -> None:
        await self.wait(asyncio.Event(), seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        deadline = self.current + timedelta(seconds=max(0.0, seconds))
        while not event.is_set() and self.current < deadline:
            if self._moved is None:
                self._moved = asyncio.Event()
            watchers = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._moved.wait())]
            try:
                await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for watcher in watchers:
                    watcher.cancel()
        return event.is_set()


def clean_environ() -> dict[str, str]:
    """os.environ without anything that would point signoff or git elsewhere."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SIGNOFF_") and k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02,
               what: str = "condition", *, message: str | Callable[[], str] | None = None) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds.

    `message` (text, or a function that describes the state at the time) overrides `what`.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else (message or what)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {text}")
        time.sleep(interval)


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "the condition") -> Any:
    """wait_until for a test that runs its own event loop: let the loop (and its threads) work meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_pid_gone(pid: int, timeout: float = 10.0) -> None:
    wait_until(lambda: not pid_alive(pid), timeout=timeout, what=f"process {pid} to end")


def kill_quietly(pid: int) -> None:
    """Clean-up for processes a test left behind (its own children only)."""
    if pid <= 0:  # killpg(0) would be the test run's own process group
        return
    for target in (lambda: os.killpg(pid, 9), lambda: os.kill(pid, 9)):
        try:
            target()
        except OSError:
            pass


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


# ---- flows, engine, store --------------------------------------------------------


def write_config(tmp_path: Path, data: dict) -> Path:
    """A signoff.yaml; JSON is valid YAML, so the dict is written as JSON."""
    path = tmp_path / "signoff.yaml"
    path.write_text(json.dumps(data, indent=2))
    return path


@dataclass
class Harness:
    """An Engine over a real Store in a temp dir, with a fake clock."""

    tmp_path: Path
    config: Any = None
    clock: FakeClock = field(default_factory=FakeClock)
    keep_output: bool = True  # collect the live output the engine records as step_output events
    outputs: list[tuple[str, str, str]] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    engine: Engine = field(init=False)
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = FileStore(self.tmp_path / "data")
        (self.tmp_path / "work").mkdir(parents=True, exist_ok=True)
        kwargs = {"masker": self.config.masker} if self.config is not None else {}
        self.engine = Engine(self.store, work_dir=self.tmp_path / "work", config=self.config, clock=self.clock,
                             listener=self._on_event, **kwargs)

    def _on_event(self, run: dict, event: dict) -> None:
        self.events.append(dict(event))
        if event["type"] == "step_output" and self.keep_output:
            self.outputs.append((event["step"], event["stream"], event["text"]))

    def flow(self, text: str) -> Flow:
        return load_test_flow(self.tmp_path, text, config=self.config)

    def start(self, flow: Flow, inputs: dict | None = None, *, draft: bool = True) -> str:
        """Create a run as the CLI does: inputs defaulted and checked by `resolve_inputs` first."""
        values = resolve_inputs(flow, inputs or {})
        return self.engine.create_run(flow, values, started_by="tester", draft=draft)

    def run(self, flow: Flow | str, inputs: dict | None = None, *, draft: bool = True) -> dict:
        if isinstance(flow, str):
            flow = self.flow(flow)
        run_id = self.start(flow, inputs, draft=draft)
        return asyncio.run(self.engine.advance(run_id))

    def run_dir(self, run_id: str) -> Path:
        return self.store.run_dir(run_id)

    def history(self, run_id: str) -> list[dict]:
        return list(self.store.read_events(run_id))

    def snapshot(self, run_id: str) -> dict:
        return json.loads((self.run_dir(run_id) / "run.json").read_text())


def harness_with_config(tmp_path: Path, data: dict, **kwargs: Any) -> Harness:
    return Harness(tmp_path, config=load_config(write_config(tmp_path, data)), **kwargs)


@functools.cache
def _run_validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads((PROJECT_ROOT / "schema" / "run.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def run_schema_errors(record: dict) -> list[str]:
    """Where `record` breaks schema/run.schema.json (DESIGN §4: tests validate real records against it)."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in _run_validator().iter_errors(record)]


def all_file_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---- a real HTTP server on loopback ----------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]


def json_reply(status: int, data: Any) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


class HttpServer:
    """ThreadingHTTPServer on 127.0.0.1:0 that records every request.

    `routes` maps "METHOD /path" to a function(Request, nth_call) -> (status, headers, body);
    unknown routes answer 404. Use as a context manager so the socket is always closed.
    """

    def __init__(self, routes: dict[str, Callable[[Request, int], Reply]] | None = None) -> None:
        self.routes = dict(routes or {})
        self.requests: list[Request] = []
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body)
                key = f"{self.command} {parts.path}"
                with owner._lock:
                    owner.requests.append(request)
                    owner.calls[key] = owner.calls.get(key, 0) + 1
                    nth = owner.calls[key]
                route = owner.routes.get(key)
                status, headers, payload = route(request, nth) if route else json_reply(404, {"error": "no route"})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-http", daemon=True)

    def __enter__(self) -> "HttpServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def free_port() -> int:
    """A loopback port nobody listens on right now (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the CLI as a subprocess ----------------------------------------------------------


def signoff_env(**extra: str) -> dict[str, str]:
    """A clean environment with the project on PYTHONPATH, for `python -m runner`; `extra` is added."""
    environ = clean_environ()
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    environ.update(extra)
    return environ


class CliResult(NamedTuple):
    code: int
    out: str
    err: str
    json: Any


def run_cli(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> CliResult:
    """`python -m runner ARGS` as a subprocess in `signoff_env(**env)` (cwd: the project).

    `json` is the parsed stdout when `--json` was passed, else None; it unpacks as
    `code, out, err, doc = run_cli([...])`.
    """
    done = subprocess.run(signoff_cmd(*map(str, args)), cwd=cwd or PROJECT_ROOT, env=signoff_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)
    document = None
    if "--json" in args and done.stdout.strip():
        try:
            document = json.loads(done.stdout)
        except ValueError as exc:
            raise AssertionError(f"--json output is not one JSON document ({exc}):\nstdout:\n{done.stdout}\n"
                                 f"stderr:\n{done.stderr}") from None
    return CliResult(done.returncode, done.stdout, done.stderr, document)


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for `run_signoff`: no inherited SIGNOFF_*, SIGNOFF_DATA, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNOFF_")}
    env.update({"SIGNOFF_DATA": str(data_dir), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def signoff_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner", *args]


def run_signoff(cwd: Path, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` in exactly `env` (see `cli_env`), the completed process as it is."""
    return subprocess.run(signoff_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---- git ----------------------------------------------------------------------------


IDENTITY = (("user.name", "Test Author"), ("user.email", "author@example.com"),
            ("commit.gpgsign", "false"), ("tag.gpgsign", "false"), ("init.defaultBranch", "main"))
ALL_PROJECT_FLOWS = tuple(sorted(path.stem for path in PROJECT_FLOWS.glob("*.yaml")))


def git(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """git in `cwd` with a clean environment (`env` added; the repo's own config gives the identity); stdout, stripped.

    Fails the test when git fails, unless `check=False`.
    """
    environ = clean_environ()
    environ.update(env or {})
    done = subprocess.run(["git", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} in {cwd} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip()


def identify(path: Path, name: str = "Test Author", email: str = "author@example.com") -> None:
    """A committer identity (and no signing) in the repository's own config."""
    for key, value in IDENTITY:
        git(path, "config", key, value)
    git(path, "config", "user.name", name)
    git(path, "config", "user.email", email)


def init_repo(path: Path) -> Path:
    """`path` as a fresh git repository on branch main, with an identity and a flows/ dir; nothing committed."""
    (path / "flows").mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    identify(path)
    return path


def make_repo(path: Path, flows: dict[str, str | dict] | None = None, *, copy: Iterable[str] = (),
              message: str = "flows") -> Path:
    """A real git repository at `path` with flows/<name>.yaml committed on branch main.

    `flows` maps names to YAML text (dedented) or dicts; `copy` names flows to copy
    from the project's own flows/ directory (`ALL_PROJECT_FLOWS`: every one).
    """
    init_repo(path)
    for name in copy:
        shutil.copy(PROJECT_FLOWS / f"{name}.yaml", path / "flows" / f"{name}.yaml")
    for name, content in (flows or {}).items():
        write_flow(path, name, content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)
    return path


# ---- flow files -----------------------------------------------------------------------


def flow_text(content: str | dict) -> str:
    """YAML text: a dict dumped as block YAML; a str dedented, one leading newline dropped (lines count from 1)."""
    if isinstance(content, dict):
        buffer = io.StringIO()
        YAML(typ="safe", pure=True).dump(content, buffer)
        return buffer.getvalue()
    text = textwrap.dedent(content)
    return text[1:] if text.startswith("\n") else text


def write_flow(root: Path, name: str, content: str | dict | bytes, *, suffix: str = ".yaml") -> Path:
    """Write root/flows/<name><suffix> from `flow_text(content)` (bytes as they are); returns its path."""
    path = Path(root) / "flows" / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(flow_text(content), encoding="utf-8")
    return path


def flow_name(text: str) -> str:
    """The `name:` of a flow's YAML text."""
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("name:"))


def load_test_flow(tmp_path: Path, text: str, *, config: Any = None) -> Flow:
    """Write tmp_path/flows/<its name>.yaml and load it as the engine does: a `Flow`."""
    return load_flow(write_flow(tmp_path, flow_name(text), text), config=config)


def simple_flow(name: str, marker: str = "one", *, extra: str = "") -> str:
    """A valid flow whose single `set` step outputs `marker` (so a run shows which content it ran)."""
    return (f"name: {name}\ndescription: test flow {name}\n{extra}steps:\n"
            f"  - id: mark\n    kind: set\n    values: {{marker: {marker}}}\n")


def broken_flow(name: str) -> str:
    """A flow that parses but fails validation (a jump to an unknown step, an unknown kind)."""
    return (f"name: {name}\nsteps:\n  - id: mark\n    kind: set\n    values: {{marker: broken}}\n"
            f"    on_error: nowhere\n  - id: bad\n    kind: teleport\n")


def flow_doc(name: str, *steps: dict, inputs: dict | None = None, **fields: Any) -> dict:
    """A flow as a dict (what `make_repo` and `write_flow` take): name, inputs, other fields, steps."""
    return {"name": name, **({"inputs": inputs} if inputs else {}), **fields, "steps": list(steps)}


def set_step(step_id: str, values: dict, **fields: Any) -> dict:
    return {"id": step_id, "kind": "set", **fields, "values": values}


def approval_step(step_id: str = "review", *, approvers: tuple[str, ...] = ("group:ops",), timeout: str = "1h",
                  on_timeout: str = "fail", **fields: Any) -> dict:
    """An approval step that fails its run if nobody decides within `timeout`."""
    return {"id": step_id, "kind": "approval", "approvers": list(approvers), **fields, "timeout": timeout,
            "on_timeout": on_timeout}


def callback_step(step_id: str = "done", *, timeout: str = "1h", on_timeout: str = "fail", **fields: Any) -> dict:
    """A callback step that fails its run if no callback comes within `timeout`."""
    return {"id": step_id, "kind": "callback", **fields, "timeout": timeout, "on_timeout": on_timeout}
