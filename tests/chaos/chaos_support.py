"""The client side of the chaos test: a recording client, the killer, and what each run's driver does.

`Chaos` wraps one DaemonProcess. Every request goes through `Chaos.send`, which records it (who,
what, the body's nonce, when, the answer or the transport error, and how many kills happened
before and after it), so the checks know exactly what was acknowledged (2xx), refused (an
answer >= 400), never delivered (the connection was refused: it never reached the daemon) or in
doubt (sent, and the daemon died or did not answer). The killer thread `kill -9`s the daemon's
whole process group at random moments and starts it again on the same data dir and port.

Waiting is always on a condition with a bound (`wait_until`); the random pauses are the chaos:
between kills, and before a decision or a callback that is meant to race its step's deadline.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
from daemon_support import TERMINAL, DaemonProcess
from support import wait_until

UP_DEADLINE = 60.0  # how long a driver waits for the daemon to be back
STEP_DEADLINE = 30.0  # how long a driver waits for its run to reach a step
EARLY_TIMEOUT = 5.0  # a decision for a step that is not waiting is refused at once: well within this


@dataclass
class Request:
    number: int
    kind: str  # start | callback | decision | cancel
    label: str  # what the driver meant: early, race, replay, different, late, ...
    run: str | None
    step: str | None
    user: str | None
    nonce: str | None
    body: Any
    sent_at: float
    kills_before: int
    kills_after: int = -1
    status: int | None = None
    answer: Any = None
    error: str | None = None  # the transport error's class, when there was no answer
    answered_at: float | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def busy(self) -> bool:
        """503 run_locked: the run's log is held for a moment; the documented answer is "ask again"."""
        return self.status == 503 and isinstance(self.answer, dict) and \
            (self.answer.get("error") or {}).get("code") == "run_locked"

    @property
    def refused(self) -> bool:
        return self.status is not None and self.status >= 400 and not self.busy

    @property
    def undelivered(self) -> bool:
        """The connection was refused: the daemon never saw the request."""
        return self.error == "ConnectError"

    @property
    def in_doubt(self) -> bool:
        return self.status is None and not self.undelivered

    def describe(self) -> str:
        outcome = f"answered {self.status}" if self.status is not None else f"no answer ({self.error})"
        who = f" by {self.user}" if self.user else ""
        return (f"request #{self.number} {self.kind}/{self.label}{who} run {self.run} step {self.step} "
                f"nonce {self.nonce}: {outcome}")


