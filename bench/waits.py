"""10,000 runs parked on callbacks, through the real daemon (issue 3, "Benchmarks").

TARGETS (against `python -m runner serve`, a subprocess on 127.0.0.1):
  1. daemon RSS (VmRSS, /proc/<pid>/status) with the runs parked          < 200 MB
  2. restart until every run is resumable: SIGTERM, start again, until the
     health route answers and a callback to the LAST created run gets 202  < 5 s
  3. all 10,000 callbacks posted over 32 concurrent keep-alive connections
     (a minimal HTTP/1.1 client, or httpx with --client httpx): durable
     callbacks/s (202s, and 200 replays after a retry, / wall time)       >= 500
     and p99 acknowledgement latency                                      < 50 ms;
     then every run succeeds (none failed, none left waiting or running)
  4. callback-to-next-step latency (202 until the next step's
     `step_started`), one callback at a time on an otherwise idle daemon, p50 < 5 ms

The flow parks on a callback between two `set` steps:

    prepare (set: the callback URL) -> done (callback, timeout 1h) -> report (set: payload.n)

Runs parked: 10,000 `waits` runs (the callbacks of target 3), one more `waits`
run created after all of them (the LAST created: target 2 calls it back), and
200 `latency` runs (same steps; target 4), so 10,201 in all while RSS and the
restart are measured.

How the runs are made. Starting runs through the API is slow here (50-65
runs/s with 8 concurrent clients), so 10,000 would take minutes. The bench
first starts the daemon and creates the 200 latency runs through the API with
8 clients, which also times the API. With `--create auto` (the default), if
that rate would need more than 60 s for the 10,000, it stops the daemon and
creates the `waits` runs directly on its data dir with `Engine.create_run` +
`Engine.advance(run_id, hold=False)` (in `--workers` processes, each with its
own Engine; every run must park on `done`), then the LAST one, then starts the
daemon again. Otherwise (or with `--create api`) they go through the API. The
bench prints which it did. RSS is taken 1 s after the daemon that holds the
parked runs is up (the first start, and again after the restart); the worse
of the two is judged.

A callback URL is public_url + "/callbacks/" + run["callbacks"]["done"].
Every body is distinct (`{"n": i}`), so every payload is a new resource, and
the bench checks on a sample that `report` got its own `n`. For target 4,
"202 sent" is the daemon's own time of acceptance (the inbox entry's `at`,
`callback_received.accepted_at`, written just before the 202 goes out), so the
figure is slightly pessimistic; the time from the client's receipt of the 202 is
printed beside it. The same gap for a sample of the bulk callbacks is printed too
(under load, no target).

Everything is local and bounded: a temp dir (removed at the end), one daemon
subprocess (SIGTERM at the end, SIGKILL if it hangs), loopback only, every wait
has a deadline, and the bench gives up after --deadline seconds (default 240).

Run: .venv/bin/python bench/waits.py [--runs 10000] [--latency-runs 200] [--concurrency 32]
                                     [--create auto|api|direct] [--workers 2]
                                     [--profile-daemon FILE] [--split N]
  --profile-daemon  run the restarted daemon (the one that takes the callbacks) in a cProfile wrapper,
                    profile only the callbacks window (SIGUSR1 .. SIGUSR2) and print where its event
                    loop spent the time; the callbacks figures are then inflated and not judged
  --split N         no HTTP: build the daemon in this process (runner.daemon.serve.build), park N runs, then
                    time Daemon.callback (the accept) and the advance it schedules, one callback at a
                    time, with fsync on (half the runs) and off (the other half), counting the file
                    system calls (os.fsync, open, os.replace, ...). Prints and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from daemon_support import DaemonProcess

TARGET_RSS_MB = 200.0
TARGET_RESTART_S = 5.0
TARGET_CALLBACKS_PER_S = 500.0
TARGET_ACK_P99_MS = 50.0
TARGET_NEXT_STEP_P50_MS = 5.0
API_BUDGET_S = 60.0          # --create auto: beyond this (projected) the 10,000 are created directly
API_CLIENTS = 8
READY_DEADLINE = 60.0
HEALTH_POLL = 0.005

# `--profile-daemon`: the daemon under cProfile, enabled by SIGUSR1 and dumped by SIGUSR2, so only the
# window the bench chooses is profiled (`python -m cProfile` never writes its file: uvicorn re-raises the
# SIGTERM it caught once it has shut down, and the default action ends the process).
PROFILE_WRAPPER = """
import cProfile, signal, sys
out = sys.argv[1]
sys.argv = ["signoff"] + sys.argv[2:]
profiler = cProfile.Profile()
def window(signum, frame):
    if signum == signal.SIGUSR1:
        profiler.enable()
    else:
        profiler.disable()
        profiler.dump_stats(out)