class Chaos:
    """The daemon under test, the requests made to it, the kills."""

    def __init__(self, daemon: DaemonProcess, seed: int) -> None:
        self.daemon = daemon
        self.seed = seed
        self.rng = random.Random(seed)
        self.requests: list[Request] = []
        self.problems: list[str] = []  # found while driving (a failed restart, a run that never got somewhere)
        self.kills = 0
        self.up = threading.Event()
        self.up.set()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.clients: list[httpx.Client] = []
        self.gates = daemon.root / "gates"
        self.gates.mkdir(exist_ok=True)
        self.side = daemon.root / "side-effects.log"

    # ---- requests ------------------------------------------------------------------

    def client(self, user: str | None) -> httpx.Client:
        """This thread's client for `user` (every client made is also kept, so `close_all` closes it)."""
        clients = self.local.__dict__.setdefault("clients", {})
        if user not in clients:
            clients[user] = self.daemon.new_client(user)
            with self.lock:
                self.clients.append(clients[user])
        return clients[user]

    def close_clients(self) -> None:
        for client in self.local.__dict__.pop("clients", {}).values():
            client.close()

    def close_all(self) -> None:
        with self.lock:
            clients, self.clients = self.clients, []
        for client in clients:
            client.close()

    def wait_up(self) -> None:
        if not self.up.wait(UP_DEADLINE):
            raise AssertionError(f"the daemon was not back within {UP_DEADLINE:.0f}s")

    def send(self, *args: Any, **kwargs: Any) -> Request:
        """One POST, recorded; asked again (a new request, recorded too) while the answer is 503 run_locked."""
        for _ in range(10):
            request = self._send(*args, **kwargs)
            if not request.busy:
                return request
            time.sleep(0.2)  # Retry-After says 1 s; a shorter pause asks sooner, which a client may do
        return request

    def _send(self, kind: str, label: str, path: str, *, user: str | None, body: Any, run: str | None = None,
              step: str | None = None, nonce: str | None = None, timeout: float = 10.0) -> Request:
        """One POST, recorded. JSON bodies are sent as given (the callback's bytes matter for replays)."""
        self.wait_up()
        with self.lock:
            request = Request(len(self.requests), kind, label, run, step, user, nonce, body, time.time(), self.kills)
            self.requests.append(request)
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        try:
            response = self.client(user).post(path, content=content, timeout=timeout,
                                              headers={"Content-Type": "application/json"})
        except httpx.TransportError as exc:
            request.error = type(exc).__name__
        else:
            request.status = response.status_code
            try:
                request.answer = response.json()
            except ValueError:
                request.answer = response.text[:300]
            if response.status_code >= 500 and run and "run_locked" in response.text:
                request.answer = {**request.answer, "lock_holders": self.lock_holders(run)}
        request.kills_after, request.answered_at = self.kills, time.time()
        return request

    def send_delivered(self, *args: Any, **kwargs: Any) -> Request:
        """`send`, again while the daemon refused the connection (it never saw the request)."""
        for _ in range(20):
            request = self.send(*args, **kwargs)
            if not request.undelivered:
                return request
            time.sleep(0.05)  # a kill under way: send waits for the restart
        return request

    def send_until_answered(self, *args: Any, **kwargs: Any) -> Request:
        """`send` the same bytes again until the daemon answers (what a callback sender does)."""
        for _ in range(10):
            request = self.send(*args, **kwargs)
            if request.status is not None:
                return request
            time.sleep(0.05)
        return request

    def get(self, path: str) -> Any:
        """GET through kills: a refused or cut connection is tried again once the daemon is back."""
        give_up = time.monotonic() + UP_DEADLINE
        while True:
            self.wait_up()
            try:
                response = self.client("alice").get(path, timeout=10.0)
            except httpx.TransportError:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.05)
                continue
            if response.status_code >= 500:
                self.problems.append(f"GET {path} answered {response.status_code}: {response.text[:300]}")
                time.sleep(0.05)
                if time.monotonic() > give_up:
                    raise AssertionError(f"GET {path} keeps answering {response.status_code}")
                continue
            return response

    def run(self, run_id: str) -> dict:
        response = self.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, f"GET run {run_id}: {response.status_code} {response.text[:300]}"
        return response.json()

    def wait_run(self, run_id: str, predicate: Callable[[dict], bool], what: str,
                 timeout: float = STEP_DEADLINE) -> dict | None:
        """The run once `predicate` (or its end) holds; None, with a problem noted, if it never does."""
        last: dict[str, Any] = {}

        def check() -> dict | None:
            last["run"] = run = self.run(run_id)
            return run if predicate(run) or run["status"] in TERMINAL else None

        try:
            return wait_until(check, timeout, interval=0.1, message=what)
        except AssertionError:
            seen = last.get("run") or {}
            steps = {k: v.get("status") for k, v in (seen.get("steps") or {}).items()}
            self.problems.append(f"run {run_id}: no sign of {what} within {timeout:.0f}s "
                                 f"(status {seen.get('status')}, steps {steps})")
            return None

    def lock_holders(self, run_id: str) -> list[str]:
        """Which processes have the run's log open right now (Linux /proc): a flock lives as long as any copy."""
        log = self.daemon.data / "runs" / run_id / "events.jsonl"
        holders = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if not any(os.readlink(fd) == str(log) for fd in (entry / "fd").iterdir()):
                    continue
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            except OSError:
                continue
            role = "the daemon" if entry.name == str(self.daemon.pid) else "NOT the daemon"
            holders.append(f"pid {entry.name} ({role}): {command}")
        return holders or ["nobody by now"]

    def open_gate(self, run_id: str) -> None:
        (self.gates / run_id).touch()

    # ---- the killer -----------------------------------------------------------------

    def kill_and_restart(self) -> None:
        """kill -9 the daemon's process group, then start it again on the same data dir and port."""
        self.up.clear()
        if self.daemon.process is not None and self.daemon.process.poll() is not None:
            self.problems.append(f"the daemon exited by itself with {self.daemon.process.returncode} before kill "
                                 f"{self.kills + 1}; its log ends:\n{self.daemon.log_tail(15)}")
        pid = self.daemon.pid
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.daemon.kill()  # reaps it
        with self.lock:
            self.kills += 1
        for attempt in range(1, 4):
            try:
                self.daemon.start()
                break
            except AssertionError as exc:
                self.problems.append(f"restart after kill {self.kills} failed (try {attempt}): {str(exc)[:600]}")
        self.up.set()

    def killer(self, kills: int, busy: Callable[[], bool], low: float = 0.3, high: float = 2.0) -> threading.Thread:
        """A thread that kills `kills` times, a random pause apart, while `busy()` holds (then it stops)."""

        def loop() -> None:
            for _ in range(kills):
                pause = time.monotonic() + self.rng.uniform(low, high)
                while time.monotonic() < pause:  # the chaos: a random moment, cut short when the work ends
                    if not busy():
                        return
                    time.sleep(0.02)
                self.kill_and_restart()

        thread = threading.Thread(target=loop, name="chaos-killer")
        thread.start()
        return thread


def nonce() -> str:
    return uuid.uuid4().hex[:16]


# ---- what one run's driver does ----------------------------------------------------------


@dataclass
class Scenario:
    flow: str
    variant: str
    rng: random.Random
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    races: list[tuple[Request, Request]] = field(default_factory=list)

    def describe(self) -> str:
        return f"run {self.run_id} ({self.flow}/{self.variant})"


VARIANTS = {
    "chaos-work": ("plain", "plain", "cancel"),
    "chaos-queue": ("plain", "plain", "cancel"),
    "chaos-review": ("race", "race", "single", "timeout", "cancel-waiting"),
    "chaos-callback": ("early", "ontime", "late", "ontime-timeout"),
}
MIX = ("chaos-work", "chaos-review", "chaos-review", "chaos-callback", "chaos-callback", "chaos-queue")


def make_scenario(number: int, seed: int) -> Scenario:
    rng = random.Random(f"{seed}-{number}")
    flow = rng.choice(MIX)
    return Scenario(flow, rng.choice(VARIANTS[flow]), rng)


def drive(chaos: Chaos, scenario: Scenario) -> None:
    """Start the run and do what its variant says; always open its gate in the end."""
    start = chaos.send_until_answered("start", "start", f"/api/v1/flows/{scenario.flow}/runs", user="alice",
                                      body={"inputs": {}})
    if start.status != 201:
        chaos.problems.append(f"{scenario.flow}: could not start a run: {start.describe()} {start.answer}")
        return
    scenario.run_id = start.answer["id"]
    try:
        {"chaos-work": _plain, "chaos-queue": _plain, "chaos-review": _review,
         "chaos-callback": _callback}[scenario.flow](chaos, scenario, start.answer)
    finally:
        chaos.open_gate(scenario.run_id)


def _cancel(chaos: Chaos, scenario: Scenario, label: str) -> Request:
    return chaos.send_delivered("cancel", label, f"/api/v1/runs/{scenario.run_id}/cancel", user="alice", body={},
                                run=scenario.run_id)


def _plain(chaos: Chaos, scenario: Scenario, run: dict) -> None:
    if scenario.variant == "cancel":
        time.sleep(scenario.rng.uniform(0.0, 2.5))  # the chaos: cancel at a random moment
        _cancel(chaos, scenario, "cancel")


def _decide(chaos: Chaos, scenario: Scenario, user: str, decision: str, label: str, *, timeout: float = 10.0,
            delivered: bool = True) -> Request:
    secret = nonce()
    sender = chaos.send_delivered if delivered else chaos.send
    return sender("decision", label, f"/api/v1/runs/{scenario.run_id}/steps/review/decision", user=user,
                  body={"decision": decision, "comment": f"nonce {secret}"}, run=scenario.run_id, step="review",
                  nonce=secret, timeout=timeout)