signal.signal(signal.SIGUSR1, window)
signal.signal(signal.SIGUSR2, window)
from runner.cli import main
main()
"""

FLOW = """\
name: {name}
description: parks on a callback between two set steps, for bench/waits.py
steps:
  - id: prepare
    kind: set
    values: {{url: "${{{{ callbacks.done.url }}}}"}}
  - id: done
    kind: callback
    timeout: 1h
  - id: report
    kind: set
    values: {{n: "${{{{ steps.done.outputs.payload.n }}}}"}}
"""


class OutOfTime(Exception):
    pass


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise OutOfTime("the bench ran out of time (--deadline)")
        return min(left, cap) if cap is not None else left


# ---- measuring the daemon process -------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB from /proc/<pid>/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def launch(daemon: DaemonProcess, budget: Budget, profile: Path | None = None) -> tuple[float, float]:
    """Start the daemon subprocess (DaemonProcess.start, polling health every 5 ms).

    Returns (perf_counter at Popen, seconds from there until GET /api/v1/health answered 200).
    """
    program = [sys.executable, "-c", PROFILE_WRAPPER, str(profile)] if profile else None
    try:
        daemon.start(program=program, poll=HEALTH_POLL, deadline=min(READY_DEADLINE, budget.left()))
    except AssertionError as exc:
        raise SystemExit(str(exc)) from None
    return daemon.started_at, daemon.ready_after


def health(daemon: DaemonProcess) -> dict:
    with httpx.Client(timeout=10.0) as client:
        return client.get(f"{daemon.url}/api/v1/health").json()


# ---- making the parked runs --------------------------------------------------------------

def create_via_api(daemon: DaemonProcess, flow: str, count: int, clients: int, budget: Budget) -> list[dict]:
    """Start `count` runs of `flow` through POST /api/v1/flows/{flow}/runs from `clients` threads."""
    made: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(range(count))
    deadline = time.monotonic() + budget.left()

    def worker() -> None:
        with daemon.new_client("alice") as client:
            while not errors and time.monotonic() < deadline:
                with lock:
                    if next(todo, None) is None:
                        return
                response = client.post(f"/api/v1/flows/{flow}/runs", json={"inputs": {}})
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text[:300]}")
                    return
                run = response.json()
                with lock:
                    made.append({"id": run["id"], "token": run["callbacks"]["done"]})

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    if errors:
        raise SystemExit(f"starting a run through the API failed: {errors[0]}")
    if len(made) < count:
        raise OutOfTime(f"only {len(made)} of {count} runs were started through the API in time")
    return sorted(made, key=lambda r: r["id"])


def _direct_worker(args: tuple[str, str, str, str, str, int]) -> list[dict]:
    """In a worker process: create and park `count` runs with the Engine on the (stopped) daemon's data dir."""
    config_path, data, repo, public_url, flow_name, count = args
    from runner.config import load_config
    from runner.runs.engine import Engine
    from runner.flows.load import load_flow
    from runner.runs.files import FileStore

    engine = Engine(FileStore(data), work_dir=repo, config=load_config(config_path), public_url=public_url,
                    accepts_messages=True)
    flow = load_flow(Path(repo) / "flows" / f"{flow_name}.yaml")

    async def make() -> list[dict]:
        made = []
        for _ in range(count):
            run_id = engine.create_run(flow, {}, started_by="alice", draft=True)
            run = await engine.advance(run_id, hold=False)
            if run["status"] != "waiting" or run["current_step"] != "done":
                raise RuntimeError(f"run {run_id} did not park on the callback: {run['status']} {run.get('error')}")
            made.append({"id": run_id, "token": run["callbacks"]["done"]})
        return made

    return asyncio.run(make())