def _step_is(step: str, *statuses: str) -> Callable[[dict], bool]:
    return lambda run: run["steps"][step]["status"] in statuses


def _review(chaos: Chaos, scenario: Scenario, run: dict) -> None:
    run_id, rng = scenario.run_id, scenario.rng
    if scenario.variant == "race":
        # the run is held in `prep`: a decision now is for a step that is not waiting
        if chaos.wait_run(run_id, _step_is("prep", "running"), "step prep running"):
            _decide(chaos, scenario, "bob", "approve", "early", timeout=EARLY_TIMEOUT, delivered=False)
    chaos.open_gate(run_id)
    waiting = chaos.wait_run(run_id, _step_is("review", "waiting"), "step review waiting")
    if waiting is None or waiting["status"] in TERMINAL:
        return
    if scenario.variant == "race":
        barrier, answers = threading.Barrier(2), {}

        def one(user: str, decision: str) -> None:
            try:
                barrier.wait(10)
                answers[user] = _decide(chaos, scenario, user, decision, "race", delivered=False)
            finally:
                chaos.close_clients()

        threads = [threading.Thread(target=one, args=pair) for pair in (("bob", "approve"), ("carol", "reject"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if len(answers) == 2:
            scenario.races.append((answers["bob"], answers["carol"]))
        else:
            chaos.problems.append(f"{scenario.describe()}: a racing decision was never sent ({sorted(answers)} were)")
    elif scenario.variant == "single":
        time.sleep(rng.uniform(0.0, 3.6))  # the chaos: some land after the 3 s deadline
        _decide(chaos, scenario, "carol", rng.choice(("approve", "reject")), "single")
    elif scenario.variant == "cancel-waiting":
        time.sleep(rng.uniform(0.0, 1.0))
        _cancel(chaos, scenario, "cancel-waiting")


def _callback_body(secret: str, extra: int | None = None) -> bytes:
    body = {"nonce": secret} if extra is None else {"nonce": secret, "n": extra}
    return httpx.Request("POST", "/", json=body).content


def _post_callback(chaos: Chaos, scenario: Scenario, token: str, label: str, body: bytes, secret: str,
                   *, retry: bool = True) -> Request:
    sender = chaos.send_until_answered if retry else chaos.send_delivered
    return sender("callback", label, f"/callbacks/{token}", user=None, body=body, run=scenario.run_id,
                  step="done", nonce=secret)


def _callback(chaos: Chaos, scenario: Scenario, run: dict) -> None:
    run_id, rng, token = scenario.run_id, scenario.rng, run["callbacks"]["done"]
    secret = nonce()
    body = _callback_body(secret)
    if scenario.variant == "early":
        if chaos.wait_run(run_id, _step_is("prep", "running"), "step prep running"):
            first = _post_callback(chaos, scenario, token, "early", body, secret)
            _post_callback(chaos, scenario, token, "replay", body, secret)
            other = nonce()
            _post_callback(chaos, scenario, token, "different", _callback_body(other, 1), other, retry=False)
            scenario.notes.append(f"early callback {first.describe()}")
        chaos.open_gate(run_id)
        return
    chaos.open_gate(run_id)
    waiting = chaos.wait_run(run_id, _step_is("done", "waiting"), "step done waiting")
    if waiting is None or waiting["status"] in TERMINAL or scenario.variant == "ontime-timeout":
        return
    if scenario.variant == "late":
        time.sleep(rng.uniform(2.4, 3.6))  # the chaos: around the 3 s deadline
    _post_callback(chaos, scenario, token, scenario.variant, body, secret)
    if rng.random() < 0.7:
        _post_callback(chaos, scenario, token, "replay", body, secret)
    if rng.random() < 0.7:
        other = nonce()
        _post_callback(chaos, scenario, token, "different", _callback_body(other, 2), other, retry=False)