def create_directly(daemon: DaemonProcess, flow: str, count: int, workers: int) -> list[dict]:
    args = [(str(daemon.config_path), str(daemon.data), str(daemon.repo), daemon.public_url, flow,
             count // workers + (1 if i < count % workers else 0)) for i in range(workers)]
    args = [a for a in args if a[-1] > 0]
    if len(args) == 1:
        return _direct_worker(args[0])
    with ProcessPoolExecutor(max_workers=len(args)) as pool:
        parts = list(pool.map(_direct_worker, args))
    return sorted((run for part in parts for run in part), key=lambda r: r["id"])


# ---- callbacks ---------------------------------------------------------------------------

def callback_url(daemon: DaemonProcess, token: str) -> str:
    return f"{daemon.public_url}/callbacks/{token}"


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client connection: the load client must cost far less than the daemon.

    httpx spends about a millisecond of CPU per request; on a 2-core machine that is a core taken
    from the daemon under test. This writes the request bytes itself and reads the status line,
    the headers and a Content-Length body.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                          f"content-length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def post_all(daemon: DaemonProcess, runs: list[dict], concurrency: int, timeout: float,
                   client_kind: str = "raw") -> dict:
    """POST every run's callback from `concurrency` connections; per request: status, latency, receive time.

    A request whose connection drops is sent again on a new connection (a callback is replay-safe:
    the same body again answers 200 and changes nothing); such retries are counted.
    """
    host, port = daemon.public_url.split("//", 1)[1].split(":")
    results: dict[str, tuple[int, float, float]] = {}
    retries = 0
    todo = iter(runs)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        async def send_httpx(path: str, body: bytes) -> int:
            response = await client.post(daemon.public_url + path, content=body,
                                         headers={"content-type": "application/json"})
            return response.status_code

        async def worker() -> None:
            nonlocal retries
            connection = RawConnection(host, int(port))
            send = connection.post if client_kind == "raw" else send_httpx
            try:
                for run in todo:  # one shared iterator: each run is taken by exactly one worker
                    body = json.dumps({"n": run["n"]}).encode()
                    path = f"/callbacks/{run['token']}"
                    sent = time.perf_counter()
                    for attempt in range(3):
                        try:
                            code = await send(path, body)
                            break
                        except (OSError, asyncio.IncompleteReadError, httpx.TransportError):
                            retries += 1
                            connection.close()
                            if attempt == 2:
                                raise
                    received = time.perf_counter()
                    results[run["id"]] = (code, (received - sent) * 1000, time.time())
            finally:
                connection.close()

        cpu_before, own_before = cpu_seconds(daemon.pid), time.process_time()
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)
        wall = time.perf_counter() - start
        daemon_cpu, own_cpu = cpu_seconds(daemon.pid) - cpu_before, time.process_time() - own_before
    return {"results": results, "wall": wall, "daemon_cpu": daemon_cpu, "client_cpu": own_cpu, "retries": retries}


def list_all(client: httpx.Client, flow: str, budget: Budget, status: str | None = None) -> list[dict]:
    """Every run of `flow` (paged, 1,000 at a time)."""
    runs: list[dict] = []
    before = None
    for _ in range(1000):
        budget.left()
        params: dict[str, Any] = {"flow": flow, "limit": 1000}
        if before:
            params["before"] = before
        if status:
            params["status"] = status
        page = client.get("/api/v1/runs", params=params).json()
        runs += page["runs"]
        before = page["next"]
        if not before:
            return runs
    raise SystemExit("paging through the runs did not end")


def events_of(client: httpx.Client, run_id: str) -> list[dict]:
    response = client.get(f"/api/v1/runs/{run_id}/events")
    response.raise_for_status()
    return response.json()["events"]


def next_step_latency(events: list[dict]) -> tuple[float, dict, dict] | None:
    """ms from the callback's acceptance (inbox `at`) to `step_started` of `report`; and the two events."""
    received = next((e for e in events if e["type"] == "callback_received" and e.get("step") == "done"), None)
    started = next((e for e in events if e["type"] == "step_started" and e.get("step") == "report"), None)
    if not received or not started:
        return None
    from runner.timeutil import parse_rfc3339

    gap = (parse_rfc3339(started["at"]) - parse_rfc3339(received["accepted_at"])).total_seconds() * 1000
    return gap, received, started


def measure_latency(daemon: DaemonProcess, runs: list[dict], budget: Budget) -> dict:
    """One callback at a time on an idle daemon; long-poll the events until `report` starts."""
    from runner.timeutil import parse_rfc3339

    server_side, client_side = [], []
    client = daemon.api("alice")
    with httpx.Client(timeout=10.0) as poster:
        for number, run in enumerate(runs):
            budget.left()
            response = poster.post(callback_url(daemon, run["token"]), json={"n": number})
            received_at = time.time()
            if response.status_code != 202:
                raise SystemExit(f"latency run {run['id']}: callback answered {response.status_code} {response.text}")
            after, found, deadline = -1, None, time.monotonic() + 10
            events: list[dict] = []
            while found is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"latency run {run['id']}: `report` did not start within 10 s")
                page = client.get(f"/api/v1/runs/{run['id']}/events", params={"after": after, "wait": 2}).json()
                events += page["events"]
                after = page["next"]
                found = next_step_latency(events)
            gap, _, started = found
            server_side.append(gap)
            client_side.append((parse_rfc3339(started["at"]).timestamp() - received_at) * 1000)
    return {"server": server_side, "client": client_side}


# ---- --profile-daemon ----------------------------------------------------------------------

BREAKDOWN = [  # (label, file suffix or "~" for builtins, function name)
    ("HTTP handler `callback` (server.py), all of it", "runner/server.py", "callback"),
    ("  Daemon.callback_target (token -> run, step, spec)", "runner/daemon.py", "callback_target"),
    ("  Daemon.callback (check + accept)", "runner/daemon.py", "callback"),
    ("    Store.read_run", "runner/store.py", "read_run"),
    ("    Store.accept_callback", "runner/store.py", "accept_callback"),
    ("      Store.put_resource", "runner/store.py", "put_resource"),
    ("Daemon._advance (the run goes on: task)", "runner/daemon.py", "_advance"),
    ("  Daemon._may_start (reads the run)", "runner/daemon.py", "_may_start"),
    ("  Engine.advance", "runner/engine.py", "advance"),
    ("    Engine._driver (read run, open log)", "runner/engine.py", "_driver"),
    ("    _Driver.flush (append + snapshot + listener)", "runner/engine.py", "flush"),
    ("      EventLog.append", "runner/store.py", "append"),
    ("      Store.write_snapshot", "runner/store.py", "write_snapshot"),
    ("    _Driver.step_context", "runner/engine.py", "step_context"),
    ("Store.read_run (all callers)", "runner/store.py", "read_run"),
    ("write_atomic (all callers)", "runner/datadir.py", "write_atomic"),
    ("fsync_dir", "runner/store.py", "fsync_dir"),
    ("os.fsync (all callers)", "~", "<built-in method posix.fsync>"),
    ("open() (all callers)", "~", "<built-in method io.open>"),
    ("os.replace / os.link / os.unlink / os.mkdir", "~", "posix.replace|posix.link|posix.unlink|posix.mkdir"),
    ("json.loads / json.dumps", "json/__init__.py", "loads|dumps"),
    ("HTTP stack own time (uvicorn, h11, starlette, anyio, httptools)", "/site-packages/", "*"),
    ("event loop idle (epoll wait)", "~", "<method 'poll' of 'select.epoll' objects>"),
]


HTTP_PACKAGES = ("uvicorn", "h11", "starlette", "anyio", "httptools")


def show_profile(path: Path, window: float, callbacks: int, budget: Budget) -> None:
    """Print where the daemon's time went in the callbacks window: key functions, then the top by own time."""
    deadline = time.monotonic() + min(30.0, budget.left())
    while not path.exists() or path.stat().st_size == 0:
        if time.monotonic() > deadline:
            print(f"(no profile was written to {path})")
            return
        time.sleep(0.1)
    time.sleep(0.5)
    stats = pstats.Stats(str(path))
    table = stats.stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    total_tt = sum(entry[2] for entry in table.values())
    fsyncs = sum(entry[1] for key, entry in table.items() if key[2] == "<built-in method posix.fsync>")
    print(f"\n--- daemon profile (cProfile; Python code inflated) over the {window:.1f} s callbacks window; "
          f"{total_tt:.1f} s profiled in the loop thread, {fsyncs / callbacks:.1f} fsyncs per callback ---")
    for label, suffix, names in BREAKDOWN:
        wanted = names.split("|")
        cum = calls = 0.0
        for (file, _, name), (_, nc, tt, ct, _) in table.items():
            if suffix == "~":
                if file == "~" and any(w in name for w in wanted):
                    cum, calls = cum + ct, calls + nc
            elif names == "*":  # own time of every function of these packages: nothing counted twice
                if suffix in file and any(f"/{pkg}/" in file for pkg in HTTP_PACKAGES):
                    cum, calls = cum + tt, calls + nc
            elif file.endswith(suffix) and name in wanted:
                cum, calls = cum + ct, calls + nc
        print(f"  {label:<55} {cum:7.2f} s  {cum / total_tt:6.1%}  {calls / callbacks:5.1f} calls/callback")
    print("  top functions by own time:")
    ordered = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:25]
    for (file, line, name), (_, nc, tt, ct, _) in ordered:
        where = name if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line} {name}"
        print(f"    {tt:7.2f} s {tt / total_tt:6.1%}  {nc / callbacks:6.1f}/cb  {where}")
    print()


# ---- --split: the daemon's own work per callback, in process, no HTTP, no profiler -------------------

class _Timed:
    """Wrap os.fsync / open / os.replace / ... with counters (cheap next to the syscalls they time)."""

    def __init__(self) -> None:
        import builtins

        self.totals: dict[str, list[float]] = {}
        self.restore: list[tuple[Any, str, Any]] = []
        for module, name in ((os, "fsync"), (builtins, "open"), (os, "open"), (os, "replace"), (os, "link"),
                             (os, "unlink"), (os, "mkdir"), (os, "stat")):
            self._wrap(module, name)

    def _wrap(self, module: Any, name: str) -> None:
        real, label = getattr(module, name), f"{'builtins' if module is not os else 'os'}.{name}"

        def timed(*args: Any, **kwargs: Any) -> Any:
            key = label
            if label == "builtins.open":  # reading a file, or creating / appending to one
                mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
                key = f"open({'read' if mode.startswith('r') else 'write'})"
            elif label == "os.open":
                key = "os.open(create)" if len(args) > 1 and args[1] & os.O_CREAT else "os.open(other)"
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                entry = self.totals.setdefault(key, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        setattr(module, name, timed)
        self.restore.append((module, name, real))

    def reset(self) -> None:
        for entry in self.totals.values():
            entry[0], entry[1] = 0, 0.0

    def close(self) -> None:
        for module, name, real in self.restore:
            setattr(module, name, real)


def split(daemon_files: DaemonProcess, count: int, workers: int) -> None:
    """Daemon.callback (the accept) and the advance task it schedules, timed one callback at a time."""
    from runner.cli.app import Env
    from runner.daemon.serve import build

    runs = create_directly(daemon_files, "waits", count, workers)
    os.environ.update({f"{name.upper()}_TOKEN": token for name, token in daemon_files.tokens.items()})
    print(f"split: {len(runs):,} runs parked; Daemon.callback + the advance it schedules, one at a time, "
          f"in process (no HTTP, no profiler)")
    half = len(runs) // 2
    for fsync, part in ((True, runs[:half]), (False, runs[half:])):
        daemon, _, _, _ = build(Env(None, str(daemon_files.repo), str(daemon_files.config_path)))
        daemon.store.fsync = fsync
        timed = _Timed()

        async def go(daemon: Any, timed: _Timed, part: list[dict]) -> tuple[float, float]:
            await daemon.start()
            accept = advance = 0.0
            timed.reset()
            for run in part:  # distinct bodies across both halves: every payload is a new resource
                started = time.perf_counter()
                code, _ = await daemon.callback(run["token"], json.dumps({"n": run["id"]}).encode())
                accepted = time.perf_counter()
                task = daemon._tasks.get(run["id"])
                if task is not None:
                    await task
                finished = time.perf_counter()
                if code != 202:
                    raise SystemExit(f"split: callback answered {code}")
                accept, advance = accept + accepted - started, advance + finished - accepted
            await daemon.stop()
            return accept, advance

        try:
            accept, advance = asyncio.run(go(daemon, timed, part))
        finally:
            timed.close()
        n = len(part)
        print(f"  fsync {'on ' if fsync else 'off'}: accept (Daemon.callback) {accept / n * 1000:.3f} ms + advance "
              f"(Daemon._advance) {advance / n * 1000:.3f} ms = {(accept + advance) / n * 1000:.3f} ms per callback "
              f"-> at most {n / (accept + advance):.0f} callbacks/s on one event loop")
        for label, (calls, seconds) in sorted(timed.totals.items(), key=lambda item: -item[1][1]):
            if calls:
                print(f"      {label:<16} {calls / n:5.1f} per callback  {seconds / n * 1000:.3f} ms  "
                      f"{seconds / (accept + advance):6.1%}")


# ---- the bench ---------------------------------------------------------------------------

def verdict(ok: bool, profiled: bool = False) -> str:
    return "PROFILED (not judged)" if profiled else ("MET" if ok else "MISSED")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="the load client for target 3: a minimal HTTP/1.1 client (default) or httpx")
    parser.add_argument("--create", choices=("auto", "api", "direct"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="processes for --create direct")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds the whole bench may take at most")
    parser.add_argument("--profile-daemon", type=Path, default=None, metavar="FILE")
    parser.add_argument("--split", type=int, default=0, metavar="N",
                        help="only time the daemon's own work per callback in process (N runs; half fsync on, "
                             "half off), then stop")
    args = parser.parse_args()
    budget = Budget(args.deadline)
    profiled = args.profile_daemon is not None
    began = time.perf_counter()
    figures: dict[str, Any] = {"runs": args.runs, "latency_runs": args.latency_runs,
                               "concurrency": args.concurrency, "loadavg_start": os.getloadavg()}

    with tempfile.TemporaryDirectory(prefix="signoff-waits-bench-") as tmp:
        daemon = DaemonProcess(Path(tmp) / "daemon", flows={"waits": FLOW.format(name="waits"),
                                                            "latency": FLOW.format(name="latency")})
        try:
            if args.split:
                split(daemon, args.split, args.workers)
                return 0
            code = run_bench(daemon, args, budget, figures, profiled)
        except OutOfTime as exc:
            print(f"GAVE UP: {exc}", file=sys.stderr)
            code = 2
        finally:
            daemon.close()
            for child in list(multiprocessing_children()):
                child.kill()
    figures["bench_seconds"] = round(time.perf_counter() - began, 1)
    print(f"bench took {figures['bench_seconds']:.1f} s")
    print(json.dumps(figures, default=str))
    return code


def multiprocessing_children():
    import multiprocessing

    return multiprocessing.active_children()


def run_bench(daemon: DaemonProcess, args: argparse.Namespace, budget: Budget, figures: dict,
              profiled: bool) -> int:
    # 1. the runs: latency runs through the API (which also times the API), then the 10,000 waits runs
    figures["first_start_s"] = round(launch(daemon, budget)[1], 3)
    start = time.perf_counter()
    latency_runs = create_via_api(daemon, "latency", args.latency_runs, API_CLIENTS, budget)
    api_rate = len(latency_runs) / (time.perf_counter() - start)
    figures["api_create_runs_per_s"] = round(api_rate, 1)
    projected = (args.runs + 1) / api_rate
    how = args.create if args.create != "auto" else ("api" if projected <= API_BUDGET_S else "direct")
    print(f"API: {len(latency_runs)} latency runs started in {len(latency_runs) / api_rate:.1f} s with "
          f"{API_CLIENTS} clients = {api_rate:.1f} runs/s; {args.runs:,} would take ~{projected:.0f} s "
          f"-> creating the {args.runs:,} runs {'through the API' if how == 'api' else 'directly (Engine)'}")
    start = time.perf_counter()
    if how == "api":
        runs = create_via_api(daemon, "waits", args.runs, API_CLIENTS, budget)
        runs += create_via_api(daemon, "waits", 1, 1, budget)  # the LAST created run
        figures["created"] = f"api, {API_CLIENTS} concurrent clients"
    else:
        daemon.stop()
        runs = create_directly(daemon, "waits", args.runs, args.workers)
        runs += create_directly(daemon, "waits", 1, 1)  # the LAST created run, after all the others
        figures["created"] = f"direct: Engine.create_run + advance(hold=False), {args.workers} processes, daemon stopped"
    create_s = time.perf_counter() - start
    figures["create_s"] = round(create_s, 1)
    probe, runs = runs[-1], runs[:-1]
    for number, run in enumerate(runs):
        run["n"] = number
    print(f"created {len(runs) + 1:,} waits runs ({figures['created']}) in {create_s:.1f} s "
          f"= {(len(runs) + 1) / create_s:.0f} runs/s; parked in all: {len(runs) + 1 + len(latency_runs):,}")

    # 2. RSS with the runs parked
    rss: list[tuple[str, int, int]] = []
    if how == "api":
        time.sleep(1.0)
        status = proc_status(daemon.pid)
        rss.append(("the daemon that created them", status["VmRSS"], status["VmHWM"]))
    else:
        figures["start_with_parked_s"] = round(launch(daemon, budget)[1], 3)
        time.sleep(1.0)
        status = proc_status(daemon.pid)
        rss.append(("first start with them parked", status["VmRSS"], status["VmHWM"]))
        print(f"first start with {len(runs) + 1 + len(latency_runs):,} parked runs: health after "
              f"{figures['start_with_parked_s']:.2f} s")
    timers = health(daemon)["timers"]

    # 3. restart: SIGTERM, start again, until a callback to the LAST created run is accepted
    sigterm = time.perf_counter()
    daemon.stop()
    stopped = time.perf_counter() - sigterm
    popen_at, ready = launch(daemon, budget, args.profile_daemon)
    since_sigterm_ready = time.perf_counter() - sigterm
    with httpx.Client(timeout=30.0) as client:
        response = client.post(callback_url(daemon, probe["token"]), json={"n": -1})
        accepted = time.perf_counter()
    if response.status_code != 202:
        raise SystemExit(f"after the restart, the callback to the last run answered {response.status_code}: "
                         f"{response.text}")
    resumable = accepted - popen_at
    restart_total = accepted - sigterm
    time.sleep(1.0)
    status = proc_status(daemon.pid)
    rss.append(("after the restart", status["VmRSS"], status["VmHWM"]))
    after_restart = health(daemon)
    figures.update({"stop_s": round(stopped, 3), "ready_s": round(ready, 3), "resumable_s": round(resumable, 3),
                    "restart_total_s": round(restart_total, 3), "sigterm_to_health_s": round(since_sigterm_ready, 3),
                    "timers_before": timers, "timers_after_restart": after_restart["timers"],
                    "rss": [{"when": w, "rss_mb": round(r / 1024, 1), "hwm_mb": round(h / 1024, 1)}
                            for w, r, h in rss]})

    # 4. all the callbacks, 32 connections (with --profile-daemon, only this window is profiled)
    if profiled:
        os.kill(daemon.pid, signal.SIGUSR1)
        time.sleep(0.2)
    bulk = asyncio.run(post_all(daemon, runs, args.concurrency, budget.left(180), args.client))
    if profiled:
        os.kill(daemon.pid, signal.SIGUSR2)
        show_profile(args.profile_daemon, bulk["wall"] + 0.2, len(runs), budget)
    results = bulk["results"]
    codes: dict[int, int] = {}
    for code, _, _ in results.values():
        codes[code] = codes.get(code, 0) + 1
    # a 200 is the replay of a callback whose 202 was lost with its connection (counted in retries)
    acks = [ms for code, ms, _ in results.values() if code in (200, 202)]
    durable = len(acks) / bulk["wall"]
    figures.update({"callback_codes": codes, "client": args.client, "client_retries": bulk["retries"],
                    "callbacks_wall_s": round(bulk["wall"], 3),
                    "durable_callbacks_per_s": round(durable, 1),
                    "ack_p50_ms": round(percentile(acks, 50), 2), "ack_p90_ms": round(percentile(acks, 90), 2),
                    "ack_p99_ms": round(percentile(acks, 99), 2), "ack_max_ms": round(max(acks), 2) if acks else None,
                    "daemon_cpu_share": round(bulk["daemon_cpu"] / bulk["wall"], 2),
                    "client_cpu_share": round(bulk["client_cpu"] / bulk["wall"], 2)})
    drain_start = time.perf_counter()
    client = daemon.api("alice")
    left = None
    while True:  # until no waits run is waiting or running (each poll reads snapshots: ~1 s apart)
        budget.left()
        waiting = client.get("/api/v1/runs", params={"flow": "waits", "status": "waiting", "limit": 1}).json()["runs"]
        running = client.get("/api/v1/runs", params={"flow": "waits", "status": "running", "limit": 1}).json()["runs"]
        if not waiting and not running:
            break
        left = (waiting + running)[0]["id"]
        if time.perf_counter() - drain_start > 120:
            raise SystemExit(f"runs still waiting/running 120 s after the last 202, e.g. {left}")
        time.sleep(1.0)
    drained = time.perf_counter() - drain_start
    every = list_all(client, "waits", budget)
    statuses: dict[str, int] = {}
    for run in every:
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1
    figures.update({"drain_after_last_202_s": round(drained, 1), "final_statuses": statuses,
                    "end_to_end_runs_per_s": round(len(runs) / (bulk["wall"] + drained), 1)})
    # a sample under load: callback-to-next-step, and the payload reached the next step
    sample = runs[:: max(1, len(runs) // 200)][:200]
    loaded_gaps, wrong = [], []
    for run in sample:
        events = events_of(client, run["id"])
        found = next_step_latency(events)
        if found:
            loaded_gaps.append(found[0])
        finished = next((e for e in events if e["type"] == "step_finished" and e.get("step") == "report"), None)
        if not finished or str(finished["outputs"].get("n")) != str(run["n"]):
            wrong.append(run["id"])
    figures.update({"under_load_next_step_p50_ms": round(percentile(loaded_gaps, 50), 2),
                    "under_load_next_step_p99_ms": round(percentile(loaded_gaps, 99), 2),
                    "payload_mismatches_in_sample": len(wrong)})
    status = proc_status(daemon.pid)
    figures["rss_after_callbacks_mb"] = round(status["VmRSS"] / 1024, 1)

    # 5. callback-to-next-step on the idle daemon
    latency = measure_latency(daemon, latency_runs, budget)
    figures.update({"next_step_p50_ms": round(percentile(latency["server"], 50), 2),
                    "next_step_p90_ms": round(percentile(latency["server"], 90), 2),
                    "next_step_p99_ms": round(percentile(latency["server"], 99), 2),
                    "next_step_client_p50_ms": round(percentile(latency["client"], 50), 2)})
    figures["loadavg_end"] = os.getloadavg()

    # ---- report ----
    all_ok = True
    worst_rss = max(r for _, r, _ in rss) / 1024
    for when, r, h in rss:
        print(f"RSS {when}: {r / 1024:.1f} MB (peak {h / 1024:.1f} MB)")
    print(f"timers in the heap: {timers} before, {after_restart['timers']} after the restart")
    print(f"restart: SIGTERM -> exited {stopped:.2f} s; start -> health {ready:.2f} s; start -> 202 from the last "
          f"run {resumable:.2f} s; SIGTERM -> 202 {restart_total:.2f} s")
    print(f"callbacks: {len(results):,} posted, {codes} in {bulk['wall']:.2f} s = {durable:.0f} durable/s; "
          f"ack p50 {figures['ack_p50_ms']:.1f} ms, p90 {figures['ack_p90_ms']:.1f} ms, "
          f"p99 {figures['ack_p99_ms']:.1f} ms, max {figures['ack_max_ms']:.1f} ms; {args.client} client, "
          f"{bulk['retries']} retries; daemon CPU "
          f"{figures['daemon_cpu_share']:.0%} of a core, client CPU {figures['client_cpu_share']:.0%}")
    print(f"runs: all settled {drained:.1f} s after the last 202 ({figures['end_to_end_runs_per_s']:.0f} runs/s "
          f"end to end); statuses {statuses}; payload mismatches in a sample of {len(sample)}: {len(wrong)}")
    print(f"callback -> next step under load (sample of {len(loaded_gaps)}): p50 "
          f"{figures['under_load_next_step_p50_ms']:.1f} ms, p99 {figures['under_load_next_step_p99_ms']:.1f} ms")
    print(f"callback -> next step, idle daemon ({len(latency['server'])} runs): p50 {figures['next_step_p50_ms']:.2f} ms, "
          f"p90 {figures['next_step_p90_ms']:.2f} ms, p99 {figures['next_step_p99_ms']:.2f} ms "
          f"(from the client's receipt of the 202: p50 {figures['next_step_client_p50_ms']:.2f} ms)")
    print(f"RSS after all callbacks: {figures['rss_after_callbacks_mb']:.1f} MB")

    succeeded = statuses.get("succeeded", 0) == len(runs) + 1 and len(every) == len(runs) + 1
    checks = [
        (f"RSS with {len(runs) + 1 + len(latency_runs):,} parked runs < {TARGET_RSS_MB:.0f} MB", worst_rss < TARGET_RSS_MB,
         f"{worst_rss:.1f} MB", False),
        (f"restart until resumable < {TARGET_RESTART_S:.0f} s (SIGTERM -> 202)", restart_total < TARGET_RESTART_S,
         f"{restart_total:.2f} s", False),
        (f"durable callbacks/s >= {TARGET_CALLBACKS_PER_S:.0f}", durable >= TARGET_CALLBACKS_PER_S,
         f"{durable:.0f}/s", profiled),
        (f"ack p99 < {TARGET_ACK_P99_MS:.0f} ms", figures["ack_p99_ms"] < TARGET_ACK_P99_MS,
         f"{figures['ack_p99_ms']:.1f} ms", profiled),
        ("every run succeeds", succeeded and len(acks) == len(runs) and codes.get(200, 0) <= bulk["retries"]
         and not wrong,
         f"{statuses}", False),
        (f"callback -> next step p50 < {TARGET_NEXT_STEP_P50_MS:.0f} ms", figures["next_step_p50_ms"] < TARGET_NEXT_STEP_P50_MS,
         f"{figures['next_step_p50_ms']:.2f} ms", False),
    ]
    for name, ok, figure, skip in checks:
        print(f"TARGET {name}: {figure}: {verdict(ok, skip)}")
        all_ok = all_ok and (ok or skip)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
